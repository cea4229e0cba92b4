//! Triggers: what starts runs of a composition without a user. Pure logic only (no
//! Kubernetes types): glob patterns, git push payloads and their signatures, matching a
//! push against a composition's git triggers, and the cron schedule's decisions. The
//! webhook server (in maestro-operator) and the composition controller wire it to the cluster.

pub mod cron;
pub mod glob;
pub mod push;
pub mod signature;

use maestro_api::{CompositionSpec, Triggers};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(triggers: serde_json::Value) -> CompositionSpec {
        serde_json::from_value(serde_json::json!({
            "params": [{"name": "env"}],
            "steps": [{"name": "a", "task": "shell"}],
            "triggers": triggers,
        }))
        .unwrap()
    }

    #[test]
    fn trigger_problems_name_their_field() {
        let ok = spec(serde_json::json!({
            "git": [{"repository": "https://h/r", "secretRef": {"name": "s"}, "params": {"env": "x"}}],
            "cron": {"schedule": "0 3 * * *", "timeZone": "Europe/Paris", "params": {"env": "y"}}
        }));
        assert_eq!(validate(&ok), Vec::<String>::new());
        assert_eq!(
            ok.triggers.unwrap().git[0].secret_ref.key,
            "secret",
            "default key"
        );

        let bad = spec(serde_json::json!({
            "git": [{"repository": "https://h/r", "secretRef": {"name": "s"}, "params": {"nope": "x"}}],
            "cron": {"schedule": "every day", "params": {"other": "y"}}
        }));
        let problems = validate(&bad);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("spec.triggers.git[0].params.nope"));
        assert!(problems[1].starts_with("spec.triggers.cron: invalid schedule"));
        assert!(problems[2].starts_with("spec.triggers.cron.params.other"));

        let zone = spec(serde_json::json!({"cron": {"schedule": "@daily", "timeZone": "Nowhere"}}));
        assert_eq!(
            validate(&zone),
            ["spec.triggers.cron: unknown time zone \"Nowhere\""]
        );
    }
}
