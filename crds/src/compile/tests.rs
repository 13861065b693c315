//! One fixture per compiler rule (`crds/fixtures/*.yaml`).

use std::path::Path;

use super::*;
use crate::manifests::{Resources, load_dir};

fn fixture(name: &str) -> Resources {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    load_dir(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn compile_fixture(name: &str, server: Option<&str>) -> Compiled {
    let resources = fixture(name);
    let server = resources.server(server).expect("server");
    compile(resources.inputs(&server))
}

/// `(kind/name, reason, effect)` of every diagnostic, sorted.
fn reasons(compiled: &Compiled) -> Vec<(String, Reason, Effect)> {
    let mut all: Vec<_> = compiled
        .diagnostics
        .iter()
        .map(|d| (d.object.to_string(), d.reason, d.effect))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn defaults_and_case_folding() {
    let c = compile_fixture("valid-defaults.yaml", None);
    assert_eq!(reasons(&c), vec![]);
    let d = &c.directory;
    assert_eq!(d.settings.server, "mail");
    assert_eq!(d.settings.mailbox_base, "/var/mail/vhosts");
    assert_eq!(d.settings.minimum_uid, 100);
    assert!(d.domains.contains_key("example.test"));
    let alice = &d.mailboxes["alice@example.test"];
    assert_eq!(alice.path, "example.test/alice/");
    assert_eq!(alice.format, MailboxFormat::Maildir);
    assert_eq!((alice.uid, alice.gid), (5000, 5000));
    assert_eq!(alice.quota, Some(1 << 30));
    let bob = &d.mailboxes["bob@example.test"];
    assert_eq!(bob.path, "example.test/bob");
    assert_eq!(bob.format, MailboxFormat::Mbox);
    assert_eq!((bob.uid, bob.gid, bob.quota), (5001, 5000, Some(10 << 20)));
    let carol = &d.mailboxes["carol@example.test"];
    assert_eq!(
        (carol.path.as_str(), carol.format),
        ("custom/carol", MailboxFormat::Mbox)
    );
    assert!(d.mailboxes["admin@example.test"].suspended);
    // postmaster@ implied as an alias to the domain's postmaster.
    assert_eq!(
        d.aliases["postmaster@example.test"].to,
        vec!["admin@example.test".to_string()]
    );
    assert_eq!(c.members.len(), 5);
}

#[test]
fn address_conflict_older_wins() {
    let c = compile_fixture("address-conflict.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![
            (
                "MailAlias/sales-again".into(),
                Reason::AddressConflict,
                Effect::Excluded
            ),
            (
                "Mailbox/alice-again".into(),
                Reason::AddressConflict,
                Effect::Excluded
            ),
        ]
    );
    assert_eq!(c.directory.mailboxes["alice@example.test"].object, "alice");
    assert_eq!(
        c.directory.mailboxes["alice@example.test"].path,
        "example.test/alice/"
    );
    assert_eq!(
        c.directory.aliases["sales@example.test"].object.as_deref(),
        Some("sales")
    );
}

#[test]
fn path_conflict_defers_the_newer() {
    let c = compile_fixture("path-conflict.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![
            (
                "Mailbox/bob".into(),
                Reason::PathConflict,
                Effect::Deferring
            ),
            (
                "Mailbox/carol".into(),
                Reason::PathConflict,
                Effect::Deferring
            ),
            (
                "Mailbox/dave".into(),
                Reason::PathConflict,
                Effect::Deferring
            ),
        ]
    );
    assert!(c.directory.mailboxes["alice@example.test"].defer.is_none());
    let bob = &c.directory.mailboxes["bob@example.test"];
    assert_eq!(
        bob.defer.as_ref().map(|d| d.reason),
        Some(Reason::PathConflict)
    );
    assert!(
        c.diagnostic(&ObjectRef {
            kind: Kind::Mailbox,
            name: "bob".into()
        })
        .is_some_and(|d| d.message.contains("Mailbox/alice"))
    );
}

#[test]
fn invalid_paths_defer() {
    let c = compile_fixture("invalid-path.yaml", None);
    let expected: Vec<_> = ["absolute", "dot", "dotdot", "empty-component", "mismatch"]
        .iter()
        .map(|n| {
            (
                format!("Mailbox/{n}"),
                Reason::InvalidPath,
                Effect::Deferring,
            )
        })
        .collect();
    assert_eq!(reasons(&c), expected);
    for key in ["absolute", "dotdot", "dot", "empty", "mismatch"] {
        let entry = &c.directory.mailboxes[&format!("{key}@example.test")];
        assert_eq!(
            entry.defer.as_ref().map(|d| d.reason),
            Some(Reason::InvalidPath),
            "{key}"
        );
    }
    assert!(c.directory.mailboxes["ok@example.test"].defer.is_none());
}

#[test]
fn check_path_rules() {
    use MailboxFormat::*;
    assert_eq!(check_path("d/u/", Maildir), None);
    assert_eq!(check_path("d/u", Mbox), None);
    assert!(check_path("d/u", Maildir).is_some());
    assert!(check_path("/abs", Mbox).is_some());
    assert!(check_path("a/../b", Mbox).is_some());
    assert!(
        check_path("a/..", Mbox).is_some(),
        "the trailing /.. hole of V14 is closed"
    );
    assert!(check_path("..", Mbox).is_some());
    assert!(check_path("a/./b", Mbox).is_some());
    assert!(check_path("a\0b", Mbox).is_some());
    assert!(check_path("", Mbox).is_some());
    assert!(check_path("a//b/", Maildir).is_some());
}

#[test]
fn v9_v10_invalid_owner_defers() {
    let c = compile_fixture("invalid-owner.yaml", None);
    let expected: Vec<_> = ["low", "nobody", "root", "wheel"]
        .iter()
        .map(|n| {
            (
                format!("Mailbox/{n}"),
                Reason::InvalidOwner,
                Effect::Deferring,
            )
        })
        .collect();
    assert_eq!(reasons(&c), expected);
    let low = &c.directory.mailboxes["low@example.test"];
    assert!(
        low.defer
            .as_ref()
            .is_some_and(|d| d.message.contains("minimumUid 1000"))
    );
    assert!(c.directory.mailboxes["ok@example.test"].defer.is_none());
}

#[test]
fn unknown_domain_is_excluded() {
    let c = compile_fixture("unknown-domain.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![
            (
                "MailAlias/stray-alias".into(),
                Reason::UnknownDomain,
                Effect::Excluded
            ),
            (
                "Mailbox/stray".into(),
                Reason::UnknownDomain,
                Effect::Excluded
            ),
        ]
    );
    assert!(!c.directory.mailboxes.contains_key("stray@nowhere.test"));
    assert!(!c.directory.aliases.contains_key("@nowhere.test"));
}

#[test]
fn alias_loop_defers_cycle_members_only() {
    let c = compile_fixture("alias-loop.yaml", None);
    let expected: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            (
                format!("MailAlias/{n}"),
                Reason::AliasLoop,
                Effect::Deferring,
            )
        })
        .collect();
    assert_eq!(reasons(&c), expected);
    assert!(c.directory.aliases["d@example.test"].defer.is_none());
    assert!(c.directory.aliases["a@example.test"].defer.is_some());
}

#[test]
fn cyclic_nodes_finds_only_cycles() {
    // 0 -> 1 -> 2 -> 0, 3 -> 0 (leads into the cycle), 4 alone.
    let edges = vec![vec![1], vec![2], vec![0], vec![0], vec![]];
    assert_eq!(cyclic_nodes(&edges), vec![true, true, true, false, false]);
    // A long chain does not overflow the stack.
    let n = 200_000;
    let chain: Vec<Vec<usize>> = (0..n)
        .map(|i| if i + 1 < n { vec![i + 1] } else { vec![0] })
        .collect();
    assert!(cyclic_nodes(&chain).iter().all(|c| *c));
}

#[test]
fn postmaster_is_implied_unless_defined() {
    let c = compile_fixture("postmaster.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![(
            "MailDomain/three".into(),
            Reason::InvalidPostmaster,
            Effect::Degraded
        )]
    );
    let aliases = &c.directory.aliases;
    assert_eq!(
        aliases["postmaster@one.test"].to,
        vec!["hostmaster@elsewhere.test".to_string()]
    );
    assert_eq!(aliases["postmaster@one.test"].object, None);
    assert!(
        !aliases.contains_key("postmaster@two.test"),
        "a Mailbox defines it"
    );
    assert!(c.directory.mailboxes.contains_key("postmaster@two.test"));
    assert!(!aliases.contains_key("postmaster@three.test"));
}

#[test]
fn catch_all_names_a_mailbox() {
    let c = compile_fixture("catch-all.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![(
            "MailDomain/broken".into(),
            Reason::UnknownCatchAll,
            Effect::Degraded
        )]
    );
    assert_eq!(
        c.directory.domains["example.test"].catch_all.as_deref(),
        Some("info@example.test")
    );
    assert_eq!(
        c.directory
            .find_mailbox("whoever@example.test")
            .map(|f| f.key),
        Some("info@example.test")
    );
    assert!(c.directory.domains.contains_key("broken.test"));
}

#[test]
fn domain_selector_splits_servers() {
    let gold = compile_fixture("domain-selector.yaml", Some("gold"));
    let rest = compile_fixture("domain-selector.yaml", Some("rest"));
    assert_eq!(reasons(&gold), vec![]);
    assert_eq!(reasons(&rest), vec![]);
    assert_eq!(
        gold.directory.domains.keys().collect::<Vec<_>>(),
        vec!["gold.test"]
    );
    assert_eq!(
        rest.directory.domains.keys().collect::<Vec<_>>(),
        vec!["plain.test"]
    );
    assert!(gold.directory.mailboxes.contains_key("a@gold.test"));
    assert!(!gold.directory.mailboxes.contains_key("a@plain.test"));
    assert_eq!(gold.members.len(), 2);
}

#[test]
fn compile_is_deterministic_and_order_independent_for_valid_input() {
    let resources = fixture("valid-defaults.yaml");
    let server = resources.server(None).expect("server");
    let first = compile(resources.inputs(&server));
    let mut reversed = resources.clone();
    reversed.mailboxes.reverse();
    let second = compile(reversed.inputs(&server));
    assert_eq!(first.directory, second.directory);
    assert_eq!(
        crate::encoding::version(&first.directory),
        crate::encoding::version(&second.directory)
    );
}

#[test]
fn creation_timestamp_decides_age_over_input_order() {
    let mut resources = fixture("address-conflict.yaml");
    // Make "alice-again" older than "alice" although it comes later in the file.
    let ts = |s: &str| {
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            s.parse().expect("time"),
        ))
    };
    resources.mailboxes[0].metadata.creation_timestamp = ts("2026-01-02T00:00:00Z");
    resources.mailboxes[1].metadata.creation_timestamp = ts("2026-01-01T00:00:00Z");
    let server = resources.server(None).expect("server");
    let c = compile(resources.inputs(&server));
    assert_eq!(
        c.directory.mailboxes["alice@example.test"].object,
        "alice-again"
    );
}

#[test]
fn same_second_creation_is_decided_by_name_whatever_the_cache_order() {
    let mut resources = fixture("address-conflict.yaml");
    let second = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().expect("time"),
    ));
    for m in &mut resources.mailboxes {
        m.metadata.creation_timestamp = second.clone();
    }
    let server = resources.server(None).expect("server");
    let forward = compile(resources.inputs(&server));
    resources.mailboxes.reverse();
    let backward = compile(resources.inputs(&server));
    assert_eq!(
        forward.directory.mailboxes["alice@example.test"].object,
        "alice"
    );
    assert_eq!(
        backward.directory.mailboxes["alice@example.test"].object,
        "alice"
    );
    assert_eq!(forward.directory, backward.directory);
}

#[test]
fn names_the_agent_derives_from_an_mbox_path_are_reserved() {
    let c = compile_fixture("reserved-names.yaml", None);
    let conflict = |name: &str| {
        (
            "Mailbox/".to_string() + name,
            Reason::PathConflict,
            Effect::Deferring,
        )
    };
    assert_eq!(
        reasons(&c),
        vec![
            conflict("bob-journal"),
            conflict("bob-lock"),
            conflict("bob-lock-maildir"),
            conflict("carol"),
            conflict("inside-lock"),
        ],
        "a Maildir derives no name beside itself: dave.lock is free"
    );
    assert!(
        c.diagnostic(&ObjectRef {
            kind: Kind::Mailbox,
            name: "bob-lock".into()
        })
        .is_some_and(|d| d.message.contains("Mailbox/bob")),
        "the diagnostic names the mailbox whose name is taken"
    );
    assert!(c.directory.mailboxes["bob@example.test"].defer.is_none());
    assert!(c.directory.mailboxes["squat@example.test"].defer.is_none());
}

#[test]
fn maildomain_owner_ranges_bound_the_uids_and_gids_of_its_mailboxes() {
    let c = compile_fixture("domain-owner-range.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![
            (
                "Mailbox/root-ish".into(),
                Reason::InvalidOwner,
                Effect::Deferring
            ),
            (
                "Mailbox/wheel".into(),
                Reason::InvalidOwner,
                Effect::Deferring
            ),
        ]
    );
    assert!(
        c.diagnostic(&ObjectRef {
            kind: Kind::Mailbox,
            name: "root-ish".into()
        })
        .is_some_and(|d| d.message.contains("uidRange 5000-5099")),
        "{:?}",
        c.diagnostics
    );
    assert!(c.directory.mailboxes["bob@example.test"].defer.is_none());
}

#[test]
fn pattern_aliases_conflicts_bad_patterns_and_loops() {
    let c = compile_fixture("alias-patterns.yaml", None);
    assert_eq!(
        reasons(&c),
        vec![
            (
                "MailAlias/broken".into(),
                Reason::InvalidPattern,
                Effect::Excluded
            ),
            (
                "MailAlias/echo".into(),
                Reason::AliasLoop,
                Effect::Deferring
            ),
            (
                "MailAlias/echo-back".into(),
                Reason::AliasLoop,
                Effect::Deferring
            ),
            (
                "MailAlias/not-at-domain".into(),
                Reason::InvalidPattern,
                Effect::Excluded
            ),
            (
                "MailAlias/sales-again".into(),
                Reason::AddressConflict,
                Effect::Excluded
            ),
        ]
    );
    let broken = c
        .diagnostics
        .iter()
        .find(|d| d.object.name == "broken")
        .expect("broken");
    assert!(
        broken.message.contains("invalid regular expression"),
        "{}",
        broken.message
    );
    let d = &c.directory;
    // Exact addresses first, then the pattern, then the catch-all mailbox.
    let alias = |rcpt: &str| d.find_alias(rcpt).map(|f| f.entry.to.clone());
    assert_eq!(
        alias("sales-eu@example.test"),
        Some(vec!["sales-team@example.test".to_string()])
    );
    assert_eq!(alias("sales-team@example.test"), None);
    assert_eq!(alias("nobody@example.test"), None);
    assert_eq!(
        d.find_mailbox("nobody@example.test").map(|f| f.key),
        Some("alice@example.test")
    );

    // A bounded number of patterns per domain.
    let mut resources = fixture("alias-patterns.yaml");
    let limit = crate::directory::pattern::MAX_PATTERNS_PER_DOMAIN;
    for i in 0..=limit {
        let mut alias = resources.aliases[0].clone();
        alias.metadata.name = Some(format!("many-{i:04}"));
        alias.spec.pattern = Some(format!("many-{i}"));
        resources.aliases.push(alias);
    }
    let server = resources.server(None).expect("server");
    let c = compile(resources.inputs(&server));
    let over: Vec<_> = c
        .diagnostics
        .iter()
        .filter(|d| d.object.name.starts_with("many-"))
        .collect();
    // The fixture's three usable patterns and 257 more: 256 fit, the 4 newest do not.
    assert_eq!(over.len(), 4, "{over:?}");
    assert!(over.iter().all(|d| d.reason == Reason::InvalidPattern));
}

#[test]
fn autoreply_needs_an_outbound_path_and_valid_settings() {
    let closed = compile_fixture("autoreply.yaml", Some("closed"));
    assert_eq!(
        reasons(&closed),
        vec![(
            "Mailbox/away-closed".into(),
            Reason::AutoreplyRefused,
            Effect::Degraded
        )]
    );
    assert!(
        closed.diagnostics[0]
            .message
            .contains("spec.outbound.relayHost")
    );
    let away = &closed.directory.mailboxes["away@closed.test"];
    assert_eq!((away.autoreply.as_ref(), away.defer.as_ref()), (None, None));

    let open = compile_fixture("autoreply.yaml", Some("open"));
    assert_eq!(
        reasons(&open),
        vec![(
            "Mailbox/bad-interval".into(),
            Reason::AutoreplyRefused,
            Effect::Degraded
        )]
    );
    let autoreply = open.directory.mailboxes["away@open.test"]
        .autoreply
        .clone()
        .expect("served");
    assert_eq!(autoreply.subject.as_deref(), Some("Away"));
    assert_eq!(autoreply.interval_seconds, 12 * 3600);
    assert_eq!(autoreply.start, Some(1_764_547_200 + 365 * 86_400));
    assert!(autoreply.end > autoreply.start);
    assert_eq!(parse_interval("7d"), Some(7 * 86_400));
    assert_eq!(parse_interval("0h"), None);
    assert_eq!(parse_interval("3m"), None);
    for good in [
        "relay.test",
        "relay.test:25",
        "[relay.test]",
        "[127.0.0.1]:2525",
    ] {
        assert!(crate::resources::valid_relay_host(good), "{good}");
    }
    for bad in [
        "",
        "relay.test\nmynetworks = 0/0",
        "relay test",
        "[relay.test",
        "-x:25",
    ] {
        assert!(!crate::resources::valid_relay_host(bad), "{bad:?}");
    }
}

#[test]
fn a_domain_two_servers_select_is_served_by_the_older_only() {
    let first = compile_fixture("server-conflict.yaml", Some("first"));
    let second = compile_fixture("server-conflict.yaml", Some("second"));
    assert_eq!(
        first.directory.domains.keys().collect::<Vec<_>>(),
        vec!["shared.test"]
    );
    assert!(first.directory.mailboxes.contains_key("a@shared.test"));
    assert_eq!(
        reasons(&first),
        vec![(
            "MailDomain/shared".to_string(),
            Reason::DomainConflict,
            Effect::Degraded
        )]
    );
    assert!(
        first.diagnostics[0].message.contains("MailServer/second"),
        "{}",
        first.diagnostics[0].message
    );
    // The younger server cedes the shared domain silently (its mailboxes are not its members)
    // and still serves the domain only it selects.
    assert_eq!(
        second.directory.domains.keys().collect::<Vec<_>>(),
        vec!["own.test"]
    );
    assert!(!second.directory.mailboxes.contains_key("a@shared.test"));
    assert_eq!(reasons(&second), vec![]);
    assert_eq!(
        second.ceded,
        vec![CededDomain {
            object: "shared".into(),
            domain: "shared.test".into(),
            served_by: "first".into(),
        }]
    );
    assert!(second.members.iter().all(|m| m.name != "shared-a"));
}

#[test]
fn domain_selectors_match_as_the_apiserver_does() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let requirement = |operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: "region".into(),
        operator: operator.into(),
        values,
    };
    // A server with this domainSelector, parsed as the compiler parses it.
    let select = |selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>| {
        let mut server = MailServer::new("mail", Default::default());
        server.spec.domain_selector = selector.cloned();
        selects(&domain_selector(&server), labels)
    };
    assert!(select(None, &labels(&[])));
    assert!(select(
        Some(&LabelSelector::default()),
        &labels(&[("a", "b")])
    ));
    let gold_in_eu_or_us = LabelSelector {
        match_labels: Some(labels(&[("tier", "gold")])),
        match_expressions: Some(vec![requirement(
            "In",
            Some(vec!["eu".into(), "us".into()]),
        )]),
    };
    assert!(select(
        Some(&gold_in_eu_or_us),
        &labels(&[("tier", "gold"), ("region", "eu")])
    ));
    assert!(!select(
        Some(&gold_in_eu_or_us),
        &labels(&[("tier", "gold"), ("region", "ap")])
    ));
    assert!(!select(
        Some(&gold_in_eu_or_us),
        &labels(&[("region", "eu")])
    ));
    for (operator, values, region, expected) in [
        ("NotIn", Some(vec!["eu".to_string()]), None, true),
        ("NotIn", Some(vec!["eu".to_string()]), Some("eu"), false),
        ("Exists", None, Some("ap"), true),
        ("DoesNotExist", None, Some("ap"), false),
        // What kube cannot parse selects nothing: a typo never widens a selection.
        ("Bogus", None, Some("eu"), false),
        ("In", None, Some("eu"), false),
    ] {
        let selector = LabelSelector {
            match_expressions: Some(vec![requirement(operator, values)]),
            ..Default::default()
        };
        let labels = labels(&region.map(|r| vec![("region", r)]).unwrap_or_default());
        assert_eq!(
            select(Some(&selector), &labels),
            expected,
            "{operator} {region:?}"
        );
    }
}
