//! Triggers: what starts runs of a composition without a user. Pure logic only (no
//! Kubernetes types): glob patterns, git push payloads and their signatures, matching a
//! push against a composition's git triggers, and the cron schedule's decisions. The
//! webhook server (`crate::webhook`) and the composition controller wire it to the cluster.

pub mod cron;
pub mod glob;
pub mod push;
pub mod signature;

use crate::api::{CompositionSpec, Triggers};

/// The params a push gives a run, by name; only those the composition declares are passed.
pub const PUSH_PARAMS: [&str; 5] = ["repository", "ref", "commitSha", "author", "message"];

/// Problems with a composition's triggers, each naming its field, for the Ready condition.
pub fn validate(spec: &CompositionSpec) -> Vec<String> {
    let Some(Triggers { git, cron }) = &spec.triggers else {
        return Vec::new();
    };
    let declared = |name: &str| spec.params.iter().any(|p| p.name == name);
    let mut problems = Vec::new();
    for (i, trigger) in git.iter().enumerate() {
        for key in trigger.params.keys() {
            if !declared(key) {
                problems.push(format!(
                    "spec.triggers.git[{i}].params.{key}: the composition has no param {key:?}"
                ));
            }
        }
    }
    if let Some(cron) = cron {
        if let Err(e) = cron::Schedule::parse(&cron.schedule, cron.time_zone.as_deref()) {
            problems.push(format!("spec.triggers.cron: {e}"));
        }
        for key in cron.params.keys() {
            if !declared(key) {
                problems.push(format!(
                    "spec.triggers.cron.params.{key}: the composition has no param {key:?}"
                ));
            }
        }
    }
    problems
}
