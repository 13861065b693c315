//! Re-encoding only what an edit changed. [`encode`](super::encode) serializes and hashes every
//! record of a server; at 100,000 mailboxes that is most of an edit's cost. An [`Encoder`] keeps
//! where each record's line is in the shard its key hashes to, so a new version re-serializes
//! only the records that differ and rebuilds and re-hashes only the shards they fall in. Its
//! output is byte for byte what [`encode`](super::encode) gives the same directory (a property test holds it to that);
//! whenever the shard count would change it simply encodes from scratch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Data, Encoded, KEY_ALIASES, KEY_DOMAINS, KEY_MAILBOXES, SHARD_LIMIT, alias_line, assemble,
    base_buckets, bucket_count, counts, data_size, domain_line, mailbox_line, record_lines,
    record_size, shard_name, shard_of,
};
use crate::directory::{Directory, Table, slot_of};

/// Data keys in the order of [`Slot::index`].
const KINDS: [&str; 3] = [KEY_DOMAINS, KEY_MAILBOXES, KEY_ALIASES];

/// Where each record of one shard slot is: per kind, its key and the offset and length of its
/// line in the shard's data (the data itself is shared with the encoded shard, so the lines are
/// held once).
#[derive(Debug, Clone, Default)]
struct Slot {
    index: [BTreeMap<Box<str>, (u32, u32)>; 3],
    /// The shard's data (none while the slot is empty).
    data: Option<Arc<Data>>,
}

impl Slot {
    /// The length of the line of `key`, if the slot holds it.
    fn line_len(&self, kind: usize, key: &str) -> Option<usize> {
        self.index[kind].get(key).map(|&(_, len)| len as usize)
    }

    /// The slot with `changes` (per kind: key → new line or none) applied: one merge of the
    /// old lines and the changes, both in key order, into the new text.
    fn with(self, changes: [BTreeMap<String, Option<String>>; 3]) -> Slot {
        let mut slot = Slot::default();
        let mut data = Data::new();
        for (kind, (index, changes)) in self.index.into_iter().zip(changes).enumerate() {
            let old = self
                .data
                .as_ref()
                .and_then(|d| d.get(KINDS[kind]))
                .map_or("", String::as_str);
            let mut text = String::with_capacity(old.len());
            let mut add = |key: Box<str>, line: &str, index: &mut BTreeMap<Box<str>, _>| {
                index.insert(key, (text.len() as u32, line.len() as u32));
                text.push_str(line);
            };
            let mut changes = changes.into_iter().peekable();
            for (key, (start, len)) in index {
                while let Some((changed, _)) = changes.peek()
                    && **changed < *key
                {
                    let (changed, line) = changes.next().expect("peeked");
                    if let Some(line) = line {
                        add(changed.into(), &line, &mut slot.index[kind]);
                    }
                }
                match changes.next_if(|(changed, _)| **changed == *key) {
                    Some((_, Some(line))) => add(key, &line, &mut slot.index[kind]),
                    Some((_, None)) => {}
                    None => add(
                        key,
                        &old[start as usize..(start + len) as usize],
                        &mut slot.index[kind],
                    ),
                }
            }
            for (changed, line) in changes {
                if let Some(line) = line {
                    add(changed.into(), &line, &mut slot.index[kind]);
                }
            }
            if !text.is_empty() {
                data.insert(KINDS[kind].to_string(), text);
            }
        }
        slot.data = (!data.is_empty()).then(|| Arc::new(data));
        slot
    }

    /// Bytes of the shard's ConfigMap data.
    fn size(&self) -> usize {
        self.data.as_deref().map_or(0, data_size)
    }

    /// Record bytes as [`encode`](super::encode) counts them to choose the shard count: each
    /// line with its data key.
    fn record_bytes(&self) -> usize {
        (0..3)
            .map(|kind| self.index[kind].len() * KINDS[kind].len())
            .sum::<usize>()
            + self
                .data
                .as_deref()
                .map_or(0, |d| d.values().map(String::len).sum())
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
    encoded: Encoded,
}

impl Encoder {
    /// Encode `directory` from scratch.
    pub fn new(directory: &Directory) -> Encoder {
        let records = record_lines(directory);
        let buckets = bucket_count(&records);
        let mut lines: Vec<[BTreeMap<String, Option<String>>; 3]> =
            (0..buckets).map(|_| Default::default()).collect();
        for (data_key, key, line) in records {
            lines[slot_of(key, buckets)][kind_of(data_key)].insert(key.to_string(), Some(line));
        }
        let slots: Vec<Slot> = lines
            .into_iter()
            .map(|lines| Slot::default().with(lines))
            .collect();
        let server = &directory.settings.server;
        let shards = slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| Some(shard_of(server, index, slot.data.clone()?)))
            .collect();
        Encoder {
            server: server.clone(),
            slots,
            encoded: assemble(counts(directory), &directory.settings, buckets, shards),
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
        self.update_entries(new, keys, [])
    }

    /// Move to `new`, which differs from the directory this encoder last encoded at most in
    /// the mailbox entries `mailboxes` and the alias entries `aliases` (and the settings).
    pub fn update_entries<'k>(
        &mut self,
        new: &Directory,
        mailboxes: impl IntoIterator<Item = &'k str>,
        aliases: impl IntoIterator<Item = &'k str>,
    ) -> Update {
        let mailboxes = mailboxes.into_iter().map(|key| {
            let line = new.mailboxes.get(key).map(|e| mailbox_line(key, e));
            (1, key.to_string(), line)
        });
        let aliases = aliases.into_iter().map(|key| {
            let line = new.aliases.get(key).map(|e| alias_line(key, e));
            (2, key.to_string(), line)
        });
        self.apply(new, mailboxes.chain(aliases).collect())
    }

    fn apply(&mut self, new: &Directory, changes: Vec<Change>) -> Update {
        let buckets = self.slots.len();
        let before: usize = self.slots.iter().map(Slot::record_bytes).sum();
        let total = changes
            .iter()
            .fold(before as isize, |total, (kind, key, line)| {
                let data_key = KINDS[*kind];
                let before = self.slots[slot_of(key, buckets)]
                    .line_len(*kind, key)
                    .map_or(0, |len| data_key.len() + len);
                let after = line.as_deref().map_or(0, |l| record_size(data_key, l));
                total + after as isize - before as isize
            }) as usize;
        let records = changes.len();
        // The shard count is chosen from the total (and doubled only for skew): when it would
        // change, or was doubled, every record moves; encode from scratch.
        if base_buckets(total) != buckets || new.settings.server != self.server {
            *self = Encoder::new(new);
            return self.full_update(records);
        }
        let mut pending: BTreeMap<usize, [BTreeMap<String, Option<String>>; 3]> = BTreeMap::new();
        for (kind, key, line) in changes {
            pending.entry(slot_of(&key, buckets)).or_default()[kind].insert(key, line);
        }
        let rebuilt: Vec<(usize, Slot)> = pending
            .into_iter()
            .map(|(bucket, changes)| {
                (
                    bucket,
                    std::mem::take(&mut self.slots[bucket]).with(changes),
                )
            })
            .collect();
        if rebuilt.iter().any(|(_, slot)| slot.size() > SHARD_LIMIT) {
            *self = Encoder::new(new);
            return self.full_update(records);
        }
        let encoded_again = rebuilt.len();
        for (bucket, slot) in rebuilt {
            self.slots[bucket] = slot;
        }
        let server = &new.settings.server;
        let mut kept = std::mem::take(&mut self.encoded.shards)
            .into_iter()
            .peekable();
        let mut shards = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let name = shard_name(server, index);
            let previous = kept.next_if(|shard| shard.name == name);
            let Some(data) = &slot.data else {
                continue;
            };
            match previous {
                Some(shard) if Arc::ptr_eq(&shard.data, data) => shards.push(shard),
                _ => shards.push(shard_of(server, index, data.clone())),
            }
        }
        self.encoded = assemble(counts(new), &new.settings, buckets, shards);
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
fn diff<T: PartialEq>(old: &Table<T>, new: &Table<T>, mut changed: impl FnMut(&str, Option<&T>)) {
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
