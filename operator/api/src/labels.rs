//! Names and labels that tie step pods and child runs to their run. The operator, the CLI
//! and the tests all derive names from here, so a name always means the same thing.

/// Label on every object Maestro creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGER: &str = "maestro";
/// The run a step pod (or a child run) belongs to.
pub const RUN: &str = "maestro.dev/run";
/// The step a pod runs, or the step of the parent run that started a child run.
pub const STEP: &str = "maestro.dev/step";
/// The attempt number of a step pod (1 for the first).
pub const ATTEMPT: &str = "maestro.dev/attempt";
/// What started a run: `git` (a push webhook) or `cron` (the schedule).
pub const TRIGGER: &str = "maestro.dev/trigger";
/// On a run a push started: the webhook delivery's id (as a label value).
pub const DELIVERY: &str = "maestro.dev/delivery";
/// On a run a push started (an annotation): the SHA-256 of the delivery's signed body,
/// which names the run.
pub const BODY_SHA256: &str = "maestro.dev/body-sha256";
/// The composition a run (or pod) belongs to.
pub const COMPOSITION: &str = "maestro.dev/composition";
/// On a child run: the parent run that started it.
pub const PARENT_RUN: &str = "maestro.dev/parent-run";
/// On an onFailure run: the failed run that started it.
pub const FAILED_RUN: &str = "maestro.dev/failed-run";
/// On an onFailure run: the UID of the failed run that started it. The onFailure run is
/// not owned by the failed run (it outlives it), so this label, which only the operator
/// may set (the reserved-labels policy), is what proves a run of that name is the handler
/// and not a look-alike a runner created first.
pub const FAILED_RUN_UID: &str = "maestro.dev/failed-run-uid";
/// On a run another run started (a child, or an onFailure run): how many runs started
/// each other to get here (1 for a child of a run a user or trigger started).
pub const DEPTH: &str = "maestro.dev/depth";
/// How deep runs may start runs: a composition that calls (or forks, or runs onFailure)
/// itself stops here instead of starting runs without end.
pub const MAX_RUN_DEPTH: u32 = 8;

/// Annotation on a run another run started: the compositions of the runs that started it
/// and its own, from the first, joined by ` -> `. Only read to name the chain when the
/// depth limit stops it, so a forged value misleads that message and nothing else.
pub const CHAIN: &str = "maestro.dev/chain";

/// The chain of compositions that led to a run of `composition` with these annotations:
/// its [`CHAIN`] annotation, or only its own composition when it has none.
pub fn chain_of(
    annotations: &std::collections::BTreeMap<String, String>,
    composition: &str,
) -> String {
    annotations
        .get(CHAIN)
        .filter(|chain| !chain.is_empty())
        .cloned()
        .unwrap_or_else(|| composition.to_string())
}

/// A run's depth from its labels: 0 for a run without the label (started by a user or a
/// trigger) and for an unreadable value.
pub fn depth_of(labels: &std::collections::BTreeMap<String, String>) -> u32 {
    labels.get(DEPTH).and_then(|d| d.parse().ok()).unwrap_or(0)
}
/// On a step pod: the Agent whose slot runs it (its capacity counts the pod).
pub const AGENT: &str = "maestro.dev/agent";
/// On a step pod: the index of the Agent slot whose cache it mounts.
pub const SLOT: &str = "maestro.dev/slot";
/// The name of the step container in a step pod.
pub const STEP_CONTAINER: &str = "step";

/// Kubernetes object names (and label values) are at most 63 characters here.
const MAX_NAME: usize = 63;

/// The deterministic name of a step's pod: `<run>-<step>-<attempt>`, shortened with a
/// hash when too long. Creating it twice fails with AlreadyExists, so a restarted operator
/// never runs an attempt twice.
pub fn step_pod_name(run: &str, step: &str, attempt: u32) -> String {
    bounded_name(&format!("{run}-{step}-{attempt}"))
}

/// The deterministic name of the `index`th child run a step starts.
pub fn child_run_name(run: &str, step: &str, index: usize) -> String {
    bounded_name(&format!("{run}-{step}-{index}"))
}

/// The deterministic name of the pod that removes a run's leftover external resources.
/// A step name cannot start with `-`, so this never collides with a step's pod.
pub fn cleanup_pod_name(run: &str, attempt: u32) -> String {
    bounded_name(&format!("{run}--cleanup-{attempt}"))
}

/// The deterministic name of the run `onFailure` starts.
pub fn on_failure_run_name(run: &str) -> String {
    bounded_name(&format!("{run}-onfailure"))
}

/// The run a git push delivery starts for a composition, named by the SHA-256 of the signed
/// body: the same for a redelivery and for a captured body replayed under a new delivery
/// id, so either fails with AlreadyExists instead of running twice.
pub fn webhook_run_name(composition: &str, body_sha256: &str) -> String {
    let hash = fnv1a(format!("{composition}/{body_sha256}").as_bytes());
    let hash2 = fnv1a(format!("{body_sha256}/{composition}").as_bytes());
    bounded_name(&format!("{composition}-push-{hash:08x}{hash2:08x}"))
}

/// `name` itself when short enough, else its first characters and a stable hash of it.
pub fn bounded_name(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    let hash = fnv1a(name.as_bytes());
    let keep = MAX_NAME - 9;
    let mut prefix: String = name.chars().take(keep).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    format!("{prefix}-{hash:08x}")
}

/// `<base><suffix>` when short enough, else the first characters of `base`, a stable hash
/// of the whole name, and `suffix` kept whole (so the name still says what it is).
pub fn bounded_name_with_suffix(base: &str, suffix: &str) -> String {
    let whole = format!("{base}{suffix}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let hash = fnv1a(whole.as_bytes());
    let keep = MAX_NAME.saturating_sub(suffix.len() + 9);
    let mut prefix: String = base.chars().take(keep).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    format!("{prefix}-{hash:08x}{suffix}")
}

/// FNV-1a, 32 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The name a rerun of `run` is generated from (the API server adds a 5-character
/// suffix): `<run>-rerun`, or for a rerun of a rerun the same base again (not
/// `-rerun-xxxxx-rerun`), cut to leave room for `-` and the suffix in 63 characters.
pub fn rerun_name_base(run: &str) -> String {
    let base = match run.rsplit_once("-rerun-") {
        Some((first, suffix)) if suffix.len() == 5 => first,
        _ => run,
    };
    let mut name = format!("{base}-rerun");
    name.truncate(57);
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(
            step_pod_name("hello-abcde", "greet", 2),
            "hello-abcde-greet-2"
        );
    }

    #[test]
    fn long_names_are_bounded_stable_and_distinct() {
        let run = "a".repeat(60);
        let one = step_pod_name(&run, "deploy", 1);
        let two = step_pod_name(&run, "deploy", 2);
        assert!(one.len() <= 63 && two.len() <= 63);
        assert_ne!(one, two);
        assert_eq!(one, step_pod_name(&run, "deploy", 1));
    }

    #[test]
    fn a_rerun_is_named_after_the_first_run_and_fits() {
        assert_eq!(rerun_name_base("release-x7k2p"), "release-x7k2p-rerun");
        assert_eq!(
            rerun_name_base("release-x7k2p-rerun-ab3cd"),
            "release-x7k2p-rerun"
        );
        let long = "a".repeat(63);
        assert!(rerun_name_base(&long).len() + 1 + 5 <= 63);
    }
}
