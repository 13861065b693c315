use super::*;

fn time(s: &str) -> Time {
    Time(s.parse().expect("timestamp"))
}

fn empty_compile() -> Compiled {
    let server = MailServer::new("mail", Default::default());
    crate::fixtures::compiled_alone(&server)
}

fn observed<'a>(
    compiled: &'a Compiled,
    refused: &'a [String],
    ready: i32,
) -> ServerObservation<'a> {
    ServerObservation {
        compiled,
        directory: DirectoryStatus {
            version: "v1".into(),
            shards: 1,
            bytes: 10,
        },
        refused,
        wanted_replicas: 2,
        replicas: 2,
        ready_replicas: ready,
        selector: "app.kubernetes.io/name=virtmail".into(),
    }
}

fn condition<'a>(status: &'a MailServerStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// A new server's first status, generation 1, with `ready` of 2 pods ready.
fn first_status(compiled: &Compiled, ready: i32, now: &Time) -> MailServerStatus {
    let observed = observed(compiled, &[], ready);
    server_status(&MailServerStatus::default(), &observed, Some(1), now)
}

#[test]
fn available_follows_the_ready_pods_and_ready_the_reconcile() {
    let (t0, t1) = (time("2026-01-01T00:00:00Z"), time("2026-01-02T00:00:00Z"));
    let compiled = empty_compile();
    let starting = first_status(&compiled, 1, &t0);
    assert_eq!(condition(&starting, READY).status, "True");
    let available = condition(&starting, AVAILABLE);
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "PodsNotReady")
    );
    assert_eq!(available.message, "1 of 2 pods ready");
    assert_eq!(
        starting.selector.as_deref(),
        Some("app.kubernetes.io/name=virtmail")
    );
    let up = server_status(&starting, &observed(&compiled, &[], 2), Some(1), &t1);
    assert_eq!(condition(&up, AVAILABLE).status, "True");
    assert_eq!(condition(&up, AVAILABLE).last_transition_time, t1);
    assert_eq!(condition(&up, READY).last_transition_time, t0);
    assert!(server_status_differs(&starting, &up));
    assert!(!server_status_differs(
        &up,
        &server_status(&up, &observed(&compiled, &[], 2), Some(1), &t0)
    ));
    // A failure: Ready=False with the category, the rest kept.
    let failed = failed_server_status(&up, "ApiError", "kubernetes API: refused", Some(2), &t1);
    let ready = condition(&failed, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ApiError")
    );
    assert_eq!(condition(&failed, AVAILABLE), condition(&up, AVAILABLE));
    assert_eq!(failed.directory, up.directory);
    let refused = ["relayhost: refused".to_string()];
    let partly = server_status(&up, &observed(&compiled, &refused, 2), Some(1), &t1);
    assert_eq!(condition(&partly, READY).reason, "ParameterRefused");
}

#[test]
fn a_ceded_domain_shows_as_a_domain_conflict() {
    let t0 = time("2026-01-01T00:00:00Z");
    let mut compiled = empty_compile();
    let clean = first_status(&compiled, 2, &t0);
    assert_eq!(condition(&clean, DOMAIN_CONFLICT).status, "False");
    compiled.ceded.push(virtmail_crds::CededDomain {
        object: "shared".into(),
        domain: "shared.test".into(),
        served_by: "first".into(),
    });
    let ceded = server_status(&clean, &observed(&compiled, &[], 2), Some(1), &t0);
    let conflict = condition(&ceded, DOMAIN_CONFLICT);
    assert_eq!(conflict.status, "True");
    assert!(
        conflict.message.contains("shared.test (MailServer/first)"),
        "{}",
        conflict.message
    );
}

/// Server `mail` compiled with domain `example.test` and Mailbox `alice`, as a cache would hold
/// them.
fn compiled_with_alice() -> (Compiled, Mailbox, MailDomain) {
    use crate::fixtures;
    let server = fixtures::server("ns", "mail", 1);
    let (domain, mailbox) = (
        fixtures::domain("ns"),
        fixtures::mailbox("ns", "alice", 1, false),
    );
    let compiled = fixtures::compiled(
        &server,
        std::slice::from_ref(&domain),
        std::slice::from_ref(&mailbox),
    );
    (compiled, mailbox, domain)
}

/// The member `name` of the compiled directory.
fn member<'a>(compiled: &'a Compiled, name: &str) -> &'a ObjectRef {
    let found = compiled.members.iter().find(|m| m.name == name);
    found.expect("a member of the directory")
}

#[test]
fn a_new_mailbox_gets_ready_and_its_values_without_an_event_and_then_nothing() {
    let (compiled, mut mailbox, _) = compiled_with_alice();
    let statuses = MemberStatuses::new(&compiled, "mail", time("2026-01-01T00:00:00Z"));
    let alice = member(&compiled, "alice");
    let patch = statuses.mailbox(alice, &mailbox).expect("a first patch");
    assert_eq!(patch.status["conditions"][0]["type"], READY);
    assert_eq!(patch.status["conditions"][0]["status"], "True");
    assert_eq!(patch.status["conditions"][0]["reason"], PUBLISHED);
    assert_eq!(patch.status["observedGeneration"], 1);
    assert_eq!(patch.status["uid"], 5000);
    assert_eq!(patch.status["format"], "Mbox");
    assert!(patch.status["path"].is_string(), "{}", patch.status);
    assert_eq!(patch.event, None, "becoming Ready as expected is no Event");
    // Once the object shows that status, there is nothing to patch.
    mailbox.status = Some(serde_json::from_value(patch.status).expect("a MailboxStatus"));
    let later = MemberStatuses::new(&compiled, "mail", time("2026-01-02T00:00:00Z"));
    assert!(later.mailbox(alice, &mailbox).is_none());
}

#[test]
fn a_domain_counts_its_mailboxes_and_a_problem_is_a_warning() {
    let (compiled, _, domain) = compiled_with_alice();
    let statuses = MemberStatuses::new(&compiled, "mail", time("2026-01-01T00:00:00Z"));
    let patch = statuses
        .domain(member(&compiled, "example"), &domain)
        .expect("a patch");
    assert_eq!(patch.status["mailboxes"], 1);
    assert_eq!(patch.status["servers"], json!(["mail"]));
    // A Mailbox of a domain nobody serves: Ready=False and a Warning.
    let server = crate::fixtures::server("ns", "mail", 1);
    let stray = crate::fixtures::mailbox("ns", "alice", 1, true);
    let compiled = crate::fixtures::compiled(&server, &[], std::slice::from_ref(&stray));
    let statuses = MemberStatuses::new(&compiled, "mail", time("2026-01-01T00:00:00Z"));
    let patch = statuses
        .mailbox(member(&compiled, "alice"), &stray)
        .expect("Ready flips");
    assert_eq!(patch.status["conditions"][0]["status"], "False");
    let event = patch.event.expect("a problem is an Event");
    assert_eq!(event.type_, EventType::Warning);
    assert_eq!(event.action, "Compile");
}

#[test]
fn server_events_follow_a_new_version_and_a_new_conflict() {
    let t0 = time("2026-01-01T00:00:00Z");
    let mut compiled = empty_compile();
    let encoded = virtmail_crds::encoding::encode(&compiled.directory);
    let first = first_status(&compiled, 2, &t0);
    let reasons = |previous: &MailServerStatus, new: &MailServerStatus| -> Vec<String> {
        server_events(previous, new, &encoded)
            .into_iter()
            .map(|e| e.reason)
            .collect()
    };
    assert_eq!(
        reasons(&MailServerStatus::default(), &first),
        ["DirectoryPublished"]
    );
    assert!(reasons(&first, &first).is_empty());
    compiled.ceded.push(virtmail_crds::CededDomain {
        object: "shared".into(),
        domain: "shared.test".into(),
        served_by: "first".into(),
    });
    let ceded = server_status(&first, &observed(&compiled, &[], 2), Some(1), &t0);
    assert_eq!(reasons(&first, &ceded), ["DomainConflict"]);
    assert!(reasons(&ceded, &ceded).is_empty());
}
