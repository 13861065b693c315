//! Edit benchmark (not a test): the operator's CPU work for one Mailbox edit at N mailboxes,
//! without an apiserver. Baseline in the same run: what every edit cost before in-place edits, a
//! full compile and encode of the whole namespace. Measured: the same edit applied to the kept
//! compile (`recompile_mailbox`) and encoding (`Encoder::update_mailboxes`). The changes take
//! turns: suspend or resume a Mailbox, create one at a new address, delete one, create a
//! MailAlias forwarding a new address to a Mailbox. Medians and p99 per kind of change, and the
//! ratio.
//!
//! ```text
//! cargo run --release -p virtmail-tests --bin edit-bench -- [N ...] [--edits E]   (default: 10000 100000, 50 changes of each kind)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use virtmail_crds::encoding::{Encoder, encode};
use virtmail_crds::manifests::Resources;
use virtmail_crds::{compile, recompile_alias, recompile_mailbox};
use virtmail_tests::fixtures::{mail_alias, mail_domain, mail_server, mailbox, stream};
use virtmail_tests::process::machine_line;

/// A namespace of `n` Mailboxes over 100 domains, as the operator's caches hold it.
fn namespace(n: usize) -> Resources {
    let mut manifests = vec![mail_server("mail", "")];
    for d in 0..100 {
        manifests.push(mail_domain(
            &format!("d{d}"),
            &format!("domain{d}.test"),
            &format!("user{d}@domain{d}.test"),
            5000,
            "",
        ));
    }
    for i in 0..n {
        manifests.push(mailbox(
            &format!("u{i}"),
            &format!("address: user{i}@domain{}.test", i % 100),
        ));
    }
    let mut resources = Resources::default();
    resources
        .add_yaml(Path::new("namespace.yaml"), &stream(&manifests))
        .expect("manifests");
    resources
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((p * sorted.len() as f64).ceil() as usize).saturating_sub(1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One Mailbox change of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Suspend or resume a Mailbox (a spec edit that keeps the address).
    Edit,
    /// Create a Mailbox at a new address.
    Create,
    /// Delete a Mailbox.
    Delete,
    /// Create a MailAlias forwarding a new address to a Mailbox.
    Alias,
}

impl Change {
    const ALL: [Change; 4] = [Change::Edit, Change::Create, Change::Delete, Change::Alias];

    fn as_str(self) -> &'static str {
        match self {
            Change::Edit => "edit",
            Change::Create => "create",
            Change::Delete => "delete",
            Change::Alias => "alias",
        }
    }
}

/// The objects of one manifest.
fn parsed(manifest: &str) -> Resources {
    let mut resources = Resources::default();
    resources
        .add_yaml(Path::new("created.yaml"), manifest)
        .expect("manifest");
    resources
}

/// Make `change` (the `round`th) in `resources`; the name of the Mailbox it touched.
fn make(resources: &mut Resources, change: Change, round: usize) -> String {
    let n = resources.mailboxes.len();
    match change {
        Change::Edit => {
            let mailbox = &mut resources.mailboxes[(round * 7919) % n];
            mailbox.spec.suspended = !mailbox.spec.suspended;
            mailbox.metadata.name.clone().expect("named")
        }
        Change::Create => {
            let name = format!("added{round}");
            let manifest = mailbox(
                &name,
                &format!("address: added{round}@domain{}.test", round % 100),
            );
            resources.mailboxes.extend(parsed(&manifest).mailboxes);
            name
        }
        Change::Delete => {
            let gone = resources.mailboxes.remove((round * 7919) % n);
            gone.metadata.name.expect("named")
        }
        Change::Alias => {
            let name = format!("forward{round}");
            let target = resources.mailboxes[(round * 7919) % n].spec.address.clone();
            let manifest = mail_alias(
                &name,
                &format!(
                    "address: forward{round}@domain{}.test, to: [\"{target}\"]",
                    round % 100
                ),
            );
            resources.aliases.extend(parsed(&manifest).aliases);
            name
        }
    }
}

fn main() {
    let mut sizes = Vec::new();
    let mut edits = 50;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--edits" {
            edits = args.next().and_then(|e| e.parse().ok()).expect("--edits E");
        } else {
            sizes.push(arg.parse::<usize>().expect("N must be a number"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    println!("machine: {}", machine_line());
    println!(
        "| mailboxes | change | full compile + encode, median (ms, baseline) | p99 (ms) | in place, median (ms) | p99 (ms) | median ratio | shards encoded again per change |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        eprintln!("{n} mailboxes …");
        let mut resources = namespace(n);
        let server = resources.server(None).expect("server");
        let mut compiled = compile(resources.inputs(&server));
        let mut encoder = Encoder::new(&compiled.directory);
        let mut samples: Vec<(Change, Duration, Duration, usize)> = Vec::new();
        for round in 0..edits * Change::ALL.len() {
            let change = Change::ALL[round % Change::ALL.len()];
            let name = make(&mut resources, change, round);

            let started = Instant::now();
            let reference = compile(resources.inputs(&server));
            let reference_encoded = encode(&reference.directory);
            let full = started.elapsed();

            let started = Instant::now();
            let inputs = resources.inputs(&server);
            let update = if change == Change::Alias {
                let current = resources
                    .aliases
                    .iter()
                    .find(|a| a.metadata.name.as_deref() == Some(&name));
                let keys = recompile_alias(&mut compiled, inputs, &name, current)
                    .unwrap_or_else(|_| panic!("an alias is applied in place"));
                encoder.update_entries(&compiled.directory, [], keys.iter().map(String::as_str))
            } else {
                let current = resources
                    .mailboxes
                    .iter()
                    .find(|m| m.metadata.name.as_deref() == Some(&name));
                let keys = recompile_mailbox(&mut compiled, inputs, &name, current)
                    .unwrap_or_else(|_| panic!("a {} is applied in place", change.as_str()));
                encoder.update_mailboxes(&compiled.directory, keys.iter().map(String::as_str))
            };
            let in_place = started.elapsed();
            samples.push((change, full, in_place, update.shards));

            assert_eq!(compiled, reference, "in place equals a full compile");
            assert_eq!(encoder.encoded(), &reference_encoded, "and its encoding");
        }
        for change in Change::ALL {
            let of: Vec<_> = samples.iter().filter(|s| s.0 == change).collect();
            let full: Vec<Duration> = of.iter().map(|s| s.1).collect();
            let in_place: Vec<Duration> = of.iter().map(|s| s.2).collect();
            let shards: usize = of.iter().map(|s| s.3).sum();
            let (full_median, in_place_median) =
                (percentile(&full, 0.5), percentile(&in_place, 0.5));
            println!(
                "| {n} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.4} | {:.1} |",
                change.as_str(),
                ms(full_median),
                ms(percentile(&full, 0.99)),
                ms(in_place_median),
                ms(percentile(&in_place, 0.99)),
                in_place_median.as_secs_f64() / full_median.as_secs_f64(),
                shards as f64 / of.len() as f64,
            );
        }
    }
    println!(
        "command: cargo run --release -p virtmail-tests --bin edit-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
}
