//! Re-encoding only what an edit changed. [`encode`](super::encode) serializes and hashes every
//! record of a server; at 100,000 mailboxes that is most of an edit's cost. An [`Encoder`] keeps
//! each record's line in the slot its key hashes to, so a new version re-serializes only the
//! records that differ and re-hashes only the shards they fall in. Its output is byte for byte
//! what [`encode`](super::encode) gives the same directory (a property test holds it to that);
//! whenever the shard count would change it simply encodes from scratch.

use std::collections::BTreeMap;

use super::{
    Data, Encoded, KEY_ALIASES, KEY_DOMAINS, KEY_MAILBOXES, SHARD_LIMIT, alias_line, assemble,
    base_buckets, bucket_of, counts, domain_line, mailbox_line, record_lines, record_size,
    shard_of,
};
use crate::directory::Directory;

/// Data keys in the order of [`Slot::lines`].
const KINDS: [&str; 3] = [KEY_DOMAINS, KEY_MAILBOXES, KEY_ALIASES];

/// The records of one shard slot, by kind, each key with its JSON line.
#[derive(Debug, Clone, Default)]
struct Slot {
    lines: [BTreeMap<String, String>; 3],
    /// Bytes of the lines of each kind.
    bytes: [usize; 3],
}

impl Slot {
    fn set(&mut self, kind: usize, key: &str, line: Option<String>) {
        let old = match line {
            Some(line) => {
                self.bytes[kind] += line.len();
                self.lines[kind].insert(key.to_string(), line)
            }
            None => self.lines[kind].remove(key),
        };
        if let Some(old) = old {
            self.bytes[kind] -= old.len();
        }
    }

    /// Bytes of the shard's ConfigMap data.
    fn size(&self) -> usize {
        (0..3)
            .filter(|&kind| !self.lines[kind].is_empty())
            .map(|kind| KINDS[kind].len() + self.bytes[kind])
            .sum()
    }

    fn data(&self) -> Data {
        let mut data = Data::new();
        for (kind, lines) in self.lines.iter().enumerate() {
            if lines.is_empty() {
                continue;
            }
            let mut text = String::with_capacity(self.bytes[kind]);
            for line in lines.values() {
                text.push_str(line);
            }
            data.insert(KINDS[kind].to_string(), text);
        }
        data
    }
}

/// A record that differs between two directories: kind, key, and its new line (none when it
/// is gone).
type Change = (usize, String, Option<String>);

/// What [`Encoder::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// Records added, changed or removed.
    pub records: usize,
    /// Shards serialized and hashed again.
    pub shards: usize,
    /// Whether everything was encoded from scratch (the shard count changed).
    pub full: bool,
}

/// The encoding of a server's directory, kept between versions.
#[derive(Debug, Clone)]
pub struct Encoder {
    server: String,
    slots: Vec<Slot>,
    /// Record bytes as [`encode`](super::encode) counts them to choose the shard count.
    total: usize,
    encoded: Encoded,
}

impl Encoder {
    /// Encode `directory` from scratch.
    pub fn new(directory: &Directory) -> Encoder {
        let records = record_lines(directory);
        let total: usize = records.iter().map(|(k, _, l)| record_size(k, l)).sum();
        let mut buckets = base_buckets(total);
        let mut records: Vec<(usize, String, String)> = records
            .into_iter()
            .map(|(data_key, key, line)| (kind_of(data_key), key.to_string(), line))
            .collect();
        let slots = loop {
            let mut slots = vec![Slot::default(); buckets];
            let mut sizes = vec![[0usize; 3]; buckets];
            for (kind, key, line) in &records {
                sizes[bucket_of(key, buckets)][*kind] += line.len();
            }
            let fits = sizes.iter().all(|bytes| {
                (0..3)
                    .filter(|&kind| bytes[kind] > 0)
                    .map(|kind| KINDS[kind].len() + bytes[kind])
                    .sum::<usize>()
                    <= SHARD_LIMIT
            });
            if fits {
                for (kind, key, line) in records.drain(..) {
                    slots[bucket_of(&key, buckets)].set(kind, &key, Some(line));
                }
                break slots;
            }
            buckets *= 2;
        };
        let server = &directory.settings.server;
        let shards = slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.size() > 0)
            .map(|(index, slot)| shard_of(server, index, slot.data()))
            .collect();
        Encoder {
            server: server.clone(),
            slots,
            total,
            encoded: assemble(counts(directory), &directory.settings, shards),
        }
    }

    /// The current encoding.
    pub fn encoded(&self) -> &Encoded {
        &self.encoded
    }

    /// Move from `old` (the directory this encoder last encoded) to `new`, re-encoding only the
    /// shards whose records changed.
    pub fn update(&mut self, old: &Directory, new: &Directory) -> Update {
        let changes = changes(old, new);
        self.apply(new, changes)
    }

    /// Move to `new`, which differs from the directory this encoder last encoded at most in
    /// the mailbox entries `keys` (and the settings): what an in-place compile reports.
    pub fn update_mailboxes<'k>(
        &mut self,
        new: &Directory,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Update {
        let changes = keys
            .into_iter()
            .map(|key| {
                let line = new.mailboxes.get(key).map(|e| mailbox_line(key, e));
                (1, key.to_string(), line)
            })
            .collect();
        self.apply(new, changes)
    }

    fn apply(&mut self, new: &Directory, changes: Vec<Change>) -> Update {
        let buckets = self.slots.len();
        let total = changes
            .iter()
            .fold(self.total as isize, |total, (kind, key, line)| {
                let data_key = KINDS[*kind];
                let before = self.slots[bucket_of(key, buckets)].lines[*kind]
                    .get(key)
                    .map_or(0, |l| record_size(data_key, l));
                let after = line.as_deref().map_or(0, |l| record_size(data_key, l));
                total + after as isize - before as isize
            }) as usize;
        // The shard count is chosen from the total (and doubled only for skew): when it would
        // change, or was doubled, every record moves; encode from scratch.
        if base_buckets(total) != buckets || new.settings.server != self.server {
            let records = changes.len();
            *self = Encoder::new(new);
            return self.full_update(records);
        }
        let mut dirty = vec![false; buckets];
        let records = changes.len();
        for (kind, key, line) in changes {
            let bucket = bucket_of(&key, buckets);
            self.slots[bucket].set(kind, &key, line);
            dirty[bucket] = true;
        }
        if self.slots.iter().any(|slot| slot.size() > SHARD_LIMIT) {
            *self = Encoder::new(new);
            return self.full_update(records);
        }
        self.total = total;
        let server = &new.settings.server;
        let mut kept = std::mem::take(&mut self.encoded.shards)
            .into_iter()
            .peekable();
        let mut shards = Vec::new();
        let mut encoded_again = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            let name = super::shard_name(server, index);
            let previous = kept.next_if(|shard| shard.name == name);
            if slot.size() == 0 {
                continue;
            }
            match previous {
                Some(shard) if !dirty[index] => shards.push(shard),
                _ => {
                    encoded_again += 1;
                    shards.push(shard_of(server, index, slot.data()));
                }
            }
        }
        self.encoded = assemble(counts(new), &new.settings, shards);
        Update {
            records,
            shards: encoded_again,
            full: false,
        }
    }

    fn full_update(&self, records: usize) -> Update {
        Update {
            records,
            shards: self.encoded.shards.len(),
            full: true,
        }
    }
}

fn kind_of(data_key: &str) -> usize {
    KINDS
        .iter()
        .position(|k| *k == data_key)
        .expect("a record's data key is one of the three")
}

/// Every record that differs between `old` and `new`, with its new line.
fn changes(old: &Directory, new: &Directory) -> Vec<Change> {
    let mut changes = Vec::new();
    diff(&old.domains, &new.domains, |key, entry| {
        changes.push((0, key.to_string(), entry.map(|e| domain_line(key, e))));
    });
    diff(&old.mailboxes, &new.mailboxes, |key, entry| {
        changes.push((1, key.to_string(), entry.map(|e| mailbox_line(key, e))));
    });
    diff(&old.aliases, &new.aliases, |key, entry| {
        changes.push((2, key.to_string(), entry.map(|e| alias_line(key, e))));
    });
    changes
}

/// Walk two sorted maps together, calling `changed` for each key whose entry differs (with the
/// new entry, none when removed).
fn diff<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    mut changed: impl FnMut(&str, Option<&T>),
) {
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some((gone, _)), None) => {
                changed(gone, None);
                old.next();
            }
            (None, Some((added, entry))) => {
                changed(added, Some(entry));
                new.next();
            }
            (Some((a, before)), Some((b, after))) => match a.cmp(b) {
                std::cmp::Ordering::Less => {
                    changed(a, None);
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    changed(b, Some(after));
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if before != after {
                        changed(b, Some(after));
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
