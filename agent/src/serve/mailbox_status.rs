//! The `Provisioned` condition on Mailbox status, written with server-side apply under the
//! agent's own field manager: conditions are a list map keyed by `type`, so the operator's
//! `Ready` and the agent's `Provisioned` never overwrite each other. The agent may only patch
//! `mailboxes/status` (no get), so it remembers what it last wrote and patches only changes.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use virtmail_crds::Mailbox;
use virtmail_crds::contract::{self, WantedCondition, condition};

use crate::provision::Report;

/// Field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "virtmail-agent";

/// The `Provisioned` condition last written per Mailbox object, kept small (one per mailbox of
/// the server): its status, a fingerprint of its reason and message, and its transition time.
#[derive(Debug, Default)]
pub struct Written(HashMap<Box<str>, Last>);

/// What [`Written`] keeps of one condition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Last {
    status: bool,
    fingerprint: u64,
    since: Time,
}

impl Last {
    fn of(condition: &Condition) -> Last {
        let mut hasher = DefaultHasher::new();
        (&condition.reason, &condition.message).hash(&mut hasher);
        Last {
            status: condition.status == "True",
            fingerprint: hasher.finish(),
            since: condition.last_transition_time.clone(),
        }
    }

    /// The condition as the merge rule needs it: the status and its transition time.
    fn as_condition(&self) -> Condition {
        Condition {
            type_: condition::PROVISIONED.into(),
            status: if self.status { "True" } else { "False" }.into(),
            reason: String::new(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: self.since.clone(),
        }
    }
}

/// The condition `report` asks for, when it differs from `last` (the merge rule keeps the
/// transition time while the status stays).
fn changed(last: Option<&Last>, report: &Report, now: &Time) -> Option<(Condition, Last)> {
    let (status, reason, message) = report.state.condition(&report.path);
    let wanted = WantedCondition {
        type_: condition::PROVISIONED,
        status,
        reason: reason.into(),
        message,
    };
    let previous: Vec<Condition> = last.map(Last::as_condition).into_iter().collect();
    let merged = contract::merge_conditions(&previous, &[wanted], None, now);
    let [condition] = <[Condition; 1]>::try_from(merged).expect("one wanted condition");
    let next = Last::of(&condition);
    (last != Some(&next)).then_some((condition, next))
}

/// Patch the `Provisioned` condition of every report whose condition changed. Returns how many
/// patches failed (logged); a failed patch is retried with the next version.
pub async fn publish(
    client: &Client,
    namespace: &str,
    reports: &[Report],
    written: &mut Written,
) -> usize {
    let api: Api<Mailbox> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let now = Time(Timestamp::now());
    let mut failures = 0;
    for report in reports {
        let last = written.0.get(report.object.as_str());
        let Some((condition, now_last)) = changed(last, report, &now) else {
            continue;
        };
        let merged = [condition];
        let patch = json!({
            "apiVersion": "virtmail.io/v1alpha1",
            "kind": "Mailbox",
            "status": {"conditions": merged},
        });
        match api
            .patch_status(&report.object, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                written.0.insert(report.object.as_str().into(), now_last);
            }
            // The Mailbox was deleted meanwhile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                failures += 1;
                tracing::warn!(mailbox = %report.object, %error, "cannot patch Provisioned");
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::State;

    fn report(state: State) -> Report {
        Report {
            address: "a@x.test".into(),
            object: "a".into(),
            path: "/var/mail/x.test/a/".into(),
            state,
        }
    }

    #[test]
    fn a_condition_is_written_again_only_when_it_changes() {
        let (t1, t2, t3) = (
            Time(Timestamp::from_second(1_000).expect("t1")),
            Time(Timestamp::from_second(2_000).expect("t2")),
            Time(Timestamp::from_second(3_000).expect("t3")),
        );
        let (first, last) = changed(None, &report(State::Created), &t1).expect("first write");
        assert_eq!(
            (first.status.as_str(), &first.last_transition_time),
            ("True", &t1)
        );
        // Present after Created: another reason, the same status, so the time stays.
        let (present, last) = changed(Some(&last), &report(State::Present), &t2).expect("reason");
        assert_eq!(present.last_transition_time, t1);
        assert_eq!(changed(Some(&last), &report(State::Present), &t2), None);
        let problem = |message: &str| State::Problem {
            reason: "OwnerMismatch",
            message: message.into(),
        };
        let (second, last) = changed(Some(&last), &report(problem("uid 1")), &t2).expect("False");
        assert_eq!(
            (second.status.as_str(), &second.last_transition_time),
            ("False", &t2)
        );
        // Another message, same status: written, and the transition time stays.
        let (third, last) = changed(Some(&last), &report(problem("uid 2")), &t3).expect("message");
        assert_eq!(third.last_transition_time, t2);
        assert_eq!(changed(Some(&last), &report(problem("uid 2")), &t3), None);
    }
}
