use super::*;

fn time(s: &str) -> Time {
    Time(s.parse().expect("timestamp"))
}

fn wanted(status: bool, reason: &str) -> Wanted {
    Wanted {
        type_: READY,
        status,
        reason: reason.into(),
        message: "m".into(),
    }
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

#[test]
fn last_transition_time_moves_only_on_status_change() {
    let t0 = time("2026-01-01T00:00:00Z");
    let t1 = time("2026-01-02T00:00:00Z");
    let first = merge(&[], &[wanted(false, "InvalidOwner")], Some(1), &t0);
    assert_eq!(first[0].last_transition_time, t0);
    // Same status, new reason and generation: time kept.
    let second = merge(&first, &[wanted(false, "InvalidPath")], Some(2), &t1);
    assert_eq!(second[0].last_transition_time, t0);
    assert_eq!(second[0].reason, "InvalidPath");
    assert!(differs(&first, &second));
    // Status flips: time moves.
    let third = merge(&second, &[wanted(true, "Published")], Some(3), &t1);
    assert_eq!(third[0].last_transition_time, t1);
    assert!(!differs(
        &third,
        &merge(&third, &[wanted(true, "Published")], Some(3), &t0)
    ));
}
