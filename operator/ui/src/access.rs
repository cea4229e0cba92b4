//! How a request reaches the Kubernetes API. The client is chosen per request from the
//! start, so that the in-cluster mode (each request with its user's own bearer token)
//! fits the same handlers as the local mode (the caller's kubeconfig).

use axum::http::HeaderMap;
use kube::Client;

use crate::ApiError;

/// Whose rights a request uses.
#[derive(Clone)]
pub enum Access {
    /// The caller's kubeconfig, for every request (`kubectl maestro ui` on 127.0.0.1:
    /// only the caller's own browser reaches it).
    Kubeconfig(Client),
}

impl Access {
    /// The client to serve a request with these headers.
    pub fn client_for(&self, _headers: &HeaderMap) -> Result<Client, ApiError> {
        match self {
            Self::Kubeconfig(client) => Ok(client.clone()),
        }
    }
}
