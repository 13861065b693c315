//! Objects the unit tests share.

use serde_json::json;
use virtmail_crds::{
    Compiled, Inputs, MailAlias, MailDomain, MailServer, Mailbox, Objects, compile,
};

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
    compiled(server, &[], &[])
}

/// The compile of `server` with these domains and mailboxes in its namespace.
pub fn compiled(server: &MailServer, domains: &[MailDomain], mailboxes: &[Mailbox]) -> Compiled {
    compile(Inputs {
        server,
        servers: Objects::Slice(&[]),
        domains: domains.into(),
        mailboxes: mailboxes.into(),
        aliases: Objects::Slice(&[]),
    })
}

/// MailDomain `example.test` (Mbox mailboxes of uid and gid 5000), named `example`.
pub fn domain(namespace: &str) -> MailDomain {
    serde_json::from_value(json!({
        "apiVersion": "virtmail.io/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "example", "namespace": namespace, "uid": "uid-example",
                     "generation": 1},
        "spec": {"domain": "example.test", "postmaster": "alice@example.test",
                 "defaults": {"uid": 5000, "gid": 5000, "format": "Mbox"}},
    }))
    .expect("a MailDomain")
}

/// A MailAlias of `address` forwarding to `to`.
pub fn alias(namespace: &str, name: &str, address: &str, to: &str) -> MailAlias {
    serde_json::from_value(json!({
        "apiVersion": "virtmail.io/v1alpha1",
        "kind": "MailAlias",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                     "generation": 1},
        "spec": {"address": address, "to": [to]},
    }))
    .expect("a MailAlias")
}
