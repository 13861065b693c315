use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::compile;
use crate::manifests::Resources;
use crate::resources::{AutoreplySpec, MailboxFormat};
use crate::test_rng::Rng;

const HEADER: &str = "apiVersion: virtmail.io/v1alpha1\n";

/// A server's namespace with what makes compiles interesting: an address two Mailboxes claim,
/// paths that overlap, a domain with a uid range, owners below the minimum, autoreplies, an
/// alias and a catch-all pointing at mailboxes.
fn resources(outbound: bool) -> Resources {
    let mut y = format!(
        "{HEADER}kind: MailServer\nmetadata: {{name: mail}}\nspec: {{minimumUid: 100{}}}\n",
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
    ] {
        y.push_str(&format!(
            "---\n{HEADER}kind: MailDomain\nmetadata: {{name: d{d}}}\nspec: {{domain: domain{d}.test, postmaster: user{d}@domain{d}.test, defaults: {{uid: 5000, gid: 5000}}{extra}}}\n"
        ));
    }
    for i in 0..60 {
        let mut spec = format!("address: user{}@domain{}.test", i % 50, i % 3);
        if i % 3 == 0 {
            spec.push_str(&format!(", path: shared/p{}", i % 5));
        }
        if i % 11 == 0 {
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

#[test]
fn in_place_mailbox_edits_equal_a_full_compile_after_every_step() {
    let (mut in_place, mut full) = (0, 0);
    for (seed, outbound) in [(1u64, true), (2, false), (3, true)] {
        let mut rng = Rng::new(seed);
        let mut resources = resources(outbound);
        let server = resources.server(None).unwrap();
        let mut compiled = compile(resources.inputs(&server));
        assert!(
            compiled.diagnostics.len() > 5,
            "the namespace has conflicts to keep"
        );
        for step in 0..300 {
            let index = rng.below(resources.mailboxes.len());
            edit(&mut resources.mailboxes[index], &mut rng);
            let reference = compile(resources.inputs(&server));
            let before = compiled.clone();
            match recompile_mailbox(
                &mut compiled,
                resources.inputs(&server),
                &resources.mailboxes[index],
            ) {
                Ok(changed) => {
                    in_place += 1;
                    assert_eq!(
                        compiled, reference,
                        "seed {seed}, step {step}: Mailbox/m{index} edited in place"
                    );
                    let key = fold(&resources.mailboxes[index].spec.address);
                    assert_eq!(
                        changed.is_some(),
                        before.directory.mailboxes.get(&key)
                            != compiled.directory.mailboxes.get(&key),
                        "the changed key is reported exactly when the entry changed"
                    );
                }
                Err(NeedsFullCompile) => {
                    full += 1;
                    assert_eq!(compiled, before, "a refused edit leaves the compile alone");
                    compiled = reference;
                }
            }
        }
    }
    // Both paths were taken, the in-place one more often (the edits here are harsher than
    // self-service ones: a third of them break something).
    assert!(
        in_place > full && full > 20,
        "in place {in_place}, full {full}"
    );
}
