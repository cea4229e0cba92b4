//! Prometheus metrics of the operator, served on `/metrics` next to `/healthz` and
//! `/readyz`. Names and units follow Prometheus conventions (`_total`, `_seconds`).
//! Label values are bounded: compositions and steps are the user's own (a finite set per
//! cluster), phases and error kinds are enums.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use hyper::{Method, Request, StatusCode, body::Incoming};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

use crate::http::{self, HttpResponse, respond};

/// Buckets for run and step durations: seconds to hours.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub runs_started: IntCounterVec,
    pub runs_finished: IntCounterVec,
    pub run_duration: HistogramVec,
    pub step_duration: HistogramVec,
    pub steps_finished: IntCounterVec,
    pub runs_active: IntGaugeVec,
    pub runs_queued: IntGauge,
    pub step_pods_running: IntGaugeVec,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub task_report: prometheus::GaugeVec,
    /// 1 while this replica holds the leader Lease (or runs without leader election).
    pub leader: IntGauge,
    /// Git push webhook deliveries, by provider and result.
    pub webhook_deliveries: IntCounterVec,
    /// Cron schedule times handled, by composition and result (started, skipped).
    pub cron_schedules: IntCounterVec,
    /// Runs assigned to a slot that last ran their composition, by Agent.
    pub agent_cache_hits: IntCounterVec,
    /// Runs assigned to a slot that last ran something else (or nothing), by Agent.
    pub agent_cache_misses: IntCounterVec,
    /// Slots holding a run now, by Agent.
    pub agent_slots_busy: IntGaugeVec,
    /// Time from a run's creation to its assignment to an Agent slot.
    pub run_queue_wait: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        };
        let m = Self {
            runs_started: counter(
                "maestro_runs_started_total",
                "Runs started, by composition.",
                &["composition"],
            )?,
            runs_finished: counter(
                "maestro_runs_finished_total",
                "Runs ended, by composition and final phase.",
                &["composition", "phase"],
            )?,
            run_duration: histogram(
                "maestro_run_duration_seconds",
                "Duration of ended runs, from start to end.",
                &["composition", "phase"],
                DURATION_BUCKETS.to_vec(),
            )?,
            step_duration: histogram(
                "maestro_step_duration_seconds",
                "Duration of ended steps, all attempts included.",
                &["composition", "step", "phase"],
                DURATION_BUCKETS.to_vec(),
            )?,
            steps_finished: counter(
                "maestro_steps_finished_total",
                "Steps ended, by composition, step and phase.",
                &["composition", "step", "phase"],
            )?,
            runs_active: IntGaugeVec::new(
                Opts::new("maestro_runs_active", "Runs not yet ended, by phase."),
                &["phase"],
            )?,
            runs_queued: IntGauge::new(
                "maestro_runs_queued",
                "Runs waiting to start (Pending or Queued).",
            )?,
            step_pods_running: IntGaugeVec::new(
                Opts::new(
                    "maestro_step_pods_running",
                    "Step pods running now, by agent (node).",
                ),
                &["agent"],
            )?,
            reconciles: counter(
                "maestro_reconcile_total",
                "Reconciles, by controller.",
                &["controller"],
            )?,
            reconcile_errors: counter(
                "maestro_reconcile_errors_total",
                "Failed reconciles, by controller and error kind.",
                &["controller", "kind"],
            )?,
            reconcile_duration: histogram(
                "maestro_reconcile_duration_seconds",
                "Time one reconcile takes.",
                &["controller"],
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
            )?,
            task_report: prometheus::GaugeVec::new(
                Opts::new(
                    "maestro_task_report",
                    "Numeric report values of tasks (at most 16 keys per step), by composition, step and key.",
                ),
                &["composition", "step", "key"],
            )?,
            leader: IntGauge::new(
                "maestro_leader",
                "1 if this replica is the leader (the one that reconciles), else 0.",
            )?,
            webhook_deliveries: counter(
                "maestro_webhook_deliveries_total",
                "Git push webhook deliveries, by provider and result (created, duplicate, no_match, unauthorized, too_large, malformed, ignored, ping, error...).",
                &["provider", "result"],
            )?,
            cron_schedules: counter(
                "maestro_cron_schedules_total",
                "Schedule times of cron triggers, by composition and result (started, skipped, replaced).",
                &["composition", "result"],
            )?,
            agent_cache_hits: counter(
                "maestro_agent_cache_hits_total",
                "Runs assigned to the Agent slot that last ran their composition (warm cache).",
                &["agent"],
            )?,
            agent_cache_misses: counter(
                "maestro_agent_cache_misses_total",
                "Runs assigned to an Agent slot that last ran another composition or nothing.",
                &["agent"],
            )?,
            agent_slots_busy: IntGaugeVec::new(
                Opts::new("maestro_agent_slots_busy", "Agent slots holding a run now."),
                &["agent"],
            )?,
            run_queue_wait: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "maestro_run_queue_wait_seconds",
                    "Time from a run's creation to its assignment to an Agent slot.",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ]),
            )?,
            registry,
        };
        for c in [
            &m.runs_started,
            &m.runs_finished,
            &m.steps_finished,
            &m.reconciles,
            &m.reconcile_errors,
            &m.webhook_deliveries,
            &m.cron_schedules,
            &m.agent_cache_hits,
            &m.agent_cache_misses,
        ] {
            m.registry.register(Box::new(c.clone()))?;
        }
        for h in [&m.run_duration, &m.step_duration, &m.reconcile_duration] {
            m.registry.register(Box::new(h.clone()))?;
        }
        m.registry.register(Box::new(m.runs_active.clone()))?;
        m.registry.register(Box::new(m.runs_queued.clone()))?;
        m.registry.register(Box::new(m.step_pods_running.clone()))?;
        m.registry.register(Box::new(m.task_report.clone()))?;
        m.registry.register(Box::new(m.leader.clone()))?;
        m.registry.register(Box::new(m.agent_slots_busy.clone()))?;
        m.registry.register(Box::new(m.run_queue_wait.clone()))?;
        Ok(m)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (the caches are
/// filled; a follower replica is ready too, see `controller::run`) on `addr`.
pub async fn serve(addr: String, metrics: Metrics, ready: Arc<AtomicBool>) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    http::serve(listener, "metrics", move |request: Request<Incoming>| {
        let answer = answer(request.method(), request.uri().path(), &metrics, &ready);
        async move { answer }
    })
    .await
}

/// The answer to one request: reads only the method and path, so it never waits on a body.
fn answer(method: &Method, path: &str, metrics: &Metrics, ready: &AtomicBool) -> HttpResponse {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into());
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => respond(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if ready.load(Ordering::Relaxed) => respond(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "caches not ready\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new().unwrap();
        m.runs_started.with_label_values(&["hello"]).inc();
        m.run_duration
            .with_label_values(&["hello", "Succeeded"])
            .observe(3.0);
        let text = m.render();
        assert!(
            text.contains("maestro_runs_started_total{composition=\"hello\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("maestro_run_duration_seconds_bucket"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let m = Metrics::new().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        tokio::spawn(serve(addr.clone(), m, ready.clone()));
        let get = |path: &'static str| {
            let addr = addr.clone();
            async move {
                for _ in 0..50 {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                        s.write_all(
                            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await
                        .unwrap();
                        let mut out = String::new();
                        s.read_to_string(&mut out).await.unwrap();
                        return out;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                String::new()
            }
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(
            get("/metrics")
                .await
                .contains("# TYPE maestro_runs_queued gauge")
        );
        assert!(get("/nothing").await.starts_with("HTTP/1.1 404"));
    }
}
