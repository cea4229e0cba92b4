//! How a delivery ends: its HTTP status, its metric label and its JSON answer, and the
//! delivery id as a label value.

use hyper::StatusCode;
use serde_json::json;

use maestro_engine::triggers::push::MAX_BODY_BYTES;

/// How a delivery ended: its HTTP answer and its `result` label in
/// `maestro_webhook_deliveries_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Runs were created (a redelivery to some of the compositions is listed too).
    Created {
        runs: Vec<String>,
    },
    /// Every run this delivery would start exists already: a redelivery.
    Duplicate {
        runs: Vec<String>,
    },
    /// Authentic (or not checked: no composition for the repository) but nothing to run.
    NoMatch(String),
    /// GitHub's ping.
    Pong,
    /// Not a push, or a push that deleted its ref.
    Ignored(String),
    Unauthorized(String),
    TooLarge,
    Malformed(String),
    NotFound,
    MethodNotAllowed,
    /// The cluster could not be read or written; the sender should retry.
    Error(String),
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Created { .. } => StatusCode::CREATED,
            Self::Duplicate { .. } | Self::Pong => StatusCode::OK,
            Self::NoMatch(_) | Self::Ignored(_) => StatusCode::ACCEPTED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Error(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Every value [`Outcome::result`] gives for a provider's endpoint, so the counters
    /// exist at 0 before the first delivery (Prometheus sees no increase in a series that
    /// is born at 1).
    pub const PROVIDER_RESULTS: [&'static str; 9] = [
        "created",
        "duplicate",
        "no_match",
        "ping",
        "ignored",
        "unauthorized",
        "too_large",
        "malformed",
        "error",
    ];

    pub fn result(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Duplicate { .. } => "duplicate",
            Self::NoMatch(_) => "no_match",
            Self::Pong => "ping",
            Self::Ignored(_) => "ignored",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Error(_) => "error",
        }
    }

    /// The answer's JSON body: `result`, a `message` for people, and `runs`.
    pub fn body(&self) -> serde_json::Value {
        let (message, runs): (String, &[String]) = match self {
            Self::Created { runs } => (format!("started {} run(s)", runs.len()), runs),
            Self::Duplicate { runs } => (
                "duplicate delivery: its runs exist already; nothing created".into(),
                runs,
            ),
            Self::NoMatch(m) | Self::Ignored(m) | Self::Unauthorized(m) | Self::Malformed(m) => {
                (m.clone(), &[])
            }
            Self::Error(m) => (format!("cannot handle the delivery now: {m}"), &[]),
            Self::Pong => ("pong".into(), &[]),
            Self::TooLarge => (
                format!("payload larger than {MAX_BODY_BYTES} bytes; nothing created"),
                &[],
            ),
            Self::NotFound => (
                "not found: POST to /hooks/github, /hooks/gitlab or /hooks/gitea".into(),
                &[],
            ),
            Self::MethodNotAllowed => ("only POST is accepted".into(), &[]),
        };
        json!({"result": self.result(), "message": message, "runs": runs})
    }
}

/// `text` as a label value: at most 63 of its letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit.
pub fn label_value(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    kept.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}
