//! The `Provisioned` condition on Mailbox status, written with server-side apply under the
//! agent's own field manager: conditions are a list map keyed by `type`, so the operator's
//! `Ready` and the agent's `Provisioned` never overwrite each other. The agent may only patch
//! `mailboxes/status` (no get), so it remembers what it last wrote and patches only changes.

use std::collections::HashMap;

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

/// The `Provisioned` condition last written per Mailbox object.
#[derive(Debug, Default)]
pub struct Written(HashMap<String, Condition>);

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
        let (status, reason, message) = report.state.condition(&report.path);
        let wanted = WantedCondition {
            type_: condition::PROVISIONED,
            status,
            reason: reason.into(),
            message,
        };
        let previous = written
            .0
            .get(&report.object)
            .map(std::slice::from_ref)
            .unwrap_or_default();
        let merged = contract::merge_conditions(previous, &[wanted], None, &now);
        if !contract::conditions_differ(previous, &merged) {
            continue;
        }
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
                let [condition] = <[Condition; 1]>::try_from(merged).expect("one wanted condition");
                written.0.insert(report.object.clone(), condition);
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
