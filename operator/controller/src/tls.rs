//! TLS set-up shared by Maestro's binaries.

/// Selects rustls's process-wide crypto provider. The workspace links both of rustls's
/// providers (kube picks one, the AWS SDK another), and rustls refuses to guess between
/// them, so every binary picks one before its first connection.
pub fn install_crypto_provider() {
    // An error means one is installed already, which is all we need.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
