//! Objects the unit tests share.

use serde_json::json;
use virtmail_crds::{Compiled, Inputs, MailServer, Mailbox, Objects, compile};

/// A Mailbox `name@example.test`, `Ready` or without conditions.
pub fn mailbox(namespace: &str, name: &str, generation: i64, ready: bool) -> Mailbox {
    serde_json::from_value(json!({
        "apiVersion": "virtmail.io/v1alpha1",
        "kind": "Mailbox",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                     "generation": generation},
        "spec": {"address": format!("{name}@example.test")},
        "status": {"conditions": if ready {
            json!([{"type": "Ready", "status": "True", "reason": "Published", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        } else { json!([]) }},
    }))
    .expect("a Mailbox")
}

/// A MailServer with an empty spec.
pub fn server(namespace: &str, name: &str, generation: i64) -> MailServer {
    serde_json::from_value(json!({
        "apiVersion": "virtmail.io/v1alpha1",
        "kind": "MailServer",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                     "generation": generation},
        "spec": {},
    }))
    .expect("a MailServer")
}

/// The compile of `server` with no other object in its namespace.
pub fn compiled_alone(server: &MailServer) -> Compiled {
    compile(Inputs {
        server,
        servers: Objects::Slice(&[]),
        domains: Objects::Slice(&[]),
        mailboxes: Objects::Slice(&[]),
        aliases: Objects::Slice(&[]),
    })
}
