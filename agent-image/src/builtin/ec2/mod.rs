//! The EC2 built-ins, `ec2-provision` and `ec2-deprovision`, and what they share: the inputs
//! that say where EC2 is, the client with its retry policy, AWS error messages, polling
//! instance states and stopping cleanly on SIGTERM.

mod deprovision;
mod inputs;
mod provision;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use tokio::sync::watch;

use crate::result::ExternalResource;

pub use deprovision::run_ec2_deprovision;
pub use provision::run_ec2_provision;

/// The resource kind the run's ledger records for an instance.
pub const INSTANCE_KIND: &str = "ec2-instance";

/// The error code EC2 answers for instance ids it does not know (never existed, or
/// terminated long enough ago to be forgotten).
const INSTANCE_NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// SDK attempts per API call. EC2 throttles per account and region (RequestLimitExceeded),
/// so a busy account needs more than the SDK's default of 3; with the standard mode's
/// jittered exponential backoff (1 s doubling, capped at 20 s) 8 attempts span about a
/// minute before the step gives up.
const MAX_ATTEMPTS: u32 = 8;
const INITIAL_RETRY_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(20);

/// Longest single attempt of one call. RunInstances answers in seconds; without a bound a
/// dead endpoint would hang the step until its own timeout, with no message.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where EC2 is: the region and an optional endpoint URL (moto, LocalStack, a VPC endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Target {
    pub region: String,
    /// None: the SDK's own resolution, which honours `AWS_ENDPOINT_URL(_EC2)`.
    pub endpoint: Option<String>,
}

/// The EC2 client for `target`. Credentials come from the SDK's default chain: the
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` variables the operator sets
/// from the step's Secret come first; web identity (IRSA) and the like work too.
pub async fn ec2_client(target: &Ec2Target) -> Client {
    let config = sdk_config_loader(target, retry_config(INITIAL_RETRY_BACKOFF))
        .load()
        .await;
    Client::new(&config)
}

fn sdk_config_loader(target: &Ec2Target, retry: RetryConfig) -> aws_config::ConfigLoader {
    // The region is always given, so the SDK never asks the instance metadata service for
    // one: in a pod that lookup only times out.
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        );
    match &target.endpoint {
        Some(endpoint) => loader.endpoint_url(endpoint),
        None => loader,
    }
}

/// The standard retry mode retries throttling (RequestLimitExceeded, Throttling), transient
/// and 5xx errors and timeouts with jittered exponential backoff.
fn retry_config(initial_backoff: Duration) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(initial_backoff)
        .with_max_backoff(MAX_RETRY_BACKOFF)
}

/// A failed call as the step's error: `RunInstances failed: InvalidAMIID.NotFound: The image
/// id '[ami-1]' does not exist`. Errors without an AWS code (no credentials, endpoint
/// unreachable) get the SDK's whole error chain, since its top line alone says only
/// "dispatch failure".
pub fn aws_error_message<E>(operation: &str, error: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{operation} failed: {code}: {message}"),
        (Some(code), None) => format!("{operation} failed: {code}"),
        _ => format!("{operation} failed: {}", DisplayErrorContext(error)),
    }
}

/// The ledger entries of instances in `region`.
pub fn instance_resources(ids: &[String], region: &str) -> Vec<ExternalResource> {
    ids.iter()
        .map(|id| ExternalResource {
            kind: INSTANCE_KIND.to_owned(),
            id: id.clone(),
            region: region.to_owned(),
        })
        .collect()
}

/// Delays between polls of instance states: short at first, since moto and quick launches
/// are ready at once, then doubling up to 15 s to stay clear of EC2's request rate limits
/// while a launch or termination takes its minute.
#[derive(Debug, Clone)]
pub struct PollBackoff {
    next: Duration,
}

const FIRST_POLL_DELAY: Duration = Duration::from_secs(1);
const MAX_POLL_DELAY: Duration = Duration::from_secs(15);

impl PollBackoff {
    pub fn new() -> Self {
        Self {
            next: FIRST_POLL_DELAY,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_POLL_DELAY);
        delay
    }
}

/// The current description of each instance in `ids` that EC2 lists, by id. A filter rather
/// than `InstanceIds`: with ids, one unknown id fails the whole call, while an instance just
/// launched may not be visible yet (EC2 is eventually consistent) and one terminated long ago
/// may be gone; the callers decide what a missing id means.
pub async fn describe_instances(
    client: &Client,
    ids: &[String],
) -> Result<BTreeMap<String, Instance>, String> {
    let mut found = BTreeMap::new();
    // EC2 limits the values of one filter (200 today); 100 per call stays well under it.
    for chunk in ids.chunks(100) {
        let filter = Filter::builder()
            .name("instance-id")
            .set_values(Some(chunk.to_vec()))
            .build();
        let pages = client
            .describe_instances()
            .filters(filter)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|error| aws_error_message("DescribeInstances", &error))?;
        found.extend(
            pages
                .iter()
                .flat_map(|page| page.reservations())
                .flat_map(|reservation| reservation.instances())
                .filter_map(|instance| {
                    let id = instance.instance_id()?;
                    Some((id.to_owned(), instance.clone()))
                }),
        );
    }
    Ok(found)
}

/// An instance's state name, `unknown` when EC2 gave none.
pub fn state_of(instance: &Instance) -> InstanceStateName {
    instance
        .state()
        .and_then(|state| state.name())
        .cloned()
        .unwrap_or_else(|| InstanceStateName::from("unknown"))
}

/// SIGTERM and SIGINT seen while a built-in talks to EC2. The kubelet sends SIGTERM on a
/// cancel or timeout; the EC2 built-ins must then still write which instances exist, so they
/// catch it instead of dying, stop waiting and return their result.
pub struct Interrupts {
    received: watch::Receiver<Option<&'static str>>,
}

impl Interrupts {
    /// Starts listening. If the handlers cannot be installed the signals keep their default
    /// action (the provisional result written after RunInstances still lists the instances).
    pub fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (sender, received) = watch::channel(None);
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::spawn(async move {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    // No receiver left means the built-in has finished: nothing to tell.
                    let _ = sender.send(Some(name));
                });
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!("cannot handle SIGTERM/SIGINT while talking to EC2: {error}");
            }
        }
        Self { received }
    }

    /// The signal received so far, if any.
    pub fn received(&self) -> Option<&'static str> {
        *self.received.borrow()
    }

    /// Waits for a signal; never returns if none can arrive.
    pub async fn next(&mut self) -> &'static str {
        loop {
            if let Some(name) = *self.received.borrow_and_update() {
                return name;
            }
            if self.received.changed().await.is_err() {
                // The listener is gone (handlers not installed): no signal will be reported.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The exit code of a process killed by `signal`, as a shell reports it.
pub fn signal_exit_code(signal: &str) -> i32 {
    match signal {
        "SIGINT" => 128 + 2,
        _ => 128 + 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::config::Credentials;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn poll_delays_double_up_to_the_cap() {
        let mut backoff = PollBackoff::new();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15, 15]);
    }

    #[test]
    fn resources_are_ledger_entries() {
        let resources = instance_resources(&["i-1".to_owned(), "i-2".to_owned()], "eu-west-1");
        assert_eq!(
            resources,
            vec![
                ExternalResource {
                    kind: "ec2-instance".to_owned(),
                    id: "i-1".to_owned(),
                    region: "eu-west-1".to_owned(),
                },
                ExternalResource {
                    kind: "ec2-instance".to_owned(),
                    id: "i-2".to_owned(),
                    region: "eu-west-1".to_owned(),
                },
            ]
        );
    }

    /// Reads one HTTP request (headers, then the body by Content-Length).
    async fn read_request(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
        let mut buffer = Vec::new();
        let mut chunk = [0_u8; 4096];
        loop {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&buffer);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return Ok(());
                }
            }
        }
    }

    /// A fake EC2 endpoint that throttles the first `throttled` requests, then answers
    /// DescribeInstances with no instances; returns its URL and a count of requests served.
    async fn throttling_endpoint(
        throttled: usize,
    ) -> anyhow::Result<(String, tokio::task::JoinHandle<usize>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let mut served = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                if read_request(&mut stream).await.is_err() {
                    continue;
                }
                served += 1;
                let (status, body) = if served <= throttled {
                    (
                        "503 Service Unavailable",
                        "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
                         <Message>Request limit exceeded.</Message></Error></Errors>\
                         <RequestID>r1</RequestID></Response>",
                    )
                } else {
                    (
                        "200 OK",
                        "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                         <requestId>r2</requestId><reservationSet/></DescribeInstancesResponse>",
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
                if served > throttled {
                    break;
                }
            }
            served
        });
        Ok((url, server))
    }

    fn test_client(url: &str, retry: RetryConfig) -> impl Future<Output = Client> {
        let target = Ec2Target {
            region: "us-east-1".to_owned(),
            endpoint: Some(url.to_owned()),
        };
        let loader = sdk_config_loader(&target, retry)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"));
        async move { Client::new(&loader.load().await) }
    }

    #[tokio::test]
    async fn throttling_is_retried_with_backoff() -> anyhow::Result<()> {
        let (url, server) = throttling_endpoint(3).await?;
        // The production policy with a short first delay, so the test takes milliseconds.
        let client = test_client(&url, retry_config(Duration::from_millis(10))).await;
        let found = describe_instances(&client, &["i-1".to_owned()]).await;
        assert_eq!(found.map(|instances| instances.len()), Ok(0));
        assert_eq!(server.await?, 4);
        Ok(())
    }

    #[tokio::test]
    async fn throttling_beyond_the_attempts_names_the_aws_code() -> anyhow::Result<()> {
        let (url, server) = throttling_endpoint(100).await?;
        let retry = retry_config(Duration::from_millis(1)).with_max_attempts(2);
        let client = test_client(&url, retry).await;
        let error = describe_instances(&client, &["i-1".to_owned()])
            .await
            .err()
            .unwrap_or_default();
        assert_eq!(
            error,
            "DescribeInstances failed: RequestLimitExceeded: Request limit exceeded."
        );
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_an_error_not_a_hang() -> anyhow::Result<()> {
        // A port that was free a moment ago: connecting is refused at once.
        let url = {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            format!("http://{}", listener.local_addr()?)
        };
        let client = test_client(&url, RetryConfig::disabled()).await;
        let error = describe_instances(&client, &["i-1".to_owned()])
            .await
            .err()
            .unwrap_or_default();
        assert!(
            error.starts_with("DescribeInstances failed: dispatch failure"),
            "{error}"
        );
        Ok(())
    }
}
