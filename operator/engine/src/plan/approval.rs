//! Approval steps: waiting for enough decisions of the right people.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use maestro_api::{ApprovalGate, ApprovalRecord, Decision, Step, StepPhase, parse_duration};

use crate::ObservedApproval;

use super::{
    Planner,
    conditions::{normal, warning},
    durations::{add, human},
};

/// At most this many decisions that do not count are kept in a step's status: anyone who
/// may create Approvals could otherwise grow the run object without bound. Decisions that
/// count are always kept (at most `approvers` approvals and one rejection).
const MAX_IGNORED_RECORDS: usize = 10;

/// At most this many ignored decisions are named in the step's message; the status lists
/// them all.
const MAX_IGNORED_IN_MESSAGE: usize = 3;

/// What the decisions on one gate add up to.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    /// The decisions, oldest first, as the status shows them.
    records: Vec<ApprovalRecord>,
    /// The users whose approval counts, in the order they approved.
    approved: Vec<String>,
    /// Who rejected the gate, if an eligible user did before it passed.
    rejected_by: Option<String>,
    /// How many ignored decisions were left out of `records`.
    ignored_dropped: usize,
}

impl Tally {
    fn passed(&self, required: u32) -> bool {
        self.rejected_by.is_none() && self.approved.len() >= required as usize
    }

    fn decided(&self, required: u32) -> bool {
        self.rejected_by.is_some() || self.passed(required)
    }
}

/// Counts `approvals` (this gate's, in any order) for a run started by `started_by`:
/// oldest first, each user's approval once, only users the gate lets decide; the first
/// eligible rejection fails the gate, and nothing after the decision counts.
fn tally(gate: &ApprovalGate, started_by: Option<&str>, approvals: &[&ObservedApproval]) -> Tally {
    let required = gate.required_approvals();
    let mut ordered: Vec<&ObservedApproval> = approvals.to_vec();
    ordered.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut result = Tally::default();
    for a in ordered {
        // A user's repeated decision is named as such even when the gate was decided by
        // then: Approvals made in the same second sort by name, not by when they came, so
        // which of the two reasons applied would be chance.
        let ignored = if result.approved.contains(&a.by) {
            Some(format!("{} already approved", a.by))
        } else if result.decided(required) {
            Some("the gate was already decided".to_string())
        } else {
            gate.ineligible(&a.by, &a.groups, started_by)
        };
        if ignored.is_none() {
            match a.decision {
                Decision::Approve => result.approved.push(a.by.clone()),
                Decision::Reject => result.rejected_by = Some(a.by.clone()),
            }
        } else if result
            .records
            .iter()
            .filter(|r| r.ignored.is_some())
            .count()
            >= MAX_IGNORED_RECORDS
        {
            result.ignored_dropped += 1;
            continue;
        }
        result.records.push(ApprovalRecord {
            name: a.name.clone(),
            by: a.by.clone(),
            decision: a.decision,
            time: a.created.map(Time),
            comment: a.comment.clone(),
            ignored,
        });
    }
    result
}

/// The step's message while the gate waits: its question, then (once anything was
/// decided, or when several approvers are needed) how far it got, like
/// `Ship 1.4.3? (1 of 2 approvals; alice approved)`.
fn waiting_message(gate: &ApprovalGate, tally: &Tally) -> String {
    let question = gate.message.as_deref().unwrap_or("waiting for approval");
    let required = gate.required_approvals();
    if required == 1 && tally.records.is_empty() {
        return question.to_string();
    }
    let mut progress = format!("{} of {required} approvals", tally.approved.len());
    if !tally.approved.is_empty() {
        let _ = write!(progress, "; {} approved", tally.approved.join(", "));
    }
    let ignored: Vec<&ApprovalRecord> = tally
        .records
        .iter()
        .filter(|r| r.ignored.is_some())
        .collect();
    for record in ignored.iter().take(MAX_IGNORED_IN_MESSAGE) {
        let noun = match record.decision {
            Decision::Approve => "approval",
            Decision::Reject => "rejection",
        };
        let why = record.ignored.as_deref().unwrap_or_default();
        let _ = write!(progress, "; {}'s {noun} does not count: {why}", record.by);
    }
    let unnamed = ignored.len().saturating_sub(MAX_IGNORED_IN_MESSAGE) + tally.ignored_dropped;
    if unnamed > 0 {
        let _ = write!(progress, "; {unnamed} more decisions do not count");
    }
    format!("{question} ({progress})")
}

impl Planner<'_> {
    pub(super) fn watch_approval(&mut self, step: &Step, i: usize) {
        let gate = step.approval.clone().unwrap_or_default();
        let required = gate.required_approvals();
        let approvals: Vec<&ObservedApproval> = self
            .input
            .observed
            .approvals
            .iter()
            .filter(|a| a.step == step.name)
            .collect();
        let tally = tally(&gate, self.input.spec.started_by.as_deref(), &approvals);
        self.note_new_decisions(step, i, &tally, required);
        self.plan.status.steps[i].approvals = tally.records.clone();

        if let Some(by) = &tally.rejected_by {
            self.plan.status.steps[i].approved_by = Some(by.clone());
            self.finish_step(i, StepPhase::Failed, format!("rejected by {by}"));
            self.plan.events.push(warning(
                "StepRejected",
                format!("step {} rejected by {by}", step.name),
            ));
            return;
        }
        if tally.passed(required) {
            let names = tally.approved.join(", ");
            self.plan.status.steps[i].approved_by = Some(names.clone());
            self.finish_step(i, StepPhase::Succeeded, format!("approved by {names}"));
            self.plan.events.push(normal(
                "StepApproved",
                format!("step {} approved by {names}", step.name),
            ));
            return;
        }
        self.plan.status.steps[i].message = Some(waiting_message(&gate, &tally));

        let limit = gate.timeout.as_deref().and_then(|t| parse_duration(t).ok());
        let began = self.plan.status.steps[i].start_time.as_ref().map(|t| t.0);
        if let (Some(limit), Some(began)) = (limit, began) {
            let deadline = add(began, limit);
            if self.input.now >= deadline {
                let message = if tally.approved.is_empty() {
                    format!("no approval within {}", human(limit))
                } else {
                    format!(
                        "only {} of {required} approvals within {}",
                        tally.approved.len(),
                        human(limit)
                    )
                };
                self.finish_step(i, StepPhase::Failed, message.clone());
                self.plan.events.push(warning(
                    "ApprovalTimeout",
                    format!("step {}: {message}", step.name),
                ));
            } else {
                self.requeue_at(deadline);
            }
        }
    }

    /// Events for the decisions this pass sees for the first time (not yet in the step's
    /// status) that do not decide the gate: an approval counted towards it, or a decision
    /// that does not count and why. The deciding one has its own event.
    fn note_new_decisions(&mut self, step: &Step, i: usize, tally: &Tally, required: u32) {
        let known = &self.plan.status.steps[i].approvals;
        let fresh: Vec<&ApprovalRecord> = tally
            .records
            .iter()
            .filter(|r| !known.iter().any(|k| k.name == r.name))
            .collect();
        let deciding = if tally.decided(required) {
            tally.records.iter().rfind(|r| r.ignored.is_none())
        } else {
            None
        };
        let mut notes = Vec::new();
        for record in fresh {
            if Some(record) == deciding {
                continue;
            }
            match &record.ignored {
                Some(why) => notes.push(warning(
                    "ApprovalIgnored",
                    format!(
                        "step {}: the decision of {} ({}) does not count: {why}",
                        step.name, record.by, record.name
                    ),
                )),
                None => notes.push(normal(
                    "ApprovalCounted",
                    format!(
                        "step {}: {} approved ({} of {required})",
                        step.name,
                        record.by,
                        tally
                            .approved
                            .iter()
                            .position(|u| *u == record.by)
                            .map_or(0, |n| n + 1)
                    ),
                )),
            }
        }
        self.plan.events.extend(notes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(approvers: u32, allow_self: Option<bool>, groups: &[&str]) -> ApprovalGate {
        ApprovalGate {
            approvers: Some(approvers),
            allow_self_approval: allow_self,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..ApprovalGate::default()
        }
    }

    fn decision(name: &str, by: &str, decision: Decision, second: i64) -> ObservedApproval {
        ObservedApproval {
            name: name.into(),
            step: "gate".into(),
            decision,
            by: by.into(),
            groups: vec!["release-managers".into()],
            comment: None,
            created: Some(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + second)
                    .expect("a valid time"),
            ),
        }
    }

    #[test]
    fn distinct_users_count_once_each_in_time_order() {
        let a = decision("a", "alice", Decision::Approve, 2);
        let again = decision("b", "alice", Decision::Approve, 3);
        let carol = decision("c", "carol", Decision::Approve, 4);
        // Observed out of order: time decides.
        let got = tally(&gate(2, None, &[]), None, &[&carol, &again, &a]);
        assert_eq!(got.approved, vec!["alice", "carol"]);
        assert!(got.passed(2));
        assert_eq!(
            got.records[1].ignored.as_deref(),
            Some("alice already approved")
        );
    }

    /// CI saw alice's second approval and bob's deciding one made in the same second, and
    /// the second approval's reason depended on their names' order.
    #[test]
    fn a_repeated_approval_says_so_even_after_the_decision() {
        let alice = decision("a", "alice", Decision::Approve, 1);
        let bob = decision("b-first-by-name", "bob", Decision::Approve, 2);
        let again = decision("c", "alice", Decision::Approve, 2);
        let got = tally(&gate(2, None, &[]), None, &[&alice, &bob, &again]);
        assert!(got.passed(2));
        assert_eq!(got.approved, vec!["alice", "bob"]);
        assert_eq!(
            got.records[2].ignored.as_deref(),
            Some("alice already approved")
        );
    }

    #[test]
    fn the_starter_is_refused_by_default_only_when_several_are_needed() {
        let own = decision("a", "alice", Decision::Approve, 1);
        let two = tally(&gate(2, None, &[]), Some("alice"), &[&own]);
        assert!(two.approved.is_empty());
        assert!(
            two.records[0]
                .ignored
                .as_deref()
                .is_some_and(|w| w.contains("started the run"))
        );
        let one = tally(&gate(1, None, &[]), Some("alice"), &[&own]);
        assert_eq!(one.approved, vec!["alice"]);
        let forbidden = tally(&gate(1, Some(false), &[]), Some("alice"), &[&own]);
        assert!(forbidden.approved.is_empty());
    }

    #[test]
    fn a_rejection_fails_and_nothing_after_the_decision_counts() {
        let yes = decision("a", "alice", Decision::Approve, 1);
        let no = decision("b", "bob", Decision::Reject, 2);
        let late = decision("c", "carol", Decision::Approve, 3);
        let got = tally(&gate(2, None, &[]), None, &[&yes, &no, &late]);
        assert_eq!(got.rejected_by.as_deref(), Some("bob"));
        assert!(!got.passed(2));
        assert_eq!(
            got.records[2].ignored.as_deref(),
            Some("the gate was already decided")
        );
    }

    #[test]
    fn only_members_of_the_gates_groups_decide() {
        let mut outsider = decision("a", "mallory", Decision::Reject, 1);
        outsider.groups = vec!["developers".into()];
        let got = tally(&gate(1, None, &["release-managers"]), None, &[&outsider]);
        assert_eq!(got.rejected_by, None);
        assert_eq!(
            got.records[0].ignored.as_deref(),
            Some("mallory is in none of the groups release-managers")
        );
    }

    #[test]
    fn the_message_says_how_far_the_gate_got() {
        let yes = decision("a", "alice", Decision::Approve, 1);
        let own = decision("b", "carol", Decision::Approve, 2);
        let mut g = gate(2, None, &[]);
        g.message = Some("Ship it?".into());
        assert_eq!(
            waiting_message(&g, &tally(&g, Some("carol"), &[])),
            "Ship it? (0 of 2 approvals)"
        );
        assert_eq!(
            waiting_message(&g, &tally(&g, Some("carol"), &[&yes, &own])),
            "Ship it? (1 of 2 approvals; alice approved; carol's approval does not count: \
             carol started the run and may not approve it)"
        );
        let single = ApprovalGate::default();
        assert_eq!(
            waiting_message(&single, &tally(&single, None, &[])),
            "waiting for approval"
        );
    }

    #[test]
    fn ignored_decisions_are_kept_up_to_a_bound() {
        let spam: Vec<ObservedApproval> = (0..30)
            .map(|n| decision(&format!("s{n:02}"), "alice", Decision::Approve, n))
            .collect();
        let refs: Vec<&ObservedApproval> = spam.iter().collect();
        let got = tally(&gate(2, None, &[]), Some("alice"), &refs);
        assert_eq!(got.records.len(), MAX_IGNORED_RECORDS);
        assert_eq!(got.ignored_dropped, 30 - MAX_IGNORED_RECORDS);
        assert!(
            waiting_message(&gate(2, None, &[]), &got)
                .ends_with("; 27 more decisions do not count)")
        );
    }
}
