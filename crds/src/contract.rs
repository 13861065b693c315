//! What the operator and the agent must agree on, written once: where the pod's sockets and
//! files are, the socketmap map names Postfix is configured with, the agent's command line, the
//! condition types and their merge rule, and which mailbox paths are acceptable.
//!
//! The operator writes these into objects (the StatefulSet's arguments, the Postfix profile, the
//! ConfigMaps, the conditions); the agent reads them back in a pod. Neither side spells any of
//! them itself, and the agent's own tests parse [`AgentArgs::to_args`] with its real
//! command-line parser, so a flag renamed on one side fails a test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Directory in the pod where Postfix and the agent share their sockets.
pub const SOCKET_DIR: &str = "/run/virtmail";
/// The agent's LMTP socket in the pod (Postfix's `virtual_transport`).
pub const LMTP_SOCKET: &str = "/run/virtmail/lmtp.sock";
/// The agent's socketmap socket in the pod (Postfix's `virtual_*_maps`).
pub const SOCKETMAP_SOCKET: &str = "/run/virtmail/socketmap.sock";
/// File in the shared socket directory where the Postfix container writes its queue's size
/// (one `<queue> <messages>` line each) for the agent's `/metrics`: the agent cannot read
/// Postfix's queue directories itself, and should not.
pub const POSTFIX_QUEUE_STATS: &str = "/run/virtmail/postfix-queue.stats";
/// Where the agent reads the directory when it is mounted (a projected volume: the head's keys
/// at the top, each shard's keys under a directory named after the shard ConfigMap).
pub const DIRECTORY_DIR: &str = "/etc/virtmail/directory";
/// Port of the agent's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
pub const AGENT_HTTP_PORT: u16 = 8080;

/// The socketmap tables the agent serves, one for each Postfix lookup it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketmapMap {
    /// `virtual_mailbox_domains`: the domains served here.
    Domain,
    /// `virtual_mailbox_maps`: the mailboxes, by address.
    Mailbox,
    /// `virtual_alias_maps`: the aliases, by address.
    Alias,
}

impl SocketmapMap {
    /// Every map, in the order of their Postfix parameters.
    pub const ALL: [SocketmapMap; 3] = [Self::Domain, Self::Mailbox, Self::Alias];

    /// The name in the socketmap request (`<name> <key>`) and in Postfix's map reference.
    pub fn name(self) -> &'static str {
        match self {
            Self::Domain => "domain",
            Self::Mailbox => "mailbox",
            Self::Alias => "alias",
        }
    }

    /// The Postfix parameter that looks this map up.
    pub fn postfix_parameter(self) -> &'static str {
        match self {
            Self::Domain => "virtual_mailbox_domains",
            Self::Mailbox => "virtual_mailbox_maps",
            Self::Alias => "virtual_alias_maps",
        }
    }

    /// The map a request names; plural spellings are accepted, as Postfix's examples use them.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "domain" | "domains" => Some(Self::Domain),
            "mailbox" | "mailboxes" => Some(Self::Mailbox),
            "alias" | "aliases" => Some(Self::Alias),
            _ => None,
        }
    }

    /// Postfix's reference to this map on the socketmap socket at `socket`.
    pub fn postfix_reference(self, socket: &str) -> String {
        format!("socketmap:unix:{socket}:{}", self.name())
    }
}

/// Where the agent in a pod reads its directory from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentDirectory {
    /// Watch the ConfigMaps of this namespace through the API.
    Api {
        /// The namespace (in a pod, `$(POD_NAMESPACE)` expanded by the kubelet).
        namespace: String,
    },
    /// Read the ConfigMaps projected into this directory.
    Mounted {
        /// The mount point.
        dir: String,
    },
}

/// The agent's command line in a MailServer's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    /// The MailServer served.
    pub server: String,
    /// Where the directory comes from.
    pub directory: AgentDirectory,
    /// The mailbox volume's mount point.
    pub mailbox_base: String,
    /// The uid floor: the directory (a ConfigMap) cannot lower it.
    pub minimum_uid: u32,
    /// `text` or `json`; the agent's default when absent.
    pub log_format: Option<String>,
}

impl AgentArgs {
    /// The container's `args`: `serve` with the pod's fixed sockets, port and files.
    pub fn to_args(&self) -> Vec<String> {
        let (source_flag, source) = match &self.directory {
            AgentDirectory::Api { namespace } => ("--namespace", namespace),
            AgentDirectory::Mounted { dir } => ("--directory-dir", dir),
        };
        let mut args: Vec<String> = [
            "serve",
            "--server",
            &self.server,
            source_flag,
            source,
            "--mailbox-base",
            &self.mailbox_base,
            "--lmtp",
            &format!("unix:{LMTP_SOCKET}"),
            "--socketmap",
            &format!("unix:{SOCKETMAP_SOCKET}"),
            "--http",
            &format!("0.0.0.0:{AGENT_HTTP_PORT}"),
            "--minimum-uid",
            &self.minimum_uid.to_string(),
            "--postfix-queue-stats",
            POSTFIX_QUEUE_STATS,
        ]
        .map(String::from)
        .into();
        if let Some(format) = &self.log_format {
            args.extend(["--log-format".into(), format.clone()]);
        }
        args
    }
}

/// Condition types. The operator and the agent write conditions on the same objects with
/// server-side apply under different field managers; the list is merged by `type`, so each
/// type belongs to exactly one writer.
pub mod condition {
    /// Every kind (operator): the object is compiled into a published directory.
    pub const READY: &str = "Ready";
    /// MailServer (operator): every wanted pod is ready.
    pub const AVAILABLE: &str = "Available";
    /// MailServer (operator): the directory ConfigMaps are current.
    pub const DIRECTORY_PUBLISHED: &str = "DirectoryPublished";
    /// MailServer (operator): it selects domains an older server serves.
    pub const DOMAIN_CONFLICT: &str = "DomainConflict";
    /// Mailbox (agent): the mailbox exists on the volume with its owner.
    pub const PROVISIONED: &str = "Provisioned";
}

/// A condition a writer wants to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedCondition {
    /// One of [`condition`]'s types.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// The merge rule both writers follow: `lastTransitionTime` is kept unless the status changes.
/// Conditions of other types (another writer's) are left out, since server-side apply merges
/// the list by type.
pub fn merge_conditions(
    existing: &[Condition],
    wanted: &[WantedCondition],
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

/// Whether applying `merged` would change anything the object already shows (the time of a
/// transition is not a change by itself).
pub fn conditions_differ(existing: &[Condition], merged: &[Condition]) -> bool {
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

// The names the agent creates beside an mbox on the volume. The compiler reserves them, so no
// mailbox is put where another's lock, journal or state lies.

/// The file name of the dotlock of the mbox named `mbox` (beside it).
pub fn dotlock_name(mbox: &str) -> String {
    format!("{mbox}.lock")
}

/// The file name of the append journal of the mbox named `mbox` (beside it).
pub fn journal_name(mbox: &str) -> String {
    format!(".{mbox}.virtmail-append")
}

/// The file name of the autoreply state of the mbox named `mbox` (beside it). A Maildir keeps
/// it inside, as [`MAILDIR_AUTOREPLY_STATE`].
pub fn autoreply_state_name(mbox: &str) -> String {
    format!(".{mbox}.virtmail-autoreply")
}

/// The autoreply state inside a Maildir (a dot file: Maildir readers skip it).
pub const MAILDIR_AUTOREPLY_STATE: &str = ".virtmail-autoreply";

/// Why a mailbox path is refused. The compiler refuses such a Mailbox; the agent, which reads a
/// directory anyone allowed to write ConfigMaps could have edited, checks again before opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Empty, or only `/`.
    Empty,
    /// A NUL byte.
    Nul,
    /// A `..` component (Postfix's own check, virtual(8) V14, reports it as a configuration
    /// error, so it is found before any other problem).
    DotDot,
    /// Absolute (Postfix would put it under the base with `//`; virtmail refuses).
    Absolute,
    /// A `.` component: ambiguous with another entry's path.
    Dot,
    /// An empty component (`a//b`): ambiguous with another entry's path.
    EmptyComponent,
}

impl PathProblem {
    /// Human text, after the path: "path "x" <describe>".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Empty => "is empty",
            Self::Nul => "contains a NUL byte",
            Self::DotDot => "has a \"..\" component",
            Self::Absolute => "is absolute; it must be relative to mailboxBase",
            Self::Dot => "has a \".\" component",
            Self::EmptyComponent => "has an empty component",
        }
    }
}

/// Check a mailbox path relative to the mailbox base: not empty, no NUL, no `..`, not absolute,
/// no `.` or empty components. One trailing `/` (the Maildir marker, virtual(8) V15) is allowed.
pub fn check_mailbox_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() || path == "/" {
        return Err(PathProblem::Empty);
    }
    if path.contains('\0') {
        return Err(PathProblem::Nul);
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.split('/').any(|c| c == "..") {
        return Err(PathProblem::DotDot);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    for component in trimmed.split('/') {
        match component {
            "" => return Err(PathProblem::EmptyComponent),
            "." => return Err(PathProblem::Dot),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketmap_names_round_trip_and_accept_plurals() {
        for map in SocketmapMap::ALL {
            assert_eq!(SocketmapMap::parse(map.name()), Some(map));
        }
        assert_eq!(SocketmapMap::parse("aliases"), Some(SocketmapMap::Alias));
        assert_eq!(SocketmapMap::parse("Domain"), None);
        assert_eq!(
            SocketmapMap::Mailbox.postfix_reference(SOCKETMAP_SOCKET),
            "socketmap:unix:/run/virtmail/socketmap.sock:mailbox"
        );
    }

    #[test]
    fn agent_args_name_the_pod_sockets_and_the_source() {
        let args = AgentArgs {
            server: "mx".into(),
            directory: AgentDirectory::Mounted {
                dir: DIRECTORY_DIR.into(),
            },
            mailbox_base: "/var/mail/vhosts".into(),
            minimum_uid: 1000,
            log_format: Some("json".into()),
        }
        .to_args()
        .join(" ");
        assert_eq!(
            args,
            "serve --server mx --directory-dir /etc/virtmail/directory \
             --mailbox-base /var/mail/vhosts --lmtp unix:/run/virtmail/lmtp.sock \
             --socketmap unix:/run/virtmail/socketmap.sock --http 0.0.0.0:8080 \
             --minimum-uid 1000 --postfix-queue-stats /run/virtmail/postfix-queue.stats \
             --log-format json"
        );
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn wanted(status: bool, reason: &str) -> WantedCondition {
        WantedCondition {
            type_: condition::READY,
            status,
            reason: reason.into(),
            message: String::new(),
        }
    }

    #[test]
    fn last_transition_time_moves_only_on_status_change() {
        let (t0, t1) = (time("2026-01-01T00:00:00Z"), time("2026-01-02T00:00:00Z"));
        let first = merge_conditions(&[], &[wanted(true, "Published")], Some(1), &t0);
        assert_eq!(first[0].last_transition_time, t0);
        let second = merge_conditions(&first, &[wanted(true, "Other")], Some(2), &t1);
        assert_eq!(second[0].last_transition_time, t0);
        assert!(conditions_differ(&first, &second));
        let third = merge_conditions(&second, &[wanted(false, "Other")], Some(2), &t1);
        assert_eq!(third[0].last_transition_time, t1);
        assert!(!conditions_differ(&third, &third));
    }

    #[test]
    fn mailbox_paths() {
        use PathProblem::*;
        for (path, problem) in [
            ("", Empty),
            ("/", Empty),
            ("a\0b", Nul),
            ("../x/", DotDot),
            ("x/../y", DotDot),
            ("x/..", DotDot),
            ("/x/../y", DotDot),
            ("/etc/x", Absolute),
            ("a/./b", Dot),
            ("a//b", EmptyComponent),
            ("a/b//", EmptyComponent),
        ] {
            assert_eq!(check_mailbox_path(path), Err(problem), "{path:?}");
        }
        for path in ["d/u/", "d/u", "d/..u", "u"] {
            assert_eq!(check_mailbox_path(path), Ok(()), "{path:?}");
        }
    }
}
