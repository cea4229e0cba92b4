//! Leader election with a `coordination.k8s.io/v1` Lease, so that two or more replicas of
//! the operator can run while only one of them writes.
//!
//! kube-rs has no elector, and client-go's is small enough to restate: every replica
//! reads the Lease; the one named in `holderIdentity` renews `renewTime` every
//! [`RENEW_PERIOD`]; the others take it only when it is free (no holder, or released)
//! or expired (`renewTime + leaseDurationSeconds < now`). Every write replaces the
//! Lease guarded by the `resourceVersion` it read, so when two followers race for an
//! expired Lease the API server lets one win and answers the other 409 Conflict.
//!
//! The decision itself ([`decide`], [`next_spec`], [`released`]) is pure and unit
//! tested; [`Elector`] wraps it with the API calls and the timing.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use prometheus::IntGauge;
use tokio::sync::oneshot;

/// How long a Lease stays valid after its last renewal (client-go's default). The bench
/// saw a 10 s lease lost on a loaded 2-core machine: 500 runs created at once kept the
/// API server from answering two 2 s renewals in a row, and the operator stopped.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_PERIOD: Duration = Duration::from_secs(2);
/// How often a follower tries to take the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The leader gives up when it has not renewed for this long. It is shorter than
/// [`LEASE_DURATION`] so the old leader has stopped writing some seconds before any
/// follower may consider the Lease expired (a margin for clock skew and slow requests).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How long one attempt to take or renew the Lease may wait for the API server's answer:
/// two renewals fit in the deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// A renewal that takes longer than this is logged with its time.
const SLOW_RENEWAL: Duration = Duration::from_secs(1);

/// Where the Lease lives and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
}

/// This replica's identity: the pod's name when the Deployment passes it (POD_NAME, from
/// the downward API), else host name and process id, unique among local processes.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "maestro-operator".into());
    format!("{host}_{}", std::process::id())
}

/// What a replica should do with the Lease as it reads it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This replica holds it: renew it.
    Renew,
    /// Nobody holds it, or its holder stopped renewing: take it.
    Acquire,
    /// Another replica holds it and renewed it recently: stay a follower; try again
    /// no later than when it `expires`.
    Follow { holder: String, expires: Timestamp },
}

/// The duration the Lease declares, or `fallback` when it declares none that makes sense.
fn declared_duration(spec: &LeaseSpec, fallback: Duration) -> SignedDuration {
    match spec.lease_duration_seconds {
        Some(secs) if secs > 0 => SignedDuration::from_secs(i64::from(secs)),
        _ => SignedDuration::try_from(fallback).unwrap_or(SignedDuration::MAX),
    }
}

/// Decides, from the Lease's spec (`None`: no Lease yet or an empty one), whether
/// replica `me` should renew it, take it or leave it, at time `now`. The holder's own
/// `leaseDurationSeconds` counts, so replicas configured differently still agree;
/// `default_duration` is used only when the Lease declares none.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        // Ours even if it expired meanwhile: a restarted container with the same pod
        // name picks up its own Lease; its previous process is gone, so there is still
        // one writer.
        return Decision::Renew;
    }
    // A holder that never wrote a renewTime cannot show it is alive.
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Acquire;
    };
    // Overflow means a renewTime near year 9999: no live replica wrote it.
    match renewed
        .0
        .checked_add(declared_duration(spec, default_duration))
    {
        Ok(expires) if expires >= now => Decision::Follow {
            holder: holder.to_string(),
            expires,
        },
        _ => Decision::Acquire,
    }
}

/// The spec that replica `me` writes when it takes or renews the Lease (see [`decide`]).
/// Taking it from someone else (or from nobody, after a release) counts a transition
/// and resets acquireTime; renewing keeps both.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let current = current.cloned().unwrap_or_default();
    let previous = current.holder_identity.as_deref().unwrap_or_default();
    let renewing = previous == me;
    let transitions = current.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if renewing && current.acquire_time.is_some() {
            current.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        // A Lease nobody ever held has no acquireTime; a released one keeps it.
        lease_transitions: Some(if renewing || current.acquire_time.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..current
    }
}

/// The spec the leader writes when it steps down: no holder, so a follower takes it on
/// its next try instead of waiting for it to expire.
pub fn released(current: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        ..current.clone()
    }
}

/// What one try at the Lease found.
#[derive(Debug)]
enum Outcome {
    /// We hold it, renewed just now.
    Leading,
    /// Someone else holds it, until `expires` unless renewed.
    Following { holder: String, expires: Timestamp },
    /// Someone else wrote it between our read and our write (409): read again.
    Conflict,
}

/// Takes, holds and releases the Lease for this replica.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// `maestro_leader`: 1 while this replica leads.
    gauge: IntGauge,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings, gauge: IntGauge) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            gauge,
        }
    }

    /// One read and, when the decision says so, one write guarded by the read's
    /// resourceVersion.
    async fn attempt(&self) -> Result<Outcome, kube::Error> {
        let me = self.settings.identity.as_str();
        let name = self.settings.name.as_str();
        let now = Timestamp::now();
        let written = match self.api.get_opt(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(next_spec(None, me, now, LEASE_DURATION)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => match decide(lease.spec.as_ref(), me, now, LEASE_DURATION) {
                Decision::Follow { holder, expires } => {
                    return Ok(Outcome::Following { holder, expires });
                }
                Decision::Renew | Decision::Acquire => {
                    // The read's metadata (with its resourceVersion) goes back as is:
                    // the replace fails with 409 if anyone wrote in between.
                    lease.spec = Some(next_spec(lease.spec.as_ref(), me, now, LEASE_DURATION));
                    self.api.replace(name, &PostParams::default(), &lease).await
                }
            },
        };
        match written {
            Ok(_) => Ok(Outcome::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        }
    }

    /// [`Self::attempt`], bounded so a hung request counts as a failed one instead of
    /// stalling the renew loop past its deadline.
    async fn attempt_bounded(&self) -> Result<Outcome, String> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt()).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }

    /// Waits until this replica holds the Lease, trying every [`RETRY_PERIOD`] (or just
    /// after the holder's Lease expires, when that is sooner, so a takeover does not
    /// wait for the next period). Returns when the winning try started, which is no
    /// later than the renewTime it wrote.
    pub async fn acquire(&self) -> tokio::time::Instant {
        let s = &self.settings;
        tracing::info!(lease = %s.name, namespace = %s.namespace, identity = %s.identity, "waiting for leadership");
        let mut last_holder = String::new();
        loop {
            let started = tokio::time::Instant::now();
            let mut wait = RETRY_PERIOD;
            match self.attempt_bounded().await {
                Ok(Outcome::Leading) => {
                    self.gauge.set(1);
                    tracing::info!(lease = %s.name, namespace = %s.namespace, identity = %s.identity, "became leader");
                    return started;
                }
                Ok(Outcome::Following { holder, expires }) => {
                    if holder != last_holder {
                        tracing::info!(%holder, "following: another replica leads");
                        last_holder = holder;
                    }
                    // A little past the expiry, as decide() wants it strictly past.
                    let until_expiry = Duration::try_from(expires.duration_since(Timestamp::now()))
                        .unwrap_or(Duration::ZERO)
                        + Duration::from_millis(100);
                    wait = wait.min(until_expiry);
                }
                Ok(Outcome::Conflict) => {
                    tracing::debug!("lost a race for the lease; trying again");
                }
                Err(e) => tracing::warn!(error = %e, "reading or taking the lease failed"),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Renews the Lease every [`RENEW_PERIOD`] while this replica leads; returns, with
    /// the reason, once it no longer does: another replica holds the Lease, or no renewal
    /// succeeded for [`RENEW_DEADLINE`]. The caller must stop writing at once.
    /// `renewed` is when the last successful write (from [`Self::acquire`]) started.
    pub async fn hold(&self, mut renewed: tokio::time::Instant) -> String {
        loop {
            tokio::time::sleep(RENEW_PERIOD).await;
            // Measured before the request: the renewTime written is no earlier than this.
            let started = tokio::time::Instant::now();
            let outcome = self.attempt_bounded().await;
            // A slow renewal is the warning before a lost lease: say how slow, so a
            // loaded API server (or a starved runtime) shows before the operator stops.
            let took = started.elapsed();
            if took > SLOW_RENEWAL {
                tracing::warn!(
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    "renewing the lease was slow"
                );
            }
            match outcome {
                Ok(Outcome::Leading) => renewed = started,
                Ok(Outcome::Following { holder, .. }) => {
                    self.gauge.set(0);
                    return format!("replica {holder} holds the lease now");
                }
                Ok(Outcome::Conflict) => {
                    tracing::warn!("renewing the lease: conflict; reading it again");
                }
                Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
            }
            if renewed.elapsed() > RENEW_DEADLINE {
                self.gauge.set(0);
                return format!("the lease could not be renewed for {RENEW_DEADLINE:?}");
            }
        }
    }

    /// Steps down: clears holderIdentity if this replica still holds the Lease, so a
    /// follower takes over on its next try instead of waiting for expiry.
    pub async fn release(&self) {
        self.gauge.set(0);
        let me = self.settings.identity.as_str();
        let name = self.settings.name.as_str();
        let result = async {
            let Some(mut lease) = self.api.get_opt(name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease
                .spec
                .as_ref()
                .filter(|s| s.holder_identity.as_deref() == Some(me))
            else {
                return Ok(false);
            };
            lease.spec = Some(released(spec));
            self.api
                .replace(name, &PostParams::default(), &lease)
                .await?;
            Ok::<_, kube::Error>(true)
        };
        match tokio::time::timeout(RETRY_PERIOD, result).await {
            Ok(Ok(true)) => tracing::info!(lease = %name, "released the lease"),
            Ok(Ok(false)) => {
                tracing::info!(lease = %name, "the lease was not ours; nothing to release")
            }
            // It expires on its own; the successor only waits longer.
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed"),
            Err(_) => tracing::warn!("releasing the lease: no answer in time"),
        }
    }
}

/// The [`Elector`] on a thread and runtime of its own, with a client (and connections) of
/// its own. The bench saw renewals of a shared runtime and client arrive seconds late while
/// 500 runs were reconciled at once, and a lost Lease stops the operator: the Lease must not
/// wait behind the work it guards.
pub struct LeaseThread {
    acquired: oneshot::Receiver<tokio::time::Instant>,
    lost: oneshot::Receiver<String>,
    release: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl LeaseThread {
    /// Starts the thread; it begins by waiting for the Lease.
    pub fn spawn(
        config: kube::Config,
        settings: LeaseSettings,
        gauge: IntGauge,
    ) -> std::io::Result<Self> {
        let (acquired_tx, acquired) = oneshot::channel();
        let (lost_tx, lost) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("maestro-lease".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // The client's connection tasks run on this runtime, so it is made here.
                    let client = match Client::try_from(config) {
                        Ok(client) => client,
                        Err(e) => {
                            let _ = lost_tx.send(format!("no client for the lease: {e}"));
                            return;
                        }
                    };
                    let elector = Elector::new(client, settings, gauge);
                    let mut release_rx = release_rx;
                    let started = tokio::select! {
                        started = elector.acquire() => started,
                        // Asked to step down before leading: there is nothing to release.
                        done = &mut release_rx => {
                            if let Ok(done) = done {
                                let _ = done.send(());
                            }
                            return;
                        }
                    };
                    if acquired_tx.send(started).is_err() {
                        // Nobody waits for leadership any more: hand the Lease back.
                        elector.release().await;
                        return;
                    }
                    tokio::select! {
                        reason = elector.hold(started) => {
                            let _ = lost_tx.send(reason);
                        }
                        done = release_rx => {
                            elector.release().await;
                            if let Ok(done) = done {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            })?;
        Ok(Self {
            acquired,
            lost,
            release: Some(release_tx),
        })
    }

    /// Waits until this replica leads; returns when the winning try started, or why the
    /// thread ended without leading.
    pub async fn acquired(&mut self) -> Result<tokio::time::Instant, String> {
        match (&mut self.acquired).await {
            Ok(at) => Ok(at),
            Err(_) => Err(self.lost().await),
        }
    }

    /// Waits until this replica no longer leads, with the reason.
    pub async fn lost(&mut self) -> String {
        match (&mut self.lost).await {
            Ok(reason) => reason,
            Err(_) => "the lease thread ended".into(),
        }
    }

    /// Steps down (see [`Elector::release`]) and waits until it has.
    pub async fn release(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if release.send(done_tx).is_ok() {
            let _ = done_rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_or_no_holder_is_taken() {
        assert_eq!(decide(None, "a", at(0), LEASE_DURATION), Decision::Acquire);
        let empty = LeaseSpec::default();
        assert_eq!(
            decide(Some(&empty), "a", at(0), LEASE_DURATION),
            Decision::Acquire
        );
        let blank = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held("x", 0, 10)
        };
        assert_eq!(
            decide(Some(&blank), "a", at(1), LEASE_DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn a_live_holder_is_followed_until_its_lease_expires() {
        let spec = held("b", 100, 10);
        let follow = Decision::Follow {
            holder: "b".into(),
            expires: at(110),
        };
        assert_eq!(decide(Some(&spec), "a", at(100), LEASE_DURATION), follow);
        assert_eq!(decide(Some(&spec), "a", at(109), LEASE_DURATION), follow);
        // renewTime + duration == now is not yet past it.
        assert_eq!(decide(Some(&spec), "a", at(110), LEASE_DURATION), follow);
        assert_eq!(
            decide(Some(&spec), "a", at(111), LEASE_DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn the_holders_declared_duration_counts() {
        let spec = held("b", 100, 60);
        assert_eq!(
            decide(Some(&spec), "a", at(130), LEASE_DURATION),
            Decision::Follow {
                holder: "b".into(),
                expires: at(160),
            }
        );
        // No (or a nonsensical) declared duration: ours.
        let undeclared = LeaseSpec {
            lease_duration_seconds: Some(0),
            ..held("b", 100, 0)
        };
        assert_eq!(
            decide(Some(&undeclared), "a", at(116), LEASE_DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed_even_when_expired() {
        let spec = held("a", 100, 10);
        assert_eq!(
            decide(Some(&spec), "a", at(101), LEASE_DURATION),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec), "a", at(500), LEASE_DURATION),
            Decision::Renew
        );
    }

    #[test]
    fn a_holder_without_times_is_not_trusted() {
        let spec = LeaseSpec {
            holder_identity: Some("b".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(
            decide(Some(&spec), "a", at(0), LEASE_DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_does_not() {
        let taken = next_spec(Some(&held("b", 100, 10)), "a", at(120), LEASE_DURATION);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(120))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(120))));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let renewed = next_spec(Some(&taken), "a", at(122), LEASE_DURATION);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(120))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(122))));
    }

    #[test]
    fn the_first_holder_and_a_successor_after_release() {
        let first = next_spec(None, "a", at(0), LEASE_DURATION);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.holder_identity.as_deref(), Some("a"));

        let free = released(&next_spec(Some(&first), "a", at(2), LEASE_DURATION));
        assert_eq!(free.holder_identity, None);
        assert_eq!(
            decide(Some(&free), "b", at(3), LEASE_DURATION),
            Decision::Acquire
        );
        let next = next_spec(Some(&free), "b", at(3), LEASE_DURATION);
        assert_eq!(next.holder_identity.as_deref(), Some("b"));
        assert_eq!(next.lease_transitions, Some(1));
    }
}
