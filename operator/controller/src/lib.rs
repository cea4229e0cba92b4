//! Maestro's operator: the kube-rs controllers that wire the pure engine (maestro-engine)
//! to Kubernetes, with metrics and health, leader election, the push webhook and the
//! standard Task library.

pub mod controller;
pub mod http;
pub mod k8s;
pub mod library;
pub mod metrics;
pub mod telemetry;
pub mod tls;
pub mod webhook;
