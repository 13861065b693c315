use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::compile;
use crate::manifests::Resources;
use crate::resources::{AutoreplySpec, MailboxFormat};
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

/// What one step did to the namespace.
enum Step {
    Edited,
    Created,
    Deleted,
}

#[test]
fn in_place_mailbox_changes_equal_a_full_compile_after_every_step() {
    // (step, applied in place) → how often.
    let mut tally: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for (seed, outbound, conflicts) in [
        (1u64, true, true),
        (2, false, true),
        (3, true, false),
        (4, false, false),
        (5, true, false),
    ] {
        let mut rng = Rng::new(seed);
        let mut resources = resources(outbound, conflicts);
        let server = resources.server(None).unwrap();
        let mut compiled = compile(resources.inputs(&server));
        assert_eq!(
            compiled.diagnostics.len() > 5,
            conflicts,
            "the namespace has conflicts to keep, or none"
        );
        let mut created = 0;
        for step in 0..400 {
            let (kind, name) = match rng.below(10) {
                0..=5 if !resources.mailboxes.is_empty() => {
                    let index = rng.below(resources.mailboxes.len());
                    edit(&mut resources.mailboxes[index], &mut rng);
                    (Step::Edited, resources.mailboxes[index].name_any())
                }
                6..=7 => {
                    created += 1;
                    let name = format!("new{created}");
                    resources
                        .mailboxes
                        .push(new_mailbox(name.clone(), &mut rng));
                    (Step::Created, name)
                }
                _ if !resources.mailboxes.is_empty() => {
                    let index = rng.below(resources.mailboxes.len());
                    (Step::Deleted, resources.mailboxes.remove(index).name_any())
                }
                _ => continue,
            };
            let current = resources.mailboxes.iter().find(|m| m.name_any() == name);
            let reference = compile(resources.inputs(&server));
            let before = compiled.clone();
            let result =
                recompile_mailbox(&mut compiled, resources.inputs(&server), &name, current);
            let what = match kind {
                Step::Edited => "edited",
                Step::Created => "created",
                Step::Deleted => "deleted",
            };
            *tally.entry((what, result.is_ok())).or_default() += 1;
            match result {
                Ok(changed) => {
                    assert_eq!(
                        compiled, reference,
                        "seed {seed}, step {step}: Mailbox/{name} {what} in place"
                    );
                    let differ: BTreeSet<&String> = before
                        .directory
                        .mailboxes
                        .keys()
                        .chain(compiled.directory.mailboxes.keys())
                        .filter(|k| {
                            before.directory.mailboxes.get(*k)
                                != compiled.directory.mailboxes.get(*k)
                        })
                        .collect();
                    assert_eq!(
                        changed.iter().collect::<BTreeSet<_>>(),
                        differ,
                        "seed {seed}, step {step}: the changed keys are exactly the entries that changed"
                    );
                }
                Err(NeedsFullCompile) => {
                    assert_eq!(
                        compiled, before,
                        "a refused change leaves the compile alone"
                    );
                    compiled = reference;
                }
            }
        }
    }
    // Every kind of change was taken both ways; in place more often than not (the changes here
    // are harsher than self-service ones: many of them break something).
    for what in ["edited", "created", "deleted"] {
        let (in_place, full) = (tally[&(what, true)], tally[&(what, false)]);
        assert!(
            in_place > full && full > 10,
            "{what}: in place {in_place}, full {full}; {tally:?}"
        );
    }
}
