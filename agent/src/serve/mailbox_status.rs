//! The `Provisioned` condition on Mailbox status, written with server-side apply under the
//! agent's own field manager: conditions are a list map keyed by `type`, so the operator's
//! `Ready` and the agent's `Provisioned` never overwrite each other. The agent may only patch
//! `mailboxes/status` (no get), so it remembers what it last wrote and patches only changes.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use virtmail_crds::Mailbox;

use crate::provision::Report;

/// Field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "virtmail-agent";

/// What was last written per Mailbox object: `(status, reason, message, lastTransitionTime)`.
#[derive(Debug, Default)]
pub struct Written(HashMap<String, (bool, String, String, String)>);

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
    let mut failures = 0;
    for report in reports {
        let (status, reason, message) = report.state.condition(&report.path);
        let previous = written.0.get(&report.object);
        if previous.is_some_and(|p| p.0 == status && p.1 == reason && p.2 == message) {
            continue;
        }
        let since = match previous {
            Some(p) if p.0 == status => p.3.clone(),
            _ => Timestamp::now().to_string(),
        };
        let patch = json!({
            "apiVersion": "virtmail.io/v1alpha1",
            "kind": "Mailbox",
            "status": {"conditions": [{
                "type": "Provisioned",
                "status": if status { "True" } else { "False" },
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            }]},
        });
        match api
            .patch_status(&report.object, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                written.0.insert(
                    report.object.clone(),
                    (status, reason.to_string(), message, since),
                );
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
