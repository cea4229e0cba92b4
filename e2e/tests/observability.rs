//! The Grafana dashboard against a real Prometheus server: the operator runs a composition
//! that succeeds and one that fails while Prometheus (Debian's `prometheus` package, see
//! e2e/cluster/install-deps.sh) scrapes its /metrics every second; then every query of
//! every panel in charts/maestro/dashboards/maestro.json, with Grafana's template
//! variables filled in, must return data through Prometheus's HTTP API. The namespace has
//! an Agent pool, so the runs are routed to its slots (the agent panels), and one push
//! reaches the webhook endpoint (the webhook panel).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use maestro_api::RunPhase;
use maestro_e2e::{
    maestro::{Env, apply_file, metrics_addr_from_log, repo_root, webhook_addr_from_log},
    wait_for,
};
use serde_json::Value;

/// Prometheus's scrape interval in this test; the rate windows below span many of them.
const SCRAPE_INTERVAL: &str = "1s";

/// What Grafana would put in place of the dashboard's template variables. `$composition`
/// is the "All" value (the variable's `allValue`); the rate window spans 60 scrapes.
const SUBSTITUTIONS: [(&str, &str); 9] = [
    ("${composition:regex}", ".*"),
    ("${composition}", ".*"),
    ("$composition", ".*"),
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("${__range}", "10m"),
    ("$__range", "10m"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
];

/// A composition whose only step exits 1, so each of its runs ends Failed.
const FAILING: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata:
  name: always-fails
spec:
  description: One shell step that exits 1.
  steps:
    - name: fail
      task: shell
      with:
        script: |
          echo "failing on purpose"
          exit 1
"#;

/// A pool with a slot for each run that can be in flight at once (hello, always-fails and
/// long-job), so nothing queues for long; the second round's runs find their slots warm.
const POOL: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata:
  name: pool
spec:
  capacity: 4
  slots: 3
  affinityWait: 5s
  cache:
    persistentVolumeClaim: {size: 100Mi}
"#;

/// A Prometheus server in a temporary directory, scraping one target; killed and its
/// directory removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Result<Self> {
        let bin = std::env::var("MAESTRO_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("maestro-e2e-prometheus-{nanos}"));
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n  - job_name: maestro-operator\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let addr = free_local_addr()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| {
                format!(
                    "starting {bin}: install Debian's prometheus package \
                     (e2e/cluster/install-deps.sh), or set MAESTRO_PROMETHEUS"
                )
            })?;
        Ok(Self { child, dir, addr })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// GETs an API path and returns its `data`, failing on an HTTP or PromQL error.
    async fn api(&self, path: String) -> Result<Value> {
        let addr = self.addr.clone();
        let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, &path)).await??;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("HTTP {status}, not JSON: {body}"))?;
        if json["status"] != "success" {
            bail!("HTTP {status}: {json}");
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now; returns each sample's labels and value.
    async fn query(&self, expr: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let data = self
            .api(format!("/api/v1/query?query={}", url_encode(expr)))
            .await
            .with_context(|| format!("query {expr}"))?;
        let number = |v: &Value| -> f64 {
            v.get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s["metric"].clone()).unwrap_or_default();
                    (labels, number(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), number(&data["result"]))],
            other => bail!("query {expr}: unexpected result type {other:?}"),
        })
    }

    /// The sum of the values `expr` returns (0 when it returns nothing).
    async fn sum(&self, expr: &str) -> Result<f64> {
        Ok(self.query(expr).await?.iter().map(|(_, v)| v).sum())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_local_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// A minimal HTTP/1.0 POST of a JSON body with `headers`; returns the status code and
/// the body.
fn http_post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    write!(stream, "\r\n{body}")?;
    read_response(addr, stream)
}

/// A minimal HTTP/1.0 GET (the server closes the connection after the response, with no
/// chunked encoding); returns the status code and the body.
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    read_response(addr, stream)
}

/// The status code and body of the response on `stream` (the server closes it after).
fn read_response(addr: &str, mut stream: TcpStream) -> Result<(u16, String)> {
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head}"))?;
    Ok((status, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One query of one panel.
struct PanelQuery {
    panel: String,
    expr: String,
}

/// Every target of every panel (rows' nested panels included), and the dashboard's
/// template variables.
fn dashboard() -> Result<(Vec<PanelQuery>, Vec<Value>)> {
    let path = repo_root().join("charts/maestro/dashboards/maestro.json");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    panel: title.clone(),
                    expr: target["expr"].as_str().unwrap_or_default().to_string(),
                });
            }
            walk(&panel["panels"], out);
        }
    }
    let mut queries = Vec::new();
    walk(&json["panels"], &mut queries);
    let variables = json["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((queries, variables))
}

/// The PromQL Grafana would send for `expr` with "All" compositions selected.
fn substitute(expr: &str) -> String {
    SUBSTITUTIONS
        .iter()
        .fold(expr.to_string(), |s, (var, value)| s.replace(var, value))
}

#[tokio::test]
async fn every_dashboard_panel_has_data_in_prometheus() -> Result<()> {
    let (queries, variables) = dashboard()?;
    assert!(
        queries.len() >= 10,
        "the dashboard has only {} queries",
        queries.len()
    );
    for q in &queries {
        assert!(
            !q.expr.trim().is_empty(),
            "panel {:?} has an empty expr",
            q.panel
        );
        let promql = substitute(&q.expr);
        assert!(
            !promql.contains('$'),
            "panel {:?}: a template variable this test does not fill in: {promql}",
            q.panel
        );
    }
    let names: Vec<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        names.contains(&"datasource") && names.contains(&"composition"),
        "template variables: {names:?}"
    );

    let env = Env::new("observability").await?;
    let metrics_addr = wait_for(
        "the operator to log its metrics address",
        Duration::from_secs(30),
        || async { metrics_addr_from_log(&env.operator.log) },
    )
    .await?;

    let prometheus = Prometheus::start(&metrics_addr)?;
    wait_for(
        "Prometheus to scrape the operator (up == 1)",
        Duration::from_secs(60),
        || async {
            match prometheus.query("up").await {
                Ok(samples) if samples.iter().any(|(_, v)| *v == 1.0) => Ok(()),
                Ok(samples) => Err(format!("up = {samples:?}")),
                Err(e) => Err(format!("{e:#}\nprometheus log:\n{}", prometheus.log_tail())),
            }
        },
    )
    .await?;

    env.apply_example("hello/composition.yaml").await?;
    env.apply_example("cancel/long-job.yaml").await?;
    let failing = prometheus.dir.join("always-fails.yaml");
    std::fs::write(&failing, FAILING)?;
    apply_file(&env.client, &env.ns.name, &failing).await?;
    let pool = prometheus.dir.join("pool.yaml");
    std::fs::write(&pool, POOL)?;
    apply_file(&env.client, &env.ns.name, &pool).await?;

    // An unsigned push: refused, counted.
    let webhook_addr = wait_for(
        "the operator to log its webhook address",
        Duration::from_secs(30),
        || async { webhook_addr_from_log(&env.operator.log) },
    )
    .await?;
    let (status, body) = http_post(
        &webhook_addr,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "observability-1"),
        ],
        r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000001","repository":{"clone_url":"https://git.example.invalid/nobody/none.git"}}"#,
    )?;
    assert_eq!(status, 401, "webhook answer: {body}");

    // Two rounds: a counter appears only when its first run ends, at 1, and rate() and
    // increase() see the second run of each composition as the counter's increase.
    let mut long_job = None;
    for round in 1..=2 {
        let hello = env.start_run("hello", &[("who", "prometheus")]).await?;
        let fails = env.start_run("always-fails", &[]).await?;
        if round == 2 {
            // Still running while the panels are queried: active runs and busy agents.
            long_job = Some(env.start_run("long-job", &[]).await?);
        }
        let ok = env.wait_finished(&hello, Duration::from_secs(180)).await?;
        let failed = env.wait_finished(&fails, Duration::from_secs(180)).await?;
        let phase = |r: &maestro_api::CompositionRun| {
            r.status.as_ref().map(|s| s.phase).unwrap_or_default()
        };
        assert_eq!(phase(&ok), RunPhase::Succeeded, "run {hello}");
        assert_eq!(phase(&failed), RunPhase::Failed, "run {fails}");
        let want = f64::from(round);
        wait_for(
            &format!("Prometheus to see round {round}'s runs end"),
            Duration::from_secs(30),
            || async {
                let ok = prometheus
                    .sum(r#"maestro_runs_finished_total{composition="hello",phase="Succeeded"}"#)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let failed = prometheus
                    .sum(
                        r#"maestro_runs_finished_total{composition="always-fails",phase="Failed"}"#,
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                if ok >= want && failed >= want {
                    Ok(())
                } else {
                    Err(format!("Succeeded {ok}, Failed {failed}"))
                }
            },
        )
        .await?;
        // A few more scrapes, so rate() has samples on both sides of the change.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // Every panel: the query returns samples, and at least one is a number (a quantile
    // of a histogram that saw nothing in the window would be NaN: a panel with no data).
    for q in &queries {
        let promql = substitute(&q.expr);
        let samples = wait_for(
            &format!("panel {:?} to return data: {promql}", q.panel),
            Duration::from_secs(20),
            || async {
                match prometheus.query(&promql).await {
                    Ok(s) if s.iter().any(|(_, v)| !v.is_nan()) => Ok(s),
                    Ok(s) => Err(format!("result {s:?}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            },
        )
        .await?;
        println!("{:<40} {promql}\n{:<40} -> {samples:?}", q.panel, "");
    }

    // The composition variable lists the compositions that ran.
    let composition = variables
        .iter()
        .find(|v| v["name"] == "composition")
        .context("no composition variable")?;
    let definition = composition["definition"].as_str().unwrap_or_default();
    let (metric, label) = definition
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .and_then(|s| s.split_once(','))
        .with_context(|| format!("composition variable: {definition}"))?;
    let values = prometheus
        .api(format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            url_encode(metric.trim())
        ))
        .await?;
    for name in ["hello", "always-fails", "long-job"] {
        assert!(
            values
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == name)),
            "composition variable values {values} lack {name}"
        );
    }

    // Values that must make sense after two rounds.
    let succeeded = prometheus
        .sum(r#"maestro_runs_finished_total{phase="Succeeded"}"#)
        .await?;
    let failed = prometheus
        .sum(r#"maestro_runs_finished_total{phase="Failed"}"#)
        .await?;
    assert!(succeeded >= 1.0, "Succeeded runs: {succeeded}");
    assert!(failed >= 1.0, "Failed runs: {failed}");
    let started = prometheus
        .sum(r#"maestro_runs_started_total{composition="hello"}"#)
        .await?;
    assert_eq!(started, 2.0, "hello runs started");
    // The test's operator is the only replica, and leads.
    let leaders = prometheus.sum("sum(maestro_leader)").await?;
    assert_eq!(leaders, 1.0, "replicas holding the leader Lease");
    let success_rate = queries
        .iter()
        .find(|q| q.panel == "Success rate")
        .context("no Success rate panel")?;
    let rate = prometheus.sum(&substitute(&success_rate.expr)).await?;
    assert!(
        rate > 0.0 && rate < 1.0,
        "success rate {rate} with both successes and failures"
    );
    let p95 = prometheus
        .sum(&substitute(
            r#"histogram_quantile(0.95, sum by (le) (rate(maestro_run_duration_seconds_bucket{composition=~"$composition"}[$__rate_interval])))"#,
        ))
        .await?;
    assert!(p95.is_finite() && p95 > 0.0, "run duration p95 {p95}");

    // The gauges: long-job's soak step keeps a run active and a step pod running (the
    // operator refreshes them every 5 s).
    let long_job = long_job.context("long-job was started in round 2")?;
    wait_for(
        &format!("Prometheus to see run {long_job} active and its step pod running"),
        Duration::from_secs(90),
        || async {
            let active = prometheus
                .sum(r#"maestro_runs_active{phase="Running"}"#)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let busy = prometheus
                .query("maestro_step_pods_running > 0")
                .await
                .map_err(|e| format!("{e:#}"))?;
            let agents: Vec<&String> = busy.iter().filter_map(|(l, _)| l.get("agent")).collect();
            if active >= 1.0 && !agents.is_empty() && agents.iter().all(|a| !a.is_empty()) {
                Ok(())
            } else {
                Err(format!("active Running {active}, busy agents {busy:?}"))
            }
        },
    )
    .await?;
    // Both rounds ran on the pool: the second round's hello and always-fails found the
    // slots their first runs had left warm.
    let hits = prometheus
        .sum(r#"maestro_agent_cache_hits_total{agent="pool"}"#)
        .await?;
    let misses = prometheus
        .sum(r#"maestro_agent_cache_misses_total{agent="pool"}"#)
        .await?;
    assert!(
        hits >= 2.0 && misses >= 2.0,
        "cache hits {hits}, misses {misses}"
    );
    // ...and the panels show it: a hit ratio above 0, the delivery counted.
    for (title, what) in [
        ("Warm-cache hit ratio", "hit ratio"),
        ("Webhook deliveries by result", "deliveries"),
    ] {
        let panel = queries
            .iter()
            .find(|q| q.panel == title)
            .with_context(|| format!("no {title} panel"))?;
        let value = prometheus.sum(&substitute(&panel.expr)).await?;
        assert!(value > 0.0, "{what} {value}");
    }
    Ok(())
}

#[test]
fn strips_ansi_and_finds_the_metrics_address() {
    let dir = std::env::temp_dir().join(format!("maestro-e2e-ansi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("operator.log");
    std::fs::write(
        &log,
        "\u{1b}[2m2026-11-25T21:54:18Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m serving /metrics, /healthz and /readyz \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:39139\n",
    )
    .unwrap();
    assert_eq!(metrics_addr_from_log(&log).unwrap(), "127.0.0.1:39139");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(url_encode(r#"up{a=~".*"}"#), "up%7Ba%3D~%22.%2A%22%7D");
    assert_eq!(
        substitute("x[$__rate_interval]{c=~\"$composition\"}"),
        "x[1m]{c=~\".*\"}"
    );
}
