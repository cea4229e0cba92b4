//! `ec2-provision` while it waits for instances that never run: the step times out, or is
//! stopped by SIGTERM or SIGKILL, and the launched instance is in its result every time. moto
//! makes instances run at once, so these tests use a minimal fake EC2 endpoint on loopback
//! whose instances stay `pending`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const INSTANCE_ID: &str = "i-0aaaaaaaaaaaaaaa1";

/// The instance as EC2's query protocol describes it, for ever pending.
fn pending_instance() -> String {
    format!(
        "<item><instanceId>{INSTANCE_ID}</instanceId><imageId>ami-1</imageId>\
         <instanceState><code>0</code><name>pending</name></instanceState>\
         <privateIpAddress>10.0.0.7</privateIpAddress><instanceType>t3.micro</instanceType>\
         </item>"
    )
}

fn response_to(action: &str) -> (&'static str, String) {
    const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";
    match action {
        "RunInstances" => (
            "200 OK",
            format!(
                "<RunInstancesResponse xmlns=\"{NAMESPACE}\"><requestId>r1</requestId>\
                 <reservationId>r-1</reservationId><ownerId>1</ownerId><groupSet/>\
                 <instancesSet>{}</instancesSet></RunInstancesResponse>",
                pending_instance()
            ),
        ),
        "DescribeInstances" => (
            "200 OK",
            format!(
                "<DescribeInstancesResponse xmlns=\"{NAMESPACE}\"><requestId>r2</requestId>\
                 <reservationSet><item><reservationId>r-1</reservationId><ownerId>1</ownerId>\
                 <groupSet/><instancesSet>{}</instancesSet></item></reservationSet>\
                 </DescribeInstancesResponse>",
                pending_instance()
            ),
        ),
        other => (
            "400 Bad Request",
            format!(
                "<Response><Errors><Error><Code>InvalidAction</Code><Message>{other} is not \
                 faked</Message></Error></Errors><RequestID>r3</RequestID></Response>"
            ),
        ),
    }
}

/// Answers one request: the body's `Action=` picks the response.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let action = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or_default();
    let (status, xml) = response_to(action);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{xml}",
        xml.len()
    )
}

/// Starts the fake endpoint on a free loopback port; it serves until the test process ends.
fn fake_ec2() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = serve(stream);
        }
    });
    Ok(url)
}

struct Provision {
    dir: tempfile::TempDir,
    child: Child,
}

impl Provision {
    fn start(wait_seconds: u64) -> anyhow::Result<Self> {
        let endpoint = fake_ec2()?;
        let dir = tempfile::tempdir()?;
        let inputs = json!({
            "imageId": "ami-1",
            "region": "eu-west-1",
            "endpoint": endpoint,
            "waitSeconds": wait_seconds,
        });
        let child = Command::new(env!("CARGO_BIN_EXE_maestro-agent"))
            .args(["builtin", "ec2-provision"])
            .env("MAESTRO_INPUTS", inputs.to_string())
            .env("MAESTRO_RESULT_PATH", dir.path().join("termination-log"))
            .env("MAESTRO_OUTPUTS", dir.path().join("outputs"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_EC2")
            .stdin(Stdio::null())
            .spawn()?;
        Ok(Self { dir, child })
    }

    fn result_path(&self) -> PathBuf {
        self.dir.path().join("termination-log")
    }

    fn result(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.result_path(),
        )?)?)
    }

    /// Waits until the provisional result (written right after RunInstances) is complete.
    fn wait_for_provisional_result(&self) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(20), || {
            self.result()
                .is_ok_and(|result| result.get("resources").is_some())
        })
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(i32::try_from(self.child.id())?), signal)?;
        Ok(())
    }

    /// The exit code, or None when a signal killed it.
    fn wait(&mut self) -> anyhow::Result<Option<i32>> {
        let started = Instant::now();
        let status = self.child.wait()?;
        println!(
            "agent ended in {:?} after the wait began",
            started.elapsed()
        );
        Ok(status.code())
    }
}

impl Drop for Provision {
    fn drop(&mut self) {
        // A failed assertion must not leave the agent running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn resources() -> Value {
    json!([{"kind": "ec2-instance", "id": INSTANCE_ID, "region": "eu-west-1"}])
}

#[test]
fn a_wait_that_times_out_fails_with_the_instance_in_resources() -> anyhow::Result<()> {
    let mut step = Provision::start(2)?;
    let started = Instant::now();
    assert_eq!(step.wait()?, Some(1));
    assert!(started.elapsed() < Duration::from_secs(15));
    let result = step.result()?;
    assert_eq!(result["exitCode"], 1);
    assert_eq!(result["resources"], resources());
    assert_eq!(result["outputs"]["instanceIds"], INSTANCE_ID);
    assert_eq!(result["outputs"]["privateIp"], "10.0.0.7");
    assert_eq!(
        result["error"],
        format!(
            "instances were not running after 2 s: {INSTANCE_ID}: pending; they are recorded \
             for cleanup"
        )
    );
    Ok(())
}

#[test]
fn sigterm_while_waiting_ends_the_step_with_the_instance_in_resources() -> anyhow::Result<()> {
    let mut step = Provision::start(120)?;
    step.wait_for_provisional_result()?;
    let signalled = Instant::now();
    step.signal(Signal::SIGTERM)?;
    assert_eq!(step.wait()?, Some(143));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        signalled.elapsed()
    );
    let result = step.result()?;
    assert_eq!(result["exitCode"], 143);
    assert_eq!(result["resources"], resources());
    assert_eq!(
        result["error"],
        format!(
            "SIGTERM received while waiting for {INSTANCE_ID} to run; they are recorded for \
             cleanup"
        )
    );
    Ok(())
}

#[test]
fn an_agent_killed_while_waiting_has_already_recorded_the_instance() -> anyhow::Result<()> {
    let mut step = Provision::start(120)?;
    step.wait_for_provisional_result()?;
    step.signal(Signal::SIGKILL)?;
    assert_eq!(step.wait()?, None);
    let result = step.result()?;
    assert_eq!(result["exitCode"], 1);
    assert_eq!(result["resources"], resources());
    assert_eq!(
        result["error"],
        format!(
            "ec2-provision stopped before {INSTANCE_ID} were confirmed running; they are \
             recorded for cleanup"
        )
    );
    Ok(())
}
