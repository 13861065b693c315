//! The virtmail manifests the suites write: one builder per kind, so that a suite states only
//! the fields it is about, and the sets several suites share.
//!
//! Specs are YAML flow-mapping bodies (`"address: bob@example.test, format: Mbox"`); a spec that
//! needs block style (a multi-line autoreply body) goes through [`resource`] with `{…}` left out.

/// One manifest of `kind` named `name` with `spec` (a flow mapping, or block lines indented by
/// two spaces after a newline).
pub fn resource(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: virtmail.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// A MailServer.
pub fn mail_server(name: &str, spec: &str) -> String {
    resource("MailServer", name, &format!("{{{spec}}}"))
}

/// A MailDomain for `domain` whose mailboxes default to uid = gid = `uid`; `spec` adds fields
/// (`catchAll: info`) or is empty.
pub fn mail_domain(name: &str, domain: &str, postmaster: &str, uid: u32, spec: &str) -> String {
    let extra = if spec.is_empty() {
        String::new()
    } else {
        format!(", {spec}")
    };
    resource(
        "MailDomain",
        name,
        &format!(
            "{{domain: {domain}, postmaster: {postmaster}, defaults: {{uid: {uid}, gid: {uid}}}{extra}}}"
        ),
    )
}

/// A Mailbox.
pub fn mailbox(name: &str, spec: &str) -> String {
    resource("Mailbox", name, &format!("{{{spec}}}"))
}

/// A MailAlias.
pub fn mail_alias(name: &str, spec: &str) -> String {
    resource("MailAlias", name, &format!("{{{spec}}}"))
}

/// Manifests as one multi-document YAML stream.
pub fn stream<S: AsRef<str>>(manifests: impl IntoIterator<Item = S>) -> String {
    manifests
        .into_iter()
        .map(|m| m.as_ref().to_string())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// MailServer `mail` with `server_spec`; domain `example.test` (uid/gid 5000) with Maildir
/// `alice@example.test` and mbox `bob@example.test`, the mail stack suites' usual pair.
pub fn alice_and_bob(server_spec: &str) -> Vec<String> {
    vec![
        mail_server("mail", server_spec),
        mail_domain("example", "example.test", "alice@example.test", 5000, ""),
        mailbox("alice", "address: alice@example.test, format: Maildir"),
        mailbox("bob", "address: bob@example.test, format: Mbox"),
    ]
}

/// A domain with a catch-all, a plain mailbox, an mbox one, a suspended one, an alias, and a
/// deferring mailbox (invalid owner: uid below minimumUid), for the agent's `serve` tests.
pub fn agent_directory() -> String {
    stream([
        mail_server("mail", ""),
        mail_domain("example", "Example.TEST", "alice@example.test", 5000, ""),
        mail_domain(
            "catchall",
            "catchall.test",
            "info@catchall.test",
            5000,
            "catchAll: info",
        ),
        mailbox("info", "address: info@catchall.test"),
        mailbox("alice", "address: Alice@Example.Test"),
        mailbox("bob", "address: bob@example.test, format: Mbox, uid: 5001"),
        mailbox("frozen", "address: frozen@example.test, suspended: true"),
        mailbox("broken", "address: broken@example.test, uid: 0"),
        mail_alias(
            "team",
            "address: team@example.test, to: [alice@example.test, bob@example.test]",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_write_the_manifests_by_hand() {
        assert_eq!(
            stream([
                mail_server("mail", ""),
                mail_domain("d", "d.test", "a@d.test", 5000, "catchAll: a"),
                mailbox("a", "address: a@d.test"),
            ]),
            "apiVersion: virtmail.io/v1alpha1\nkind: MailServer\nmetadata: {name: mail}\nspec: {}\n---\n\
             apiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: d}\n\
             spec: {domain: d.test, postmaster: a@d.test, defaults: {uid: 5000, gid: 5000}, catchAll: a}\n---\n\
             apiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: a}\nspec: {address: a@d.test}\n"
        );
    }
}
