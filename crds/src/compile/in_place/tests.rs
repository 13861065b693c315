use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::compile;
use crate::directory::Table;
use crate::manifests::Resources;
use crate::resources::{AutoreplySpec, MailAlias, MailboxFormat};
use crate::test_rng::Rng;

const HEADER: &str = "apiVersion: virtmail.io/v1alpha1\n";

/// A server's namespace. With `conflicts`, what makes compiles interesting: an address two
/// Mailboxes claim, paths that overlap, owners below the minimum. Either way a domain with a uid
/// range, a catch-all, autoreplies, an alias pointing at a mailbox, and a domain the server does
/// not select (another server's).
fn resources(outbound: bool, conflicts: bool) -> Resources {
    let mut y = format!(
        "{HEADER}kind: MailServer\nmetadata: {{name: mail}}\nspec: {{minimumUid: 100, domainSelector: {{matchExpressions: [{{key: tier, operator: NotIn, values: [other]}}]}}{}}}\n",
        if outbound {
            ", outbound: {relayHost: \"[smtp.example.test]:587\"}"
        } else {
            ""
        }
    );
    for (d, extra) in [
        (0, ""),
        (1, ", uidRange: {min: 5000, max: 5099}"),
        (2, ", catchAll: user2@domain2.test"),
        (3, ""),
    ] {
        let labels = if d == 3 {
            ", labels: {tier: other}"
        } else {
            ""
        };
        y.push_str(&format!(
            "---\n{HEADER}kind: MailDomain\nmetadata: {{name: d{d}{labels}}}\nspec: {{domain: domain{d}.test, postmaster: user{d}@domain{d}.test, defaults: {{uid: 5000, gid: 5000}}{extra}}}\n"
        ));
    }
    for i in 0..60 {
        let mut spec = if conflicts {
            format!("address: user{}@domain{}.test", i % 50, i % 3)
        } else {
            format!("address: user{i}@domain{}.test", i % 3)
        };
        if conflicts && i % 3 == 0 {
            spec.push_str(&format!(", path: shared/p{}", i % 5));
        }
        if conflicts && i % 11 == 0 {
            spec.push_str(", uid: 50");
        }
        y.push_str(&format!(
            "---\n{HEADER}kind: Mailbox\nmetadata: {{name: m{i}}}\nspec: {{{spec}}}\n"
        ));
    }
    y.push_str(&format!(
        "---\n{HEADER}kind: MailAlias\nmetadata: {{name: sales}}\nspec: {{address: sales@domain0.test, to: [user3@domain0.test]}}\n"
    ));
    // A chain of forwards, which new aliases may extend or close into a loop.
    for i in 0..6 {
        let to = if i < 5 {
            format!("fwd{}@domain{}.test", i + 1, (i + 1) % 3)
        } else {
            "user5@domain2.test".to_string()
        };
        y.push_str(&format!(
            "---\n{HEADER}kind: MailAlias\nmetadata: {{name: fwd{i}}}\nspec: {{address: fwd{i}@domain{}.test, to: [{to}]}}\n",
            i % 3
        ));
    }
    // A pattern that would expand into itself but for the exact alias and the mailbox holding
    // its targets.
    y.push_str(&format!(
        "---\n{HEADER}kind: MailAlias\nmetadata: {{name: pattern1}}\nspec: {{address: \"@domain1.test\", pattern: \"fwd-[a-z]+\", to: [fwd-x@domain1.test, fwd-y@domain1.test]}}\n"
    ));
    y.push_str(&format!(
        "---\n{HEADER}kind: Mailbox\nmetadata: {{name: fwdy}}\nspec: {{address: fwd-y@domain1.test}}\n"
    ));
    y.push_str(&format!(
        "---\n{HEADER}kind: MailAlias\nmetadata: {{name: exact1}}\nspec: {{address: fwd-x@domain1.test, to: [user1@domain1.test]}}\n"
    ));
    let mut resources = Resources::default();
    resources.add_yaml(Path::new("namespace.yaml"), &y).unwrap();
    resources
}

/// A new Mailbox: mostly a fresh address of a served domain; sometimes a taken one, another
/// server's domain, an unknown domain, a postmaster, a catch-all or a shared path.
fn new_mailbox(name: String, rng: &mut Rng) -> Mailbox {
    let local = match rng.below(12) {
        0 => "postmaster".to_string(),
        1 => "user2".to_string(),
        2 => "fwd-y".to_string(),
        n => format!("user{}", 40 + n * 10 + rng.below(10)),
    };
    let mut spec = format!("address: {local}@domain{}.test", rng.below(5));
    if rng.below(8) == 0 {
        spec.push_str(&format!(", path: shared/p{}", rng.below(8)));
    }
    let y = format!("{HEADER}kind: Mailbox\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n");
    let mut resources = Resources::default();
    resources.add_yaml(Path::new("new.yaml"), &y).unwrap();
    resources.mailboxes.pop().unwrap()
}

/// One random spec edit of a random Mailbox; most keep the address, as self-service edits do.
fn edit(mailbox: &mut Mailbox, rng: &mut Rng) {
    let spec = &mut mailbox.spec;
    match rng.below(9) {
        0 => {
            spec.quota = Some(Quantity(
                ["1Gi", "5Mi", "100", "lots"][rng.below(4)].to_string(),
            ))
        }
        1 => spec.uid = [None, Some(5000), Some(5050), Some(5200), Some(50)][rng.below(5)],
        2 => spec.suspended = !spec.suspended,
        3 => {
            spec.autoreply = match rng.below(3) {
                0 => None,
                1 => Some(AutoreplySpec {
                    subject: Some("Away".into()),
                    body: format!("back on day {}", rng.below(30)),
                    start: None,
                    end: None,
                    interval: None,
                }),
                _ => Some(AutoreplySpec {
                    subject: None,
                    body: " ".into(),
                    start: None,
                    end: None,
                    interval: Some("1h".into()),
                }),
            }
        }
        4 => spec.path = [None, Some(format!("shared/p{}", rng.below(8)))][rng.below(2)].clone(),
        5 => {
            spec.format = [
                None,
                Some(MailboxFormat::Mbox),
                Some(MailboxFormat::Maildir),
            ][rng.below(3)]
        }
        6 => spec.gid = [None, Some(5000), Some(0)][rng.below(3)],
        7 => spec.address = format!("user{}@domain{}.test", rng.below(55), rng.below(3)),
        _ => spec.quota = None,
    }
}

/// A MailAlias's spec: mostly a forward of `fwd<k>@domain<k % 3>` (the fixture's chain and a
/// few more) to mailboxes and other forwards, so that chains grow and loops close; sometimes a
/// taken address, a postmaster, an `@domain` alias, another server's domain, an address a
/// pattern would expand, a pattern, or targets that are empty, invalid or itself.
fn alias_spec(rng: &mut Rng, loopy: bool) -> String {
    let d = rng.below(3);
    let forwards = if loopy { 10 } else { 40 };
    let forward = |rng: &mut Rng| {
        let k = rng.below(forwards);
        format!("fwd{k}@domain{}.test", k % 3)
    };
    let address = match rng.below(16) {
        0 => format!("postmaster@domain{d}.test"),
        1 => format!("@domain{d}.test"),
        2 => "sales@domain0.test".to_string(),
        3 => "not an address".to_string(),
        4 => format!("fwd{}@domain4.test", rng.below(5)),
        5 => format!("fwd-x@domain{d}.test"),
        _ => forward(rng),
    };
    let target = |rng: &mut Rng| match rng.below(6) {
        0..=2 if loopy => forward(rng),
        0 => forward(rng),
        3 => format!("fwd-x@domain{}.test", rng.below(3)),
        _ => format!("user{}@domain{}.test", rng.below(60), rng.below(3)),
    };
    let to = match rng.below(16) {
        0 => "[]".to_string(),
        1 => "[\"not an address\"]".to_string(),
        2 => format!("[\"{address}\", {}]", target(rng)),
        _ => format!("[{}, {}]", target(rng), target(rng)),
    };
    if rng.below(16) == 0 {
        // Half of them expand into themselves unless an exact alias holds the target.
        let to = match rng.below(2) {
            0 => format!("[fwd-x@domain{d}.test]"),
            _ => to,
        };
        format!("address: \"@domain{d}.test\", pattern: \"fwd-[a-z]+\", to: {to}")
    } else {
        format!("address: \"{address}\", to: {to}")
    }
}

fn new_alias(name: &str, rng: &mut Rng, loopy: bool) -> MailAlias {
    let y = format!(
        "{HEADER}kind: MailAlias\nmetadata: {{name: {name}}}\nspec: {{{}}}\n",
        alias_spec(rng, loopy)
    );
    let mut resources = Resources::default();
    resources.add_yaml(Path::new("new.yaml"), &y).unwrap();
    resources.aliases.pop().unwrap()
}

/// The keys whose entries differ between two tables.
fn differing<T: PartialEq>(a: &Table<T>, b: &Table<T>) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// What one step did to the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Edited,
    Created,
    Deleted,
}

#[test]
fn in_place_mailbox_and_alias_changes_equal_a_full_compile_after_every_step() {
    // (kind, step, applied in place) → how often.
    let mut tally: BTreeMap<(Kind, Step, bool), usize> = BTreeMap::new();
    for (seed, outbound, conflicts) in [
        (1u64, true, true),
        (2, false, true),
        (3, true, false),
        (4, false, false),
        (5, true, false),
        (7, false, false),
        (9, true, true),
    ] {
        let mut rng = Rng::new(seed);
        // Half the runs close alias loops often, which sends alias changes to a full compile
        // until a later change opens them again.
        let loopy = seed % 2 == 0;
        let mut resources = resources(outbound, conflicts);
        let server = resources.server(None).unwrap();
        let mut compiled = compile(resources.inputs(&server));
        assert_eq!(
            compiled.diagnostics.len() > 5,
            conflicts,
            "the namespace has conflicts to keep, or none"
        );
        let mut created = 0;
        for step in 0..500 {
            created += 1;
            let (kind, what, name) = match rng.below(14) {
                0..=5 if !resources.mailboxes.is_empty() => {
                    let index = rng.below(resources.mailboxes.len());
                    edit(&mut resources.mailboxes[index], &mut rng);
                    (
                        Kind::Mailbox,
                        Step::Edited,
                        resources.mailboxes[index].name_any(),
                    )
                }
                6..=7 => {
                    let name = format!("new{created}");
                    resources
                        .mailboxes
                        .push(new_mailbox(name.clone(), &mut rng));
                    (Kind::Mailbox, Step::Created, name)
                }
                8 if !resources.mailboxes.is_empty() => {
                    let index = rng.below(resources.mailboxes.len());
                    let gone = resources.mailboxes.remove(index).name_any();
                    (Kind::Mailbox, Step::Deleted, gone)
                }
                9..=10 => {
                    let name = format!("alias{created}");
                    resources.aliases.push(new_alias(&name, &mut rng, loopy));
                    (Kind::MailAlias, Step::Created, name)
                }
                11..=12 if !resources.aliases.is_empty() => {
                    let index = rng.below(resources.aliases.len());
                    let name = resources.aliases[index].name_any();
                    let mut spec = new_alias(&name, &mut rng, loopy).spec;
                    // Half the edits keep the address and change only where it forwards.
                    if rng.below(2) == 0 {
                        spec.address = resources.aliases[index].spec.address.clone();
                        spec.pattern = resources.aliases[index].spec.pattern.clone();
                    }
                    resources.aliases[index].spec = spec;
                    (Kind::MailAlias, Step::Edited, name)
                }
                _ if !resources.aliases.is_empty() => {
                    let index = rng.below(resources.aliases.len());
                    let gone = resources.aliases.remove(index).name_any();
                    (Kind::MailAlias, Step::Deleted, gone)
                }
                _ => continue,
            };
            let reference = compile(resources.inputs(&server));
            let before = compiled.clone();
            let inputs = resources.inputs(&server);
            let result = match kind {
                Kind::Mailbox => {
                    let current = resources.mailboxes.iter().find(|m| m.name_any() == name);
                    recompile_mailbox(&mut compiled, inputs, &name, current)
                }
                _ => {
                    let current = resources.aliases.iter().find(|a| a.name_any() == name);
                    recompile_alias(&mut compiled, inputs, &name, current)
                }
            };
            *tally.entry((kind, what, result.is_ok())).or_default() += 1;
            let context = format!("seed {seed}, step {step}: {kind:?}/{name} {what:?}");
            match result {
                Ok(changed) => {
                    assert_eq!(compiled, reference, "{context} in place");
                    let differ = match kind {
                        Kind::Mailbox => {
                            differing(&before.directory.mailboxes, &compiled.directory.mailboxes)
                        }
                        _ => differing(&before.directory.aliases, &compiled.directory.aliases),
                    };
                    assert_eq!(
                        changed.into_iter().collect::<BTreeSet<_>>(),
                        differ,
                        "{context}: the changed keys are exactly the entries that changed"
                    );
                }
                Err(NeedsFullCompile) => {
                    assert_eq!(
                        compiled, before,
                        "{context}: a refused change leaves the compile alone"
                    );
                    compiled = reference;
                }
            }
        }
    }
    // Every kind of change was taken both ways, many times (the changes here are harsher than
    // self-service ones: many of them break something, and a loop or a conflict, once made,
    // sends changes to a full compile until a later change mends it).
    for kind in [Kind::Mailbox, Kind::MailAlias] {
        for what in [Step::Edited, Step::Created, Step::Deleted] {
            let count = |in_place| tally.get(&(kind, what, in_place)).copied().unwrap_or(0);
            let (in_place, full) = (count(true), count(false));
            assert!(
                in_place > 30 && full > 10,
                "{kind:?} {what:?}: in place {in_place}, full {full}; {tally:?}"
            );
        }
    }
}

#[test]
fn an_address_a_pattern_resolves_through_goes_only_by_a_full_compile() {
    // Without the Mailbox `fwdy` or the MailAlias `exact1`, `pattern1` expands into itself.
    for (kind, name) in [(Kind::Mailbox, "fwdy"), (Kind::MailAlias, "exact1")] {
        let mut resources = resources(true, false);
        let server = resources.server(None).unwrap();
        let compiled = compile(resources.inputs(&server));
        resources.mailboxes.retain(|m| m.name_any() != name);
        resources.aliases.retain(|a| a.name_any() != name);
        let reference = compile(resources.inputs(&server));
        assert!(
            reference
                .diagnostics
                .iter()
                .any(|d| d.object.name == "pattern1" && d.reason == Reason::AliasLoop),
            "without {name}, the pattern loops: {:?}",
            reference.diagnostics
        );
        let mut in_place = compiled.clone();
        let result = match kind {
            Kind::Mailbox => {
                recompile_mailbox(&mut in_place, resources.inputs(&server), name, None)
            }
            _ => recompile_alias(&mut in_place, resources.inputs(&server), name, None),
        };
        assert_eq!(result, Err(NeedsFullCompile), "{name}");
        assert_eq!(in_place, compiled, "{name}: left alone");
    }
}
