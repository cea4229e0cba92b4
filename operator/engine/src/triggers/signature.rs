//! Authenticity of webhook deliveries. GitHub and Gitea sign the body with HMAC-SHA256
//! over the webhook secret; GitLab sends the secret itself as a token. Every comparison
//! is constant-time, so a caller learns nothing from how long a refusal takes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::push::Provider;

/// A webhook secret shorter than this verifies nothing: it could be guessed, and an empty
/// one would accept a body signed with an empty key.
pub const MIN_SECRET_BYTES: usize = 16;

/// Whether `credential` (the provider's signature or token header, as sent) proves that
/// the sender knows `secret` for this `body`. Always false for a secret under
/// [`MIN_SECRET_BYTES`].
pub fn verify(provider: Provider, secret: &[u8], body: &[u8], credential: Option<&str>) -> bool {
    let Some(credential) = credential.map(str::trim) else {
        return false;
    };
    if secret.len() < MIN_SECRET_BYTES {
        return false;
    }
    match provider {
        Provider::GitHub => credential
            .strip_prefix("sha256=")
            .is_some_and(|hex| hmac_matches(secret, body, hex)),
        // Gitea sends the bare hex digest (and GitHub's header too, which also verifies).
        Provider::Gitea => hmac_matches(
            secret,
            body,
            credential.strip_prefix("sha256=").unwrap_or(credential),
        ),
        Provider::GitLab => {
            // Hashing both sides first makes the comparison independent of their lengths.
            let sent = Sha256::digest(credential.as_bytes());
            let expected = Sha256::digest(secret);
            bool::from(sent.as_slice().ct_eq(expected.as_slice()))
        }
    }
}

/// GitHub's `X-Hub-Signature-256` value for `body` signed with `secret`.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

/// The hex HMAC-SHA256 of `body` with `secret` (Gitea's `X-Gitea-Signature`).
pub fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, body))
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> Vec<u8> {
    new_mac(secret, body)
        .map(|mac| mac.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

/// HMAC-SHA256 over `body`; HMAC accepts keys of any length, so this is always Some.
fn new_mac(secret: &[u8], body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(mac)
}

fn hmac_matches(secret: &[u8], body: &[u8], hex_signature: &str) -> bool {
    let (Ok(sent), Some(mac)) = (hex::decode(hex_signature), new_mac(secret, body)) else {
        return false;
    };
    // verify_slice compares in constant time.
    mac.verify_slice(&sent).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of GitHub's documentation ("Validating webhook deliveries").
    #[test]
    fn github_documented_example_verifies() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(github_signature(secret, body), sig);
        assert!(verify(Provider::GitHub, secret, body, Some(sig)));
    }

    #[test]
    fn forged_missing_or_malformed_signatures_fail() {
        let secret = b"s3cret-of-16-bytes";
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = github_signature(secret, body);
        assert!(verify(Provider::GitHub, secret, body, Some(&good)));
        assert!(!verify(Provider::GitHub, b"other", body, Some(&good)));
        assert!(!verify(Provider::GitHub, secret, b"{}", Some(&good)));
        assert!(!verify(Provider::GitHub, secret, body, None));
        assert!(!verify(Provider::GitHub, secret, body, Some("sha256=zz")));
        // GitHub's header needs its prefix.
        let bare = hex_hmac(secret, body);
        assert!(!verify(Provider::GitHub, secret, body, Some(&bare)));
        assert!(verify(Provider::Gitea, secret, body, Some(&bare)));
        assert!(verify(Provider::Gitea, secret, body, Some(&good)));
        assert!(!verify(Provider::Gitea, b"other", body, Some(&bare)));
    }

    #[test]
    fn gitlab_token_is_the_secret_itself() {
        let token = "a-gitlab-token-of-32-characters!";
        assert!(verify(
            Provider::GitLab,
            token.as_bytes(),
            b"any body",
            Some(token)
        ));
        let other = format!("{token}2");
        assert!(!verify(
            Provider::GitLab,
            token.as_bytes(),
            b"any body",
            Some(&other)
        ));
        assert!(!verify(
            Provider::GitLab,
            token.as_bytes(),
            b"any body",
            Some("")
        ));
        assert!(!verify(
            Provider::GitLab,
            token.as_bytes(),
            b"any body",
            None
        ));
    }

    /// A secret under 16 bytes verifies nothing, even a correct signature: an empty
    /// secret would otherwise accept a body anyone can sign.
    #[test]
    fn short_and_empty_secrets_verify_nothing() {
        let body = b"{}";
        for secret in [&b""[..], b"tok", b"fifteen-bytes!!"] {
            let sig = github_signature(secret, body);
            assert!(!verify(Provider::GitHub, secret, body, Some(&sig)));
            assert!(!verify(Provider::Gitea, secret, body, Some(&sig)));
            let token = String::from_utf8_lossy(secret).into_owned();
            assert!(!verify(Provider::GitLab, secret, body, Some(&token)));
        }
        let secret = b"sixteen-bytes!!!";
        assert!(verify(
            Provider::GitHub,
            secret,
            body,
            Some(&github_signature(secret, body))
        ));
    }
}
