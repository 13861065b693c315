//! Provisioning driven by directory versions: each new version is provisioned on the mailbox
//! volume, and without one the whole directory every `interval` (so a volume fixed by an
//! administrator is picked up); in cluster mode the result goes to the Mailboxes'
//! `Provisioned` condition, otherwise problems are logged only.
//!
//! A new version that shares table parts with the last one provisioned (the agent decodes only
//! changed shards) is provisioned only in the parts it does not share: an edit costs the
//! mailboxes of its shard, not a walk of the whole volume.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use tokio::sync::watch;
use virtmail_crds::Directory;
use virtmail_crds::directory::slot_of;

use super::mailbox_status;
use crate::provision;
use crate::source::Loaded;

/// Where provisioning results are reported besides the log.
#[derive(Clone)]
pub struct StatusReport {
    /// The API.
    pub client: kube::Client,
    /// Namespace of the Mailboxes.
    pub namespace: String,
}

impl fmt::Debug for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusReport")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Provision each new version (latest only, one at a time) and every `interval`, until the
/// holder is gone.
pub async fn run(
    mut versions: watch::Receiver<Option<Arc<Loaded>>>,
    interval: Duration,
    report: Option<StatusReport>,
) {
    let mut written = mailbox_status::Written::default();
    let mut problems = Problems::default();
    let mut last: Option<Arc<Loaded>> = None;
    // The version current at start counts as new.
    versions.mark_changed();
    loop {
        let new_version = tokio::select! {
            changed = versions.changed() => if changed.is_err() { return } else { true },
            _ = tokio::time::sleep(interval) => false,
        };
        let Some(loaded) = versions.borrow_and_update().clone() else {
            continue;
        };
        let scope = if new_version {
            Scope::between(last.as_deref(), &loaded)
        } else {
            Scope::All
        };
        let round = Round {
            report: report.as_ref(),
            written: &mut written,
            problems: &mut problems,
        };
        if round.run(&loaded.directory, &scope).await {
            last = Some(loaded);
        }
    }
}

/// Where one round's results go.
struct Round<'a> {
    report: Option<&'a StatusReport>,
    written: &'a mut mailbox_status::Written,
    problems: &'a mut Problems,
}

impl Round<'_> {
    /// Provision the mailboxes `scope` selects, one table part at a time on a blocking thread
    /// (it switches that thread's file system identity), reporting each part's results before
    /// the next part starts. False when the round could not run (logged).
    async fn run(self, directory: &Arc<Directory>, scope: &Scope) -> bool {
        let settings = directory.clone();
        let started = tokio::task::spawn_blocking(move || open_base(&settings)).await;
        let (base, plan) = match started {
            Ok(Ok((base, plan))) => (Arc::new(base), Arc::new(plan)),
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot provision");
                return false;
            }
            Err(error) => {
                tracing::error!(%error, "provisioning task failed");
                return false;
            }
        };
        let base_path = Arc::new(directory.settings.mailbox_base.clone());
        let parts = directory.mailboxes.parts();
        if *scope == Scope::All {
            self.problems.0.clear();
        }
        let mut tally = Tally::default();
        for (slot, part) in parts.iter().enumerate() {
            if !scope.includes(slot) {
                continue;
            }
            let (base, plan, base_path, part) =
                (base.clone(), plan.clone(), base_path.clone(), part.clone());
            let provisioned = tokio::task::spawn_blocking(move || {
                provision::provision_part(&base, &base_path, &part, &plan)
            })
            .await;
            let reports = match provisioned {
                Ok(reports) => reports,
                Err(error) => {
                    tracing::error!(%error, "provisioning task failed");
                    return false;
                }
            };
            tally.add(&reports);
            self.problems.record_part(slot, parts.len(), &reports);
            if let Some(to) = self.report {
                mailbox_status::publish(&to.client, &to.namespace, &reports, self.written).await;
            }
        }
        tally.log();
        true
    }
}

/// Open the mailbox base and plan the round (blocking).
fn open_base(directory: &Directory) -> Result<(OwnedFd, provision::Plan), String> {
    let base = PathBuf::from(&directory.settings.mailbox_base);
    let fd = rustix::fs::open(
        &base,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("mailbox base {}: {e}", base.display()))?;
    Ok((fd, provision::Plan::new(directory)))
}

/// Counts of a round, for its log line; problems are logged as they are found.
#[derive(Debug, Default)]
struct Tally {
    mailboxes: usize,
    created: usize,
    problems: usize,
}

impl Tally {
    fn add(&mut self, reports: &[provision::Report]) {
        self.mailboxes += reports.len();
        for r in reports {
            match &r.state {
                provision::State::Created => self.created += 1,
                provision::State::Problem { reason, message } => {
                    self.problems += 1;
                    tracing::warn!(mailbox = %r.object, path = %r.path, reason, "{message}");
                }
                provision::State::Present => {}
            }
        }
    }

    fn log(&self) {
        let Tally {
            mailboxes,
            created,
            problems,
        } = self;
        tracing::info!(mailboxes, created, problems, "provisioned");
    }
}

/// Register the gauge of the last round's problems.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Unprovisioned));
}

/// Which mailboxes a round provisions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every one.
    All,
    /// Those in the mailbox table parts marked `true`, by slot.
    Slots(Vec<bool>),
}

impl Scope {
    /// What `new` needs after `last` was provisioned: the parts it does not share with `last`,
    /// or everything when the settings or the partition changed.
    fn between(last: Option<&Loaded>, new: &Loaded) -> Scope {
        let Some(last) = last else {
            return Scope::All;
        };
        let (old, new) = (&last.directory, &new.directory);
        let (old_parts, new_parts) = (old.mailboxes.parts(), new.mailboxes.parts());
        if old.settings != new.settings || old_parts.len() != new_parts.len() {
            return Scope::All;
        }
        Scope::Slots(
            old_parts
                .iter()
                .zip(new_parts)
                .map(|(old, new)| !Arc::ptr_eq(old, new))
                .collect(),
        )
    }

    fn includes(&self, slot: usize) -> bool {
        match self {
            Scope::All => true,
            Scope::Slots(slots) => slots.get(slot).copied().unwrap_or(false),
        }
    }
}

/// Mailboxes that could not be provisioned, as of their last round (deferring ones excepted:
/// they wait for their object to be fixed, the volume is not at fault).
#[derive(Debug, Default)]
struct Problems(BTreeSet<String>);

/// The number in [`Problems`] (`-1`: no round yet), for `/metrics`.
static UNPROVISIONED: AtomicI64 = AtomicI64::new(-1);

impl Problems {
    /// Replace the problems of part `slot` of a table of `slots` parts with those of `reports`.
    fn record_part(&mut self, slot: usize, slots: usize, reports: &[provision::Report]) {
        self.0.retain(|address| slot_of(address, slots) != slot);
        for report in reports {
            if matches!(&report.state, provision::State::Problem { reason, .. } if *reason != "Deferring")
            {
                self.0.insert(report.address.clone());
            }
        }
        UNPROVISIONED.store(
            i64::try_from(self.0.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// `virtmail_mailboxes_unprovisioned`, once a round has run.
#[derive(Debug)]
struct Unprovisioned;

impl Collector for Unprovisioned {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match UNPROVISIONED.load(Ordering::Relaxed) {
            problems if problems >= 0 => crate::metrics::gauge(
                &mut encoder,
                "virtmail_mailboxes_unprovisioned",
                "Mailboxes that could not be created or checked when last provisioned.",
                problems,
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtmail_crds::encoding::{self, Data};

    /// `directory` as the agent loads it after `previous`: decoded from its shards, taking the
    /// unchanged parts from `previous`.
    fn load(directory: &Directory, previous: Option<&Loaded>) -> Loaded {
        let encoded = encoding::encode(directory);
        let shards: std::collections::BTreeMap<String, Data> = encoded
            .shards
            .iter()
            .map(|s| (s.name.clone(), (*s.data).clone()))
            .collect();
        let decoded = encoding::decode_reusing(
            &encoded.head,
            |name| shards.get(name),
            previous.map(|l| (&*l.directory, &l.hashes)),
        )
        .expect("decode");
        Loaded::new(decoded.directory, encoded.version, decoded.hashes)
    }

    fn problem(address: &str) -> provision::Report {
        provision::Report {
            address: address.into(),
            object: address.into(),
            path: address.into(),
            state: provision::State::Problem {
                reason: "OwnerMismatch",
                message: String::new(),
            },
        }
    }

    #[test]
    fn a_new_version_is_provisioned_only_in_the_parts_it_does_not_share() {
        let mut directory = Directory::synthetic(20_000);
        let first = load(&directory, None);
        let slots = first.directory.mailboxes.parts().len();
        assert!(slots > 1);
        assert_eq!(Scope::between(None, &first), Scope::All);

        let mut entry = directory.mailboxes["user1@domain1.test"].clone();
        entry.path = "domain1.test/added/".into();
        directory
            .mailboxes
            .insert("added@domain1.test".into(), entry);
        let second = load(&directory, Some(&first));
        let changed = slot_of("added@domain1.test", slots);
        let want: Vec<bool> = (0..slots).map(|slot| slot == changed).collect();
        assert_eq!(Scope::between(Some(&first), &second), Scope::Slots(want));

        directory.settings.minimum_uid += 1;
        let third = load(&directory, Some(&second));
        assert_eq!(Scope::between(Some(&second), &third), Scope::All);
    }

    #[test]
    fn a_partial_round_replaces_only_the_problems_of_its_parts() {
        let slots = 8;
        let (a, b) = ("a@x.test", "b@x.test");
        let (slot_a, slot_b) = (slot_of(a, slots), slot_of(b, slots));
        assert_ne!(slot_a, slot_b, "the two addresses fall in different slots");
        let mut problems = Problems::default();
        problems.record_part(slot_a, slots, &[problem(a)]);
        problems.record_part(slot_b, slots, &[problem(b)]);
        assert_eq!(problems.0.len(), 2);
        // The next round over a's part finds a fixed: b's problem stands.
        problems.record_part(slot_a, slots, &[]);
        assert_eq!(problems.0.iter().collect::<Vec<_>>(), [b]);
        assert_eq!(UNPROVISIONED.load(Ordering::Relaxed), 1);
    }
}
