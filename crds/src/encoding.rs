//! ConfigMap encoding of the directory (docs/ARCHITECTURE.md): deterministic, readable with
//! `kubectl get cm -o yaml`, schema-versioned and sharded.
//!
//! The head ConfigMap `<server>-directory` carries the schema, the version, the settings and the
//! list of shards with their SHA-256. Each shard ConfigMap `<server>-directory-<NN>` holds JSON
//! Lines of domains, mailboxes and aliases. Records are spread over shards by a hash of their key,
//! so editing one mailbox rewrites one shard.
//!
//! Shard names are stable slots, not content-addressed: a pod that may not call the API gets the
//! directory through a projected ConfigMap volume, and a volume can only name ConfigMaps known
//! when the pod is created ([`MOUNT_SLOTS`] optional slots). Consistency does not come from the
//! names but from the hashes: a reader assembles the version the head names only when every
//! shard it lists is present with exactly the listed SHA-256, so a shard rewritten before its
//! head (or a head before its shards) is never served half-new.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::directory::{AliasEntry, Directory, Domain, MailboxEntry, SCHEMA, Settings};

/// Largest amount of data (keys + values) in one ConfigMap; the apiserver's limit is 1 MiB for
/// the whole object.
pub const SHARD_LIMIT: usize = 900 * 1024;
/// Size a shard is aimed at, leaving room for growth before the shard count changes.
pub const SHARD_TARGET: usize = 512 * 1024;

/// Head data keys.
pub const KEY_SCHEMA: &str = "schema";
/// Version of the directory content.
pub const KEY_VERSION: &str = "version";
/// Settings, as pretty JSON.
pub const KEY_SETTINGS: &str = "settings.json";
/// Shard list: one `<name> <sha256> <bytes>` line per shard.
pub const KEY_SHARDS: &str = "shards";
/// Counts, for people.
pub const KEY_SUMMARY: &str = "summary";
/// Shard data keys.
pub const KEY_DOMAINS: &str = "domains.jsonl";
/// Mailbox records.
pub const KEY_MAILBOXES: &str = "mailboxes.jsonl";
/// Alias records.
pub const KEY_ALIASES: &str = "aliases.jsonl";

/// Shard slots a projected volume lists (all optional). Sharding aims at [`SHARD_TARGET`] per
/// shard, so 64 slots hold about 32 MiB of records (some 200,000 mailboxes); a directory that
/// needs more grows the list to the next multiple of 64.
pub const MOUNT_SLOTS: usize = 64;

/// Annotation on each shard ConfigMap carrying the SHA-256 of its data (the head lists the same).
pub const ANNOTATION_SHARD_HASH: &str = "virtmail.io/shard-hash";

/// Label put on every directory ConfigMap, naming the server.
pub const LABEL_SERVER: &str = "virtmail.io/server";
/// Label distinguishing the head (`head`) from shards (`shard`).
pub const LABEL_ROLE: &str = "virtmail.io/directory";

/// ConfigMap data (the `data` map).
pub type Data = BTreeMap<String, String>;

/// One encoded shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// ConfigMap name.
    pub name: String,
    /// SHA-256 of the data, hex.
    pub hash: String,
    /// The data (shared: a version that keeps a shard keeps it without a copy).
    pub data: Arc<Data>,
}

/// An encoded directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Content version (first 16 hex digits of a SHA-256 over settings and shard hashes).
    pub version: String,
    /// Head ConfigMap name.
    pub head_name: String,
    /// Head data.
    pub head: Data,
    /// Shards, in the order the head lists them.
    pub shards: Vec<Shard>,
}

impl Encoded {
    /// Bytes of data across all shards.
    pub fn shard_bytes(&self) -> u64 {
        self.shards.iter().map(|s| data_size(&s.data) as u64).sum()
    }
}

/// Why a set of ConfigMaps is not a usable directory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The head lacks a key or has a wrong schema.
    #[error("directory head: {0}")]
    Head(String),
    /// A shard named by the head is not present.
    #[error("directory shard {0} is missing")]
    MissingShard(String),
    /// A shard's content does not match the hash the head names.
    #[error("directory shard {name} does not match its hash (want {want}, have {have})")]
    HashMismatch {
        /// Shard name.
        name: String,
        /// Hash in the head.
        want: String,
        /// Hash of the data present.
        have: String,
    },
    /// A record does not parse.
    #[error("directory shard {name}, {key} line {line}: {message}")]
    Record {
        /// Shard name.
        name: String,
        /// Data key.
        key: String,
        /// 1-based line.
        line: usize,
        /// Parser message.
        message: String,
    },
    /// The version does not match the content.
    #[error("directory version {want} does not match its content ({have})")]
    Version {
        /// Version in the head.
        want: String,
        /// Version computed.
        have: String,
    },
}

#[derive(Serialize, Deserialize)]
struct DomainRecord {
    domain: String,
    #[serde(flatten)]
    entry: Domain,
}

#[derive(Serialize, Deserialize)]
struct MailboxRecord {
    address: String,
    #[serde(flatten)]
    entry: MailboxEntry,
}

#[derive(Serialize, Deserialize)]
struct AliasRecord {
    address: String,
    #[serde(flatten)]
    entry: AliasEntry,
}

/// Name of the head ConfigMap of a server.
pub fn head_name(server: &str) -> String {
    format!("{server}-directory")
}

/// Name of shard slot `index` of a server.
pub fn shard_name(server: &str, index: usize) -> String {
    format!("{server}-directory-{index:02}")
}

/// Shard slots a mounted directory volume must list for `shards` shards: [`MOUNT_SLOTS`], or the
/// next multiple of it.
pub fn mount_slots(shards: usize) -> usize {
    shards.div_ceil(MOUNT_SLOTS).max(1) * MOUNT_SLOTS
}

/// Bytes of a ConfigMap's data (keys and values), as counted against the size limit.
pub fn data_size(data: &Data) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Hash of ConfigMap data: every key and value, length-prefixed, in key order.
pub fn data_hash(data: &Data) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn bucket_of(key: &str, buckets: usize) -> usize {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % buckets as u64) as usize
}

fn json_line<T: Serialize>(record: &T) -> String {
    let mut line = serde_json::to_string(record).expect("directory records always serialize");
    line.push('\n');
    line
}

fn settings_json(settings: &Settings) -> String {
    let mut text =
        serde_json::to_string_pretty(settings).expect("directory settings always serialize");
    text.push('\n');
    text
}

fn version_of(settings_json: &str, shard_hashes: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(SCHEMA.as_bytes());
    hasher.update([0]);
    hasher.update(settings_json.as_bytes());
    for hash in shard_hashes {
        hasher.update([0]);
        hasher.update(hash.as_bytes());
    }
    hex::encode(hasher.finalize())[..16].to_string()
}

/// One record of a directory: its data key, its key and its JSON line.
fn record_lines(directory: &Directory) -> Vec<(&'static str, &str, String)> {
    let mut records = Vec::new();
    for (domain, entry) in &directory.domains {
        records.push((KEY_DOMAINS, domain.as_str(), domain_line(domain, entry)));
    }
    for (address, entry) in &directory.mailboxes {
        records.push((
            KEY_MAILBOXES,
            address.as_str(),
            mailbox_line(address, entry),
        ));
    }
    for (address, entry) in &directory.aliases {
        records.push((KEY_ALIASES, address.as_str(), alias_line(address, entry)));
    }
    records
}

fn domain_line(domain: &str, entry: &Domain) -> String {
    json_line(&DomainRecord {
        domain: domain.to_string(),
        entry: entry.clone(),
    })
}

fn mailbox_line(address: &str, entry: &MailboxEntry) -> String {
    json_line(&MailboxRecord {
        address: address.to_string(),
        entry: entry.clone(),
    })
}

fn alias_line(address: &str, entry: &AliasEntry) -> String {
    json_line(&AliasRecord {
        address: address.to_string(),
        entry: entry.clone(),
    })
}

/// Bytes a record adds to its shard.
fn record_size(data_key: &str, line: &str) -> usize {
    data_key.len() + line.len()
}

/// How many shard slots the records get: one per [`SHARD_TARGET`] of record bytes, doubled
/// while a slot would exceed [`SHARD_LIMIT`] (skewed keys).
fn bucket_count(records: &[(&'static str, &str, String)]) -> usize {
    let total: usize = records.iter().map(|(k, _, l)| record_size(k, l)).sum();
    let mut buckets = base_buckets(total);
    loop {
        let mut sizes: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); buckets];
        for (data_key, key, line) in records {
            *sizes[bucket_of(key, buckets)].entry(data_key).or_default() += line.len();
        }
        let fits = sizes.iter().all(|bucket| {
            bucket
                .iter()
                .map(|(k, bytes)| k.len() + bytes)
                .sum::<usize>()
                <= SHARD_LIMIT
        });
        if fits {
            return buckets;
        }
        buckets *= 2;
    }
}

/// The bucket count a directory of `total` record bytes starts from.
fn base_buckets(total: usize) -> usize {
    total.div_ceil(SHARD_TARGET).max(1)
}

/// The shard of slot `index` holding `data`.
fn shard_of(server: &str, index: usize, data: Arc<Data>) -> Shard {
    Shard {
        name: shard_name(server, index),
        hash: data_hash(&data),
        data,
    }
}

/// The head for `shards` (non-empty, in slot order) and its version.
fn assemble(directory_counts: [usize; 3], settings: &Settings, shards: Vec<Shard>) -> Encoded {
    let settings_text = settings_json(settings);
    let hashes: Vec<&str> = shards.iter().map(|s| s.hash.as_str()).collect();
    let version = version_of(&settings_text, &hashes);
    let mut head = Data::new();
    head.insert(KEY_SCHEMA.into(), SCHEMA.into());
    head.insert(KEY_VERSION.into(), version.clone());
    head.insert(KEY_SETTINGS.into(), settings_text);
    head.insert(
        KEY_SHARDS.into(),
        shards
            .iter()
            .map(|s| format!("{} {} {}\n", s.name, s.hash, data_size(&s.data)))
            .collect(),
    );
    let [domains, mailboxes, aliases] = directory_counts;
    head.insert(
        KEY_SUMMARY.into(),
        format!(
            "domains={domains} mailboxes={mailboxes} aliases={aliases} shards={}\n",
            shards.len()
        ),
    );
    Encoded {
        version,
        head_name: head_name(&settings.server),
        head,
        shards,
    }
}

fn counts(directory: &Directory) -> [usize; 3] {
    [
        directory.domains.len(),
        directory.mailboxes.len(),
        directory.aliases.len(),
    ]
}

/// Encode a directory for ConfigMaps. Deterministic: equal directories give equal output.
pub fn encode(directory: &Directory) -> Encoded {
    let server = &directory.settings.server;
    let records = record_lines(directory);
    let buckets = bucket_count(&records);
    let mut shard_data: Vec<Data> = vec![Data::new(); buckets];
    for (data_key, record_key, line) in &records {
        shard_data[bucket_of(record_key, buckets)]
            .entry((*data_key).to_string())
            .or_default()
            .push_str(line);
    }
    let shards: Vec<Shard> = shard_data
        .into_iter()
        .enumerate()
        .filter(|(_, data)| !data.is_empty())
        .map(|(index, data)| shard_of(server, index, Arc::new(data)))
        .collect();
    assemble(counts(directory), &directory.settings, shards)
}

/// A shard the head names: `(name, sha256)`.
pub fn shard_list(head: &Data) -> Result<Vec<(String, String)>, DecodeError> {
    let text = head
        .get(KEY_SHARDS)
        .ok_or_else(|| DecodeError::Head("no shards key".into()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(name), Some(hash)) => Ok((name.to_string(), hash.to_string())),
                _ => Err(DecodeError::Head(format!("bad shard line {line:?}"))),
            }
        })
        .collect()
}

/// The version a head names.
pub fn head_version(head: &Data) -> Result<&str, DecodeError> {
    head.get(KEY_VERSION)
        .map(String::as_str)
        .ok_or_else(|| DecodeError::Head("no version key".into()))
}

fn parse_lines<T: for<'de> Deserialize<'de>>(
    shard: &str,
    data: &Data,
    key: &str,
    mut insert: impl FnMut(T),
) -> Result<(), DecodeError> {
    let Some(text) = data.get(key) else {
        return Ok(());
    };
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| DecodeError::Record {
            name: shard.to_string(),
            key: key.to_string(),
            line: number + 1,
            message: e.to_string(),
        })?;
        insert(record);
    }
    Ok(())
}

/// Decode a directory from its head and a shard source. Refuses a partial or mismatched set:
/// every shard the head names must be present with exactly the named hash.
pub fn decode<'a>(
    head: &Data,
    shard: impl Fn(&str) -> Option<&'a Data>,
) -> Result<Directory, DecodeError> {
    match head.get(KEY_SCHEMA) {
        Some(schema) if schema == SCHEMA => {}
        Some(other) => return Err(DecodeError::Head(format!("unsupported schema {other:?}"))),
        None => return Err(DecodeError::Head("no schema key".into())),
    }
    let version = head_version(head)?;
    let settings_text = head
        .get(KEY_SETTINGS)
        .ok_or_else(|| DecodeError::Head("no settings".into()))?;
    let settings: Settings = serde_json::from_str(settings_text)
        .map_err(|e| DecodeError::Head(format!("settings: {e}")))?;
    if !crate::resources::valid_object_name(&settings.server) {
        return Err(DecodeError::Head(format!(
            "settings: server {:?} is not an object name",
            settings.server
        )));
    }
    let list = shard_list(head)?;
    let mut directory = Directory {
        settings,
        domains: BTreeMap::new(),
        mailboxes: BTreeMap::new(),
        aliases: BTreeMap::new(),
    };
    for (name, want) in &list {
        let data = shard(name).ok_or_else(|| DecodeError::MissingShard(name.clone()))?;
        let have = data_hash(data);
        if &have != want {
            return Err(DecodeError::HashMismatch {
                name: name.clone(),
                want: want.clone(),
                have,
            });
        }
        parse_lines(name, data, KEY_DOMAINS, |r: DomainRecord| {
            directory.domains.insert(r.domain, r.entry);
        })?;
        parse_lines(name, data, KEY_MAILBOXES, |r: MailboxRecord| {
            directory.mailboxes.insert(r.address, r.entry);
        })?;
        parse_lines(name, data, KEY_ALIASES, |r: AliasRecord| {
            directory.aliases.insert(r.address, r.entry);
        })?;
    }
    let hashes: Vec<&str> = list.iter().map(|(_, h)| h.as_str()).collect();
    let have = version_of(settings_text, &hashes);
    if have != version {
        return Err(DecodeError::Version {
            want: version.to_string(),
            have,
        });
    }
    Ok(directory)
}

/// The version [`encode`] gives a directory.
pub fn version(directory: &Directory) -> String {
    encode(directory).version
}

mod incremental;
pub use incremental::Encoder;

#[cfg(test)]
mod tests;
