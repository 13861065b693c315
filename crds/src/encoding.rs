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

use crate::directory::{
    AliasEntry, Directory, Domain, MailboxEntry, Part, SCHEMA, Settings, Table, slot_of,
};

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
/// How many shard slots the records are spread over (a shard's number is its slot). A head
/// without it (written before it existed) is decoded whole, without reusing a previous version's
/// parts.
pub const KEY_SLOTS: &str = "slots";
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
            *sizes[slot_of(key, buckets)].entry(data_key).or_default() += line.len();
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

/// The head for `shards` (non-empty, in slot order, of `slots` slots) and its version.
fn assemble(
    directory_counts: [usize; 3],
    settings: &Settings,
    slots: usize,
    shards: Vec<Shard>,
) -> Encoded {
    let settings_text = settings_json(settings);
    let hashes: Vec<&str> = shards.iter().map(|s| s.hash.as_str()).collect();
    let version = version_of(&settings_text, &hashes);
    let mut head = Data::new();
    head.insert(KEY_SCHEMA.into(), SCHEMA.into());
    head.insert(KEY_VERSION.into(), version.clone());
    head.insert(KEY_SETTINGS.into(), settings_text);
    head.insert(KEY_SLOTS.into(), slots.to_string());
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
        shard_data[slot_of(record_key, buckets)]
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
    assemble(counts(directory), &directory.settings, buckets, shards)
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

/// Most shard slots a head may name: far beyond any directory the apiserver can hold, and small
/// enough that a forged head cannot make a reader allocate much.
const MAX_SLOTS: usize = 1 << 16;

/// The shards a directory was decoded from, by slot (`None` for an empty slot): name and hash,
/// so that the next version can take the parts of the shards that kept their hash. Empty for a
/// head that named no slot count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardHashes(Vec<Option<(String, String)>>);

impl ShardHashes {
    /// Whether slot `slot` of `slots` was decoded from data with `hash`.
    fn holds(&self, slots: usize, slot: usize, hash: &str) -> bool {
        self.0.len() == slots
            && self
                .0
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|(_, held)| held == hash)
    }

    /// Whether the shard `name` with content `hash` was decoded into this directory, so a
    /// reader need not keep its data.
    pub fn holds_shard(&self, name: &str, hash: &str) -> bool {
        self.0
            .iter()
            .flatten()
            .any(|(held_name, held_hash)| held_name == name && held_hash == hash)
    }
}

/// A decoded directory, with what the next decode may take from it.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The directory.
    pub directory: Directory,
    /// The hash of each slot's shard.
    pub hashes: ShardHashes,
    /// Shards decoded from their data.
    pub decoded: usize,
    /// Shards whose parts were taken from the previous version.
    pub reused: usize,
}

/// What a head describes.
struct Layout<'h> {
    version: &'h str,
    settings_text: &'h str,
    settings: Settings,
    /// The slot count, if the head names one.
    slots: Option<usize>,
    /// Each listed shard's name, hash and slot (its position when the head names no slot count).
    shards: Vec<(String, String, usize)>,
}

impl Layout<'_> {
    /// Whether `previous` holds the part of listed shard `slot` with hash `hash`.
    fn reusable(&self, previous: &ShardHashes, slot: usize, hash: &str) -> bool {
        self.slots
            .is_some_and(|slots| previous.holds(slots, slot, hash))
    }
}

fn layout(head: &Data) -> Result<Layout<'_>, DecodeError> {
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
    let slots = match head.get(KEY_SLOTS) {
        None => None,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(slots) if (1..=MAX_SLOTS).contains(&slots) => Some(slots),
            _ => return Err(DecodeError::Head(format!("bad slot count {text:?}"))),
        },
    };
    let mut taken = vec![false; slots.unwrap_or(0)];
    let shards = shard_list(head)?
        .into_iter()
        .enumerate()
        .map(|(position, (name, hash))| {
            let Some(slots) = slots else {
                return Ok((name, hash, position));
            };
            let slot = shard_slot(&settings.server, &name)
                .filter(|slot| *slot < slots && !std::mem::replace(&mut taken[*slot], true))
                .ok_or_else(|| {
                    DecodeError::Head(format!(
                        "shard {name} is not one of {slots} slots, or is listed twice"
                    ))
                })?;
            Ok((name, hash, slot))
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(Layout {
        version,
        settings_text,
        settings,
        slots,
        shards,
    })
}

/// The slot of a shard named as [`shard_name`] names slots.
fn shard_slot(server: &str, name: &str) -> Option<usize> {
    let digits = name.strip_prefix(server)?.strip_prefix("-directory-")?;
    let slot: usize = digits.parse().ok()?;
    (shard_name(server, slot) == name).then_some(slot)
}

/// The shards of `head` a reader must read to decode it: those `previous` does not already hold
/// with the same hash.
pub fn shards_to_read(
    head: &Data,
    previous: &ShardHashes,
) -> Result<Vec<(String, String)>, DecodeError> {
    let layout = layout(head)?;
    Ok(layout
        .shards
        .iter()
        .filter(|(_, hash, slot)| !layout.reusable(previous, *slot, hash))
        .map(|(name, hash, _)| (name.clone(), hash.clone()))
        .collect())
}

/// A JSON Lines record: its key and entry.
trait Record: for<'de> Deserialize<'de> {
    type Entry;
    fn into_pair(self) -> (String, Self::Entry);
}

impl Record for DomainRecord {
    type Entry = Domain;
    fn into_pair(self) -> (String, Domain) {
        (self.domain, self.entry)
    }
}

impl Record for MailboxRecord {
    type Entry = MailboxEntry;
    fn into_pair(self) -> (String, MailboxEntry) {
        (self.address, self.entry)
    }
}

impl Record for AliasRecord {
    type Entry = AliasEntry;
    fn into_pair(self) -> (String, AliasEntry) {
        (self.address, self.entry)
    }
}

/// Parse the `data_key` records of shard `name` into `part`; with `slot = Some((slot, slots))`
/// every key must belong in that slot, so that a lookup finds it where it looks.
fn parse_into<R: Record>(
    name: &str,
    data: &Data,
    data_key: &str,
    slot: Option<(usize, usize)>,
    part: &mut Part<R::Entry>,
) -> Result<(), DecodeError> {
    let Some(text) = data.get(data_key) else {
        return Ok(());
    };
    let error = |line: usize, message: String| DecodeError::Record {
        name: name.to_string(),
        key: data_key.to_string(),
        line,
        message,
    };
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let record: R = serde_json::from_str(line).map_err(|e| error(number + 1, e.to_string()))?;
        let (key, entry) = record.into_pair();
        if let Some((slot, slots)) = slot {
            let belongs = slot_of(&key, slots);
            if belongs != slot {
                return Err(error(
                    number + 1,
                    format!("{key:?} belongs in slot {belongs} of {slots}, not {slot}"),
                ));
            }
        }
        part.insert(key, entry);
    }
    Ok(())
}

/// Each table's parts while a directory is decoded: taken from the previous version, or parsed.
struct Parts<T> {
    taken: Vec<Option<Arc<Part<T>>>>,
    parsed: Vec<Part<T>>,
}

impl<T> Parts<T> {
    fn new(slots: usize) -> Self {
        Parts {
            taken: (0..slots).map(|_| None).collect(),
            parsed: (0..slots).map(|_| Part::new()).collect(),
        }
    }

    fn into_table(self) -> Table<T> {
        Table::from_parts(
            self.taken
                .into_iter()
                .zip(self.parsed)
                .map(|(taken, parsed)| taken.unwrap_or_else(|| Arc::new(parsed)))
                .collect(),
        )
    }
}

/// Decode a directory from its head and a shard source. Refuses a partial or mismatched set:
/// every shard the head names must be present with exactly the named hash.
pub fn decode<'a>(
    head: &Data,
    shard: impl Fn(&str) -> Option<&'a Data>,
) -> Result<Directory, DecodeError> {
    decode_reusing(head, shard, None).map(|decoded| decoded.directory)
}

/// [`decode`], taking from `previous` (a directory and the hashes it was decoded from) the parts
/// of every shard whose hash did not change: only the other shards are read, verified and
/// parsed, and the new directory shares the taken parts with the previous one.
pub fn decode_reusing<'a>(
    head: &Data,
    shard: impl Fn(&str) -> Option<&'a Data>,
    previous: Option<(&Directory, &ShardHashes)>,
) -> Result<Decoded, DecodeError> {
    let layout = layout(head)?;
    let slots = layout.slots.unwrap_or(1);
    let mut domains = Parts::new(slots);
    let mut mailboxes = Parts::new(slots);
    let mut aliases = Parts::new(slots);
    let mut hashes = vec![None; layout.slots.unwrap_or(0)];
    let (mut decoded, mut reused) = (0, 0);
    for (name, want, listed_slot) in &layout.shards {
        if let Some(slot) = hashes.get_mut(*listed_slot) {
            *slot = Some((name.clone(), want.clone()));
        }
        let reusable = previous.filter(|(directory, hashes)| {
            layout.reusable(hashes, *listed_slot, want)
                && [
                    directory.domains.parts().len(),
                    directory.mailboxes.parts().len(),
                    directory.aliases.parts().len(),
                ] == [slots; 3]
        });
        if let Some((directory, _)) = reusable {
            let slot = *listed_slot;
            domains.taken[slot] = Some(directory.domains.parts()[slot].clone());
            mailboxes.taken[slot] = Some(directory.mailboxes.parts()[slot].clone());
            aliases.taken[slot] = Some(directory.aliases.parts()[slot].clone());
            reused += 1;
            continue;
        }
        let data = shard(name).ok_or_else(|| DecodeError::MissingShard(name.clone()))?;
        let have = data_hash(data);
        if &have != want {
            return Err(DecodeError::HashMismatch {
                name: name.clone(),
                want: want.clone(),
                have,
            });
        }
        // Without a slot count every record goes to the one part.
        let (slot, check) = match layout.slots {
            Some(slots) => (*listed_slot, Some((*listed_slot, slots))),
            None => (0, None),
        };
        parse_into::<DomainRecord>(name, data, KEY_DOMAINS, check, &mut domains.parsed[slot])?;
        parse_into::<MailboxRecord>(
            name,
            data,
            KEY_MAILBOXES,
            check,
            &mut mailboxes.parsed[slot],
        )?;
        parse_into::<AliasRecord>(name, data, KEY_ALIASES, check, &mut aliases.parsed[slot])?;
        decoded += 1;
    }
    let hashes_listed: Vec<&str> = layout.shards.iter().map(|(_, h, _)| h.as_str()).collect();
    let have = version_of(layout.settings_text, &hashes_listed);
    if have != layout.version {
        return Err(DecodeError::Version {
            want: layout.version.to_string(),
            have,
        });
    }
    Ok(Decoded {
        directory: Directory {
            settings: layout.settings,
            domains: domains.into_table(),
            mailboxes: mailboxes.into_table(),
            aliases: aliases.into_table(),
        },
        hashes: ShardHashes(hashes),
        decoded,
        reused,
    })
}

/// The version [`encode`] gives a directory.
pub fn version(directory: &Directory) -> String {
    encode(directory).version
}

mod incremental;
pub use incremental::Encoder;

#[cfg(test)]
mod tests;
