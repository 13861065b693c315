//! Status computation (pure): conditions whose `lastTransitionTime` moves only when their status
//! changes, and the per-object `Ready` condition derived from the compiler's diagnostics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use virtmail_crds::{Compiled, Effect, ObjectRef};

/// Condition `Ready`.
pub const READY: &str = "Ready";
/// Condition `DirectoryPublished` (MailServer).
pub const DIRECTORY_PUBLISHED: &str = "DirectoryPublished";

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
            reason: "Published".into(),
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
