//! Status computation (pure): conditions whose `lastTransitionTime` moves only when their status
//! changes, and the per-object `Ready` condition derived from the compiler's diagnostics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use virtmail_crds::{Compiled, DirectoryStatus, Effect, MailServerStatus, ObjectRef};

/// Condition `Ready`.
pub const READY: &str = "Ready";
/// Reason of a member's `Ready=True` when it is served without a problem.
pub const PUBLISHED: &str = "Published";
/// Condition `Available` (MailServer): every wanted pod is ready.
pub const AVAILABLE: &str = "Available";
/// Condition `DirectoryPublished` (MailServer).
pub const DIRECTORY_PUBLISHED: &str = "DirectoryPublished";
/// Condition `DomainConflict` (MailServer): it selects domains an older server serves.
pub const DOMAIN_CONFLICT: &str = "DomainConflict";

/// What a MailServer's status is made from after a successful reconcile.
#[derive(Debug, Clone)]
pub struct ServerObservation<'a> {
    /// The compiled directory.
    pub compiled: &'a Compiled,
    /// The directory as published.
    pub directory: DirectoryStatus,
    /// Parts of the spec the operator did not apply, with why.
    pub refused: &'a [String],
    /// Pods the StatefulSet is asked to run.
    pub wanted_replicas: i32,
    /// Pods it runs, and how many are ready (from its status).
    pub replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// The pods' label selector.
    pub selector: String,
}

/// The MailServer's status after a successful reconcile. Pure: conditions keep their
/// `lastTransitionTime` unless their status changes.
pub fn server_status(
    previous: &MailServerStatus,
    observed: &ServerObservation<'_>,
    generation: Option<i64>,
    now: &Time,
) -> MailServerStatus {
    let compiled = observed.compiled;
    let invalid = compiled
        .diagnostics
        .iter()
        .map(|d| &d.object)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u32;
    let directory = &observed.directory;
    let (wanted, ready) = (observed.wanted_replicas, observed.ready_replicas);
    let mut conditions = vec![
        Wanted {
            type_: DIRECTORY_PUBLISHED,
            status: true,
            reason: "Published".into(),
            message: format!(
                "version {} in {} shards, {} bytes",
                directory.version, directory.shards, directory.bytes
            ),
        },
        if observed.refused.is_empty() {
            Wanted {
                type_: READY,
                status: true,
                reason: "Reconciled".into(),
                message: format!(
                    "{} objects served, {invalid} with problems",
                    compiled.members.len()
                ),
            }
        } else {
            Wanted {
                type_: READY,
                status: false,
                reason: "ParameterRefused".into(),
                message: observed.refused.join("; "),
            }
        },
        match (wanted, ready) {
            (0, _) => Wanted {
                type_: AVAILABLE,
                status: false,
                reason: "ScaledToZero".into(),
                message: "replicas is 0: no pod accepts mail".into(),
            },
            (wanted, ready) if ready >= wanted => Wanted {
                type_: AVAILABLE,
                status: true,
                reason: "PodsReady".into(),
                message: format!("{ready} of {wanted} pods ready"),
            },
            (wanted, ready) => Wanted {
                type_: AVAILABLE,
                status: false,
                reason: if ready == 0 {
                    "NoPodReady"
                } else {
                    "PodsNotReady"
                }
                .into(),
                message: format!("{ready} of {wanted} pods ready"),
            },
        },
        if compiled.ceded.is_empty() {
            Wanted {
                type_: DOMAIN_CONFLICT,
                status: false,
                reason: "NoConflict".into(),
                message: "no older MailServer selects the same domains".into(),
            }
        } else {
            Wanted {
                type_: DOMAIN_CONFLICT,
                status: true,
                reason: "DomainConflict".into(),
                message: format!(
                    "not served here, as older MailServers serve them: {}",
                    compiled
                        .ceded
                        .iter()
                        .map(|c| format!("{} (MailServer/{})", c.domain, c.served_by))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        },
    ];
    conditions.sort_by_key(|w| w.type_);
    MailServerStatus {
        observed_generation: generation,
        conditions: merge(&previous.conditions, &conditions, generation, now),
        domains: compiled.directory.domains.len() as u32,
        mailboxes: compiled.directory.mailboxes.len() as u32,
        aliases: compiled.directory.aliases.len() as u32,
        invalid,
        directory: Some(directory.clone()),
        ready_replicas: ready,
        replicas: observed.replicas,
        selector: Some(observed.selector.clone()),
    }
}

/// The MailServer's status after a failed reconcile: `Ready=False` with the error's category
/// as reason; everything else as it was (the directory and the pods keep serving).
pub fn failed_server_status(
    previous: &MailServerStatus,
    category: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> MailServerStatus {
    let ready = Wanted {
        type_: READY,
        status: false,
        reason: category.into(),
        message: message.into(),
    };
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .collect();
    conditions.extend(merge(&previous.conditions, &[ready], generation, now));
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    MailServerStatus {
        conditions,
        ..previous.clone()
    }
}

/// Whether a new server status shows anything the previous one does not.
pub fn server_status_differs(previous: &MailServerStatus, new: &MailServerStatus) -> bool {
    differs(&previous.conditions, &new.conditions)
        || MailServerStatus {
            conditions: previous.conditions.clone(),
            ..new.clone()
        } != *previous
}

/// A condition as computed, before timestamps are merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Type.
    pub type_: &'static str,
    /// `True` / `False`.
    pub status: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// Merge wanted conditions into the existing ones: `lastTransitionTime` is kept unless the
/// status changes; conditions of other types (another manager's) are left out, since server-side
/// apply merges the list by type.
pub fn merge(
    existing: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" }.to_string();
            let previous = existing.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: w.type_.to_string(),
                status,
                reason: w.reason.clone(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Whether applying `merged` would change anything the object already shows.
pub fn differs(existing: &[Condition], merged: &[Condition]) -> bool {
    merged.iter().any(|m| {
        existing
            .iter()
            .find(|c| c.type_ == m.type_)
            .is_none_or(|c| {
                c.status != m.status
                    || c.reason != m.reason
                    || c.message != m.message
                    || c.observed_generation != m.observed_generation
            })
    })
}

/// `Ready` for a member object of a server's directory.
pub fn ready_for(compiled: &Compiled, object: &ObjectRef, server: &str) -> Wanted {
    match compiled.diagnostic(object) {
        None => Wanted {
            type_: READY,
            status: true,
            reason: PUBLISHED.into(),
            message: format!("in the directory of MailServer/{server}"),
        },
        Some(d) => Wanted {
            type_: READY,
            // A degraded domain still receives mail.
            status: d.effect == Effect::Degraded,
            reason: d.reason.as_str().into(),
            message: match d.effect {
                Effect::Deferring => format!("{} (mail to it is deferred until fixed)", d.message),
                Effect::Excluded => format!("{} (not in the directory)", d.message),
                Effect::Degraded => d.message.clone(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
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
        let server = virtmail_crds::MailServer::new("mail", Default::default());
        virtmail_crds::compile(virtmail_crds::Inputs {
            server: &server,
            servers: virtmail_crds::Objects::Slice(&[]),
            domains: virtmail_crds::Objects::Slice(&[]),
            mailboxes: virtmail_crds::Objects::Slice(&[]),
            aliases: virtmail_crds::Objects::Slice(&[]),
        })
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

    #[test]
    fn available_follows_the_ready_pods_and_ready_the_reconcile() {
        let (t0, t1) = (time("2026-01-01T00:00:00Z"), time("2026-01-02T00:00:00Z"));
        let compiled = empty_compile();
        let starting = server_status(
            &MailServerStatus::default(),
            &observed(&compiled, &[], 1),
            Some(1),
            &t0,
        );
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
        let clean = server_status(
            &MailServerStatus::default(),
            &observed(&compiled, &[], 2),
            Some(1),
            &t0,
        );
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
}
