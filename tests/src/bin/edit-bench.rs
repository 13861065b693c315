//! Edit benchmark (not a test): the operator's CPU work for one Mailbox edit at N mailboxes,
//! without an apiserver. Baseline in the same run: what every edit cost before in-place edits, a
//! full compile and encode of the whole namespace. Measured: the same edit applied to the kept
//! compile (`recompile_mailbox`) and encoding (`Encoder::update_mailboxes`). Each edit suspends
//! or resumes another Mailbox; medians and p99 over the edits, and the ratio.
//!
//! ```text
//! cargo run --release -p virtmail-tests --bin edit-bench -- [N ...] [--edits E]   (default: 10000 100000, 50 edits)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use virtmail_crds::encoding::{Encoder, encode};
use virtmail_crds::manifests::Resources;
use virtmail_crds::{compile, recompile_mailbox};
use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, stream};
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
        "| mailboxes | full compile + encode, median (ms, baseline) | p99 (ms) | in place, median (ms) | p99 (ms) | median ratio | shards encoded again per edit |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        eprintln!("{n} mailboxes …");
        let mut resources = namespace(n);
        let server = resources.server(None).expect("server");
        let mut compiled = compile(resources.inputs(&server));
        let mut encoder = Encoder::new(&compiled.directory);
        let (mut full, mut in_place, mut shards) = (Vec::new(), Vec::new(), 0);
        for edit in 0..edits {
            let index = (edit * 7919) % n;
            let spec = &mut resources.mailboxes[index].spec;
            spec.suspended = !spec.suspended;

            let started = Instant::now();
            let reference = compile(resources.inputs(&server));
            let reference_encoded = encode(&reference.directory);
            full.push(started.elapsed());

            let started = Instant::now();
            let key = recompile_mailbox(
                &mut compiled,
                resources.inputs(&server),
                &resources.mailboxes[index],
            )
            .expect("a suspension is applied in place");
            let update = encoder.update_mailboxes(&compiled.directory, key.as_deref());
            in_place.push(started.elapsed());
            shards += update.shards;

            assert_eq!(compiled, reference, "in place equals a full compile");
            assert_eq!(encoder.encoded(), &reference_encoded, "and its encoding");
        }
        let (full_median, in_place_median) = (percentile(&full, 0.5), percentile(&in_place, 0.5));
        println!(
            "| {n} | {:.1} | {:.1} | {:.2} | {:.2} | {:.4} | {:.1} |",
            ms(full_median),
            ms(percentile(&full, 0.99)),
            ms(in_place_median),
            ms(percentile(&in_place, 0.99)),
            in_place_median.as_secs_f64() / full_median.as_secs_f64(),
            shards as f64 / edits as f64,
        );
    }
    println!(
        "command: cargo run --release -p virtmail-tests --bin edit-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
}
