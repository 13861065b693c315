//! The directory: one compiled, versioned, deterministic document per MailServer (docs/ARCHITECTURE.md).
//!
//! The operator publishes it as ConfigMaps ([`crate::encoding`]); the agent loads it and answers
//! every lookup from it. Keys are case-folded addresses.

use serde::{Deserialize, Serialize};

use crate::address;

mod table;
use crate::resources::{LockMethod, MailboxFormat};
pub use table::{Part, Table, slot_of};

pub mod pattern {
    //! MailAlias patterns: how they are compiled (bounded, linear-time), keyed in the alias
    //! table and cached for lookups.
    //!
    //! # Security
    //!
    //! Patterns come from MailAlias authors and are matched against local parts chosen by any
    //! sender. The `regex` crate matches in time linear in the input, with no backtracking; the
    //! pattern text is at most [`MAX_PATTERN_LEN`] characters and its compiled program at most
    //! [`COMPILED_SIZE_LIMIT`] bytes, and the cache of compiled patterns is bounded.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use regex::{Regex, RegexBuilder};

    /// Longest pattern text accepted.
    pub const MAX_PATTERN_LEN: usize = 256;
    /// Largest compiled program (and lazy DFA cache) of one pattern, in bytes.
    pub const COMPILED_SIZE_LIMIT: usize = 256 * 1024;
    /// Patterns per domain: every lookup that no exact address answers may try them all.
    pub const MAX_PATTERNS_PER_DOMAIN: usize = 256;
    /// Compiled patterns kept for lookups; the cache starts over when it is full.
    const CACHE_ENTRIES: usize = 4096;

    /// Compile a pattern as it is matched: anchored to the whole local part, case-insensitive,
    /// size-bounded. `Err` says why it is not usable.
    pub fn compile(pattern: &str) -> Result<Regex, String> {
        if pattern.is_empty() {
            return Err("pattern is empty".into());
        }
        if pattern.chars().count() > MAX_PATTERN_LEN {
            return Err(format!(
                "pattern is longer than {MAX_PATTERN_LEN} characters"
            ));
        }
        RegexBuilder::new(&format!("^(?:{pattern})$"))
            .case_insensitive(true)
            .size_limit(COMPILED_SIZE_LIMIT)
            .dfa_size_limit(COMPILED_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => {
                    format!("pattern compiles to more than {limit} bytes")
                }
                other => format!("invalid regular expression: {other}"),
            })
    }

    /// The alias-table key of the `order`-th pattern (oldest first) of `domain`. It contains a
    /// space, so it can never be a recipient address or collide with one.
    pub fn key(domain: &str, order: usize, pattern: &str) -> String {
        format!("{}{order:04} {pattern}", key_prefix(domain))
    }

    /// What every pattern key of `domain` starts with.
    pub fn key_prefix(domain: &str) -> String {
        format!("@{domain} ~")
    }

    /// The pattern of a pattern key, `None` for any other key.
    pub fn key_pattern(key: &str) -> Option<&str> {
        let (_, rest) = key.split_once(" ~")?;
        let (order, pattern) = rest.split_once(' ')?;
        order.bytes().all(|b| b.is_ascii_digit()).then_some(pattern)
    }

    static CACHE: Mutex<Option<HashMap<String, Option<Arc<Regex>>>>> = Mutex::new(None);

    /// The compiled pattern, from the cache; `None` if it does not compile (the compiler keeps
    /// such patterns out of the directory).
    pub fn cached(pattern: &str) -> Option<Arc<Regex>> {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let cache = cache.get_or_insert_with(HashMap::new);
        if let Some(regex) = cache.get(pattern) {
            return regex.clone();
        }
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        let regex = compile(pattern).ok().map(Arc::new);
        cache.insert(pattern.to_string(), regex.clone());
        regex
    }
}

/// Schema identifier written into every encoded directory.
pub const SCHEMA: &str = "virtmail.io/directory/v1";

/// Server-wide delivery settings (from the MailServer spec).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Name of the MailServer.
    pub server: String,
    /// Absolute directory prepended to every mailbox path.
    pub mailbox_base: String,
    /// Smallest accepted uid.
    pub minimum_uid: u32,
    /// mbox lock methods.
    pub mailbox_lock: Vec<LockMethod>,
    /// Largest mbox / Maildir file in bytes; 0 = none.
    pub mailbox_size_limit: u64,
    /// Extension delimiter set.
    pub recipient_delimiter: String,
}

/// A served domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    /// Postmaster contact address.
    pub postmaster: String,
    /// Folded address of the mailbox that receives mail for unknown local parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_all: Option<String>,
    /// Name of the MailDomain object.
    pub object: String,
}

/// Why an entry defers instead of delivering: mail waits in Postfix's queue until it is fixed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Deferral {
    /// Stable reason, e.g. `InvalidOwner`.
    pub reason: crate::compile::Reason,
    /// Human-readable detail.
    pub message: String,
}

/// A mailbox entry (Postfix's three tables `virtual_mailbox_maps`, `virtual_uid_maps`,
/// `virtual_gid_maps` in one record).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxEntry {
    /// Path relative to the base; ends in `/` for Maildir.
    pub path: String,
    /// Mailbox format.
    pub format: MailboxFormat,
    /// Owner uid (0 only in deferring entries that had none).
    pub uid: u32,
    /// Owner gid (0 only in deferring entries that had none).
    pub gid: u32,
    /// Quota in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// Mail is refused 450 4.2.1 while set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Set on an invalid object whose address is known: deliveries defer 4.3.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer: Option<Box<Deferral>>,
    /// Name of the Mailbox object (for status reports).
    pub object: String,
    /// The automatic reply, when the Mailbox has a usable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoreply: Option<Box<Autoreply>>,
}

/// A mailbox's automatic reply, as the agent sends it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Autoreply {
    /// Subject; absent: `Auto: <original subject>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Body text.
    pub body: String,
    /// First second (Unix time) mail is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// First second (Unix time) mail is no longer answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Least seconds between two replies to one sender.
    pub interval_seconds: u64,
}

/// An alias entry (Postfix `virtual_alias_maps`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AliasEntry {
    /// Destination addresses, as written (not folded).
    pub to: Vec<String>,
    /// Set on an invalid alias whose address is known: lookups answer a temporary error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer: Option<Deferral>,
    /// Name of the MailAlias object; absent for the implied postmaster alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// The compiled directory of one MailServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// Server-wide settings.
    pub settings: Settings,
    /// Served domains by folded name.
    pub domains: Table<Domain>,
    /// Mailboxes by folded address.
    pub mailboxes: Table<MailboxEntry>,
    /// Aliases by folded address (`local@domain` or `@domain`).
    pub aliases: Table<AliasEntry>,
}

/// Result of looking a recipient up in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a, T> {
    /// The key that matched (folded).
    pub key: &'a str,
    /// The entry.
    pub entry: &'a T,
}

impl Directory {
    /// A directory of a real server's shape, for tests and benchmarks: 100 domains
    /// (`domain<i>.test`), `mailboxes` mailboxes `user<i>@domain<i % 100>.test` (every fourth an
    /// mbox, the rest Maildirs; uids 5000–5999, gid 5000, 1 GiB quota) and one alias
    /// `sales@domain<i>.test` per domain. Only with the `fixtures` feature.
    #[cfg(any(test, feature = "fixtures"))]
    pub fn synthetic(mailboxes: usize) -> Directory {
        let mut d = Directory {
            settings: Settings {
                server: "mail".into(),
                mailbox_base: "/var/mail/vhosts".into(),
                minimum_uid: 100,
                mailbox_lock: vec![LockMethod::Fcntl, LockMethod::Dotlock],
                mailbox_size_limit: 51_200_000,
                recipient_delimiter: "+".into(),
            },
            domains: Table::new(),
            mailboxes: Table::new(),
            aliases: Table::new(),
        };
        for i in 0..100 {
            d.domains.insert(
                format!("domain{i}.test"),
                Domain {
                    postmaster: format!("admin@domain{i}.test"),
                    catch_all: None,
                    object: format!("d{i}"),
                },
            );
            d.aliases.insert(
                format!("sales@domain{i}.test"),
                AliasEntry {
                    to: vec![format!("user{i}@domain{i}.test")],
                    defer: None,
                    object: Some(format!("sales-{i}")),
                },
            );
        }
        for i in 0..mailboxes {
            let domain = i % 100;
            let mbox = i % 4 == 3;
            d.mailboxes.insert(
                format!("user{i}@domain{domain}.test"),
                MailboxEntry {
                    path: format!("domain{domain}.test/user{i}{}", if mbox { "" } else { "/" }),
                    format: if mbox {
                        MailboxFormat::Mbox
                    } else {
                        MailboxFormat::Maildir
                    },
                    uid: 5000 + (i as u32 % 1000),
                    gid: 5000,
                    quota: Some(1 << 30),
                    suspended: false,
                    defer: None,
                    object: format!("user{i}-domain{domain}"),
                    autoreply: None,
                },
            );
        }
        d
    }

    /// Look a recipient up in the mailbox table in Postfix's order (virtual(8) V3): the full address,
    /// the address without its extension, then the domain's catch-all mailbox.
    pub fn find_mailbox(&self, recipient: &str) -> Option<Found<'_, MailboxEntry>> {
        let folded = address::fold(recipient);
        if let Some(found) = self.find_exact(&self.mailboxes, &folded) {
            return Some(found);
        }
        let (_, domain) = address::split(&folded)?;
        let catch_all = self.domains.get(domain)?.catch_all.as_ref()?;
        let (key, entry) = self.mailboxes.get_key_value(catch_all)?;
        Some(Found { key, entry })
    }

    /// Look a recipient up in the alias table: the full address, the address without its
    /// extension, then `@domain`.
    pub fn find_alias(&self, recipient: &str) -> Option<Found<'_, AliasEntry>> {
        let folded = address::fold(recipient);
        if let Some(found) = self.find_exact(&self.aliases, &folded) {
            return Some(found);
        }
        let (local, domain) = address::split(&folded)?;
        // A specific mailbox wins over patterns and the `@domain` alias, as in Postfix where the
        // catch-all alias is only reached for addresses without an entry of their own.
        if self.find_exact(&self.mailboxes, &folded).is_some() {
            return None;
        }
        if let Some(found) = self.find_pattern_alias(local, domain) {
            return Some(found);
        }
        let (key, entry) = self.aliases.get_key_value(&format!("@{domain}"))?;
        Some(Found { key, entry })
    }

    /// The oldest pattern alias of `domain` whose pattern matches the (folded) local part, with
    /// or without its extension.
    pub fn find_pattern_alias(&self, local: &str, domain: &str) -> Option<Found<'_, AliasEntry>> {
        let prefix = pattern::key_prefix(domain);
        let stripped = address::strip_extension(
            &format!("{local}@{domain}"),
            &self.settings.recipient_delimiter,
        );
        let stripped_local = stripped.as_deref().and_then(address::split).map(|(l, _)| l);
        self.aliases
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .find(|(key, _)| {
                let Some(regex) = pattern::key_pattern(key).and_then(pattern::cached) else {
                    return false;
                };
                regex.is_match(local) || stripped_local.is_some_and(|l| regex.is_match(l))
            })
            .map(|(key, entry)| Found { key, entry })
    }

    /// The entry of `table` for the (folded) address itself, else for the address without its
    /// extension.
    fn find_exact<'a, T>(&self, table: &'a Table<T>, folded: &str) -> Option<Found<'a, T>> {
        let (key, entry) = table.get_key_value(folded).or_else(|| {
            let stripped = address::strip_extension(folded, &self.settings.recipient_delimiter)?;
            table.get_key_value(&stripped)
        })?;
        Some(Found { key, entry })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> MailboxEntry {
        MailboxEntry {
            path: path.into(),
            format: MailboxFormat::Maildir,
            uid: 5000,
            gid: 5000,
            quota: None,
            suspended: false,
            defer: None,
            object: path.into(),
            autoreply: None,
        }
    }

    fn directory() -> Directory {
        let mut d = Directory::synthetic(0);
        d.domains.clear();
        d.aliases.clear();
        d.domains.insert(
            "example.test".into(),
            Domain {
                postmaster: "admin@example.test".into(),
                catch_all: Some("info@example.test".into()),
                object: "example".into(),
            },
        );
        d.mailboxes.insert("alice@example.test".into(), entry("a/"));
        d.mailboxes.insert("info@example.test".into(), entry("i/"));
        d.aliases.insert(
            "@other.test".into(),
            AliasEntry {
                to: vec!["alice@example.test".into()],
                defer: None,
                object: None,
            },
        );
        d.domains.insert(
            "other.test".into(),
            Domain {
                postmaster: "a@example.test".into(),
                catch_all: None,
                object: "o".into(),
            },
        );
        d
    }

    #[test]
    fn v3_lookup_order_full_then_stripped_then_catch_all() {
        let d = directory();
        assert_eq!(
            d.find_mailbox("Alice@Example.TEST").map(|f| f.key),
            Some("alice@example.test")
        );
        assert_eq!(
            d.find_mailbox("alice+x@example.test").map(|f| f.key),
            Some("alice@example.test")
        );
        assert_eq!(
            d.find_mailbox("bob@example.test").map(|f| f.key),
            Some("info@example.test")
        );
        assert_eq!(d.find_mailbox("bob@nowhere.test").map(|f| f.key), None);
    }

    #[test]
    fn patterns_come_after_exact_addresses_and_before_the_catch_all() {
        let mut d = directory();
        let alias = |to: &str| AliasEntry {
            to: vec![to.into()],
            defer: None,
            object: Some(to.into()),
        };
        d.aliases.insert(
            pattern::key("example.test", 0, "sales-[a-z]+"),
            alias("older@example.test"),
        );
        d.aliases.insert(
            pattern::key("example.test", 1, "sales-.*|alice"),
            alias("newer@example.test"),
        );
        d.aliases
            .insert("@example.test".into(), alias("catchall@example.test"));
        let to = |rcpt: &str| d.find_alias(rcpt).map(|f| f.entry.to[0].clone());
        for (recipient, expected, why) in [
            (
                "sales-eu@example.test",
                Some("older"),
                "the oldest matching pattern",
            ),
            (
                "Sales-EU+x@example.test",
                Some("older"),
                "case-insensitive, without the extension",
            ),
            (
                "sales-1@example.test",
                Some("newer"),
                "only the newer pattern matches",
            ),
            (
                "xsales-eu@example.test",
                Some("catchall"),
                "anchored: the whole local part",
            ),
            (
                "alice@example.test",
                None,
                "an exact mailbox wins over a pattern",
            ),
            (
                "sales-eu@other.test",
                Some("alice"),
                "patterns are per domain",
            ),
        ] {
            let expected = expected.map(|local| format!("{local}@example.test"));
            assert_eq!(to(recipient), expected, "{recipient}: {why}");
        }
    }

    #[test]
    fn pattern_keys_round_trip_and_bad_patterns_are_refused() {
        let key = pattern::key("d.test", 7, "a b|c");
        assert_eq!(pattern::key_pattern(&key), Some("a b|c"));
        assert_eq!(pattern::key_pattern("alice@d.test"), None);
        assert!(
            pattern::compile("(")
                .unwrap_err()
                .contains("invalid regular expression")
        );
        assert!(pattern::compile(&"a".repeat(300)).is_err());
        assert!(
            pattern::compile("(?:[a-z]{100}){100}")
                .unwrap_err()
                .contains("compiles to more than")
        );
        assert!(pattern::compile("sales-[a-z]+").is_ok());
    }

    #[test]
    fn at_domain_alias_applies_only_without_own_entry() {
        let d = directory();
        assert_eq!(
            d.find_alias("x@other.test").map(|f| f.key),
            Some("@other.test")
        );
        assert!(d.find_alias("alice@example.test").is_none());
    }
}
