//! Maestro's operator: the API types (custom resources), the pure composition engine
//! and the controllers that wire it to Kubernetes.

pub mod api;
pub mod controller;
pub mod engine;
pub mod labels;
pub mod library;
pub mod metrics;
pub mod routing;
pub mod telemetry;
pub mod tls;
pub mod triggers;
pub mod webhook;
