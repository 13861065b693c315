//! One table of the directory (domains, mailboxes or aliases): a sorted map kept in parts.
//!
//! A directory published in shards is decoded into one part per shard slot, each part an `Arc`.
//! A new version whose shard kept its hash takes the previous version's part as it is, so two
//! versions alive at once (during a swap, or while a provisioning round walks the old one) share
//! every part that did not change instead of holding two copies, and only changed shards are
//! decoded. A key lives in the part its shard slot names ([`slot_of`], the same hash the encoder
//! spreads records with), so a lookup reads one part.
//!
//! To every other reader a table is a `BTreeMap`: iteration is in key order across parts, and
//! equality compares content, never the partition. A table built in code (the compiler, tests)
//! has one part.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::iter::Peekable;
use std::ops::RangeBounds;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// One part of a table.
pub type Part<T> = BTreeMap<String, T>;

/// The slot of `key` among `slots`: the first 8 bytes of its SHA-256, modulo `slots`.
pub fn slot_of(key: &str, slots: usize) -> usize {
    if slots <= 1 {
        return 0;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % slots as u64) as usize
}

/// A sorted map from folded keys to `T`, in parts shared between directory versions.
#[derive(Clone)]
pub struct Table<T> {
    /// One per slot; never empty.
    parts: Vec<Arc<Part<T>>>,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            parts: vec![Arc::new(BTreeMap::new())],
            len: 0,
        }
    }
}

impl<T> Table<T> {
    /// An empty table of one part.
    pub fn new() -> Self {
        Self::default()
    }

    /// A table of the given parts, slot `i` being `parts[i]`. The caller has put every key in
    /// the part [`slot_of`] names (the decoder checks each record).
    pub fn from_parts(parts: Vec<Arc<Part<T>>>) -> Self {
        let parts = if parts.is_empty() {
            vec![Arc::new(BTreeMap::new())]
        } else {
            parts
        };
        let len = parts.iter().map(|p| p.len()).sum();
        Table { parts, len }
    }

    /// The parts, by slot.
    pub fn parts(&self) -> &[Arc<Part<T>>] {
        &self.parts
    }

    fn slot<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> usize {
        slot_of(key.as_ref(), self.parts.len())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&T>
    where
        String: Borrow<Q>,
        Q: Ord + AsRef<str> + ?Sized,
    {
        self.parts[self.slot(key)].get(key)
    }

    /// The stored key and entry of `key`.
    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&String, &T)>
    where
        String: Borrow<Q>,
        Q: Ord + AsRef<str> + ?Sized,
    {
        self.parts[self.slot(key)].get_key_value(key)
    }

    /// Whether `key` has an entry.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Ord + AsRef<str> + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter::merge(self.parts.iter().map(|p| p.iter()))
    }

    /// Entries whose key lies in `range`, in key order.
    pub fn range<R>(&self, range: R) -> Iter<'_, T, btree_map::Range<'_, String, T>>
    where
        R: RangeBounds<String> + Clone,
    {
        Iter::merge(self.parts.iter().map(|p| p.range(range.clone())))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(k, _)| k)
    }

    /// Entries in key order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, v)| v)
    }
}

impl<T: Clone> Table<T> {
    /// The part `key` belongs to, unshared first (a copy when another version holds it).
    fn part_mut(&mut self, key: &str) -> &mut Part<T> {
        let slot = self.slot(key);
        Arc::make_mut(&mut self.parts[slot])
    }

    /// Set the entry of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: String, value: T) -> Option<T> {
        let old = self.part_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove the entry of `key`.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<T>
    where
        String: Borrow<Q>,
        Q: Ord + AsRef<str> + ?Sized,
    {
        let old = self.part_mut(key.as_ref()).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The entry of `key`, to change in place.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut T>
    where
        String: Borrow<Q>,
        Q: Ord + AsRef<str> + ?Sized,
    {
        if !self.contains_key(key) {
            return None;
        }
        self.part_mut(key.as_ref()).get_mut(key)
    }

    /// Every entry, to change in place (part by part: not in key order).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.parts
            .iter_mut()
            .flat_map(|p| Arc::make_mut(p).values_mut())
    }

    /// Remove every entry (one part remains).
    pub fn clear(&mut self) {
        *self = Table::new();
    }
}

impl<T: Clone> Extend<(String, T)> for Table<T> {
    fn extend<I: IntoIterator<Item = (String, T)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

impl<T: Clone> FromIterator<(String, T)> for Table<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(entries: I) -> Self {
        let mut table = Table::new();
        table.extend(entries);
        table
    }
}

impl<T: Clone> From<BTreeMap<String, T>> for Table<T> {
    fn from(map: BTreeMap<String, T>) -> Self {
        Table::from_parts(vec![Arc::new(map)])
    }
}

impl<'a, T> IntoIterator for &'a Table<T> {
    type Item = (&'a String, &'a T);
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T, Q> std::ops::Index<&Q> for Table<T>
where
    String: Borrow<Q>,
    Q: Ord + AsRef<str> + ?Sized,
{
    type Output = T;
    fn index(&self, key: &Q) -> &T {
        self.get(key).expect("no entry for the key")
    }
}

impl<T: PartialEq> PartialEq for Table<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Eq> Eq for Table<T> {}

impl<T: fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<T: Serialize> Serialize for Table<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, T: Deserialize<'de> + Clone> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(Table::from)
    }
}

/// Entries of several parts merged into key order.
#[derive(Debug)]
pub struct Iter<'a, T: 'a, I = btree_map::Iter<'a, String, T>>
where
    I: Iterator<Item = (&'a String, &'a T)>,
{
    parts: Vec<Peekable<I>>,
}

impl<'a, T: 'a, I: Iterator<Item = (&'a String, &'a T)>> Iter<'a, T, I> {
    fn merge(parts: impl Iterator<Item = I>) -> Self {
        Iter {
            parts: parts.map(Iterator::peekable).collect(),
        }
    }
}

impl<'a, T: 'a, I: Iterator<Item = (&'a String, &'a T)>> Iterator for Iter<'a, T, I> {
    type Item = (&'a String, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        // Parts hold disjoint keys, so the smallest head is the next entry; a directory has tens
        // of parts, so a scan beats a heap.
        let mut smallest: Option<(usize, &'a String)> = None;
        for (index, part) in self.parts.iter_mut().enumerate() {
            if let Some((key, _)) = part.peek()
                && smallest.is_none_or(|(_, best)| *key < best)
            {
                smallest = Some((index, key));
            }
        }
        self.parts[smallest?.0].next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parted(entries: &[(&str, u32)], slots: usize) -> Table<u32> {
        let mut parts = vec![BTreeMap::new(); slots];
        for (key, value) in entries {
            parts[slot_of(key, slots)].insert(key.to_string(), *value);
        }
        Table::from_parts(parts.into_iter().map(Arc::new).collect())
    }

    const ENTRIES: &[(&str, u32)] = &[
        ("a@x.test", 1),
        ("b@x.test", 2),
        ("@y.test ~0000 a.*", 3),
        ("@y.test ~0001 b.*", 4),
        ("c@y.test", 5),
        ("d@z.test", 6),
    ];

    #[test]
    fn a_table_in_parts_reads_as_one_sorted_map() {
        let whole: BTreeMap<String, u32> =
            ENTRIES.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        for slots in [1, 2, 3, 7] {
            let table = parted(ENTRIES, slots);
            assert_eq!(table.parts().len(), slots);
            assert_eq!(table.len(), whole.len());
            assert!(table.iter().eq(whole.iter()), "order at {slots} slots");
            let prefix = "@y.test ~".to_string();
            assert!(
                table
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| *v)
                    .eq([3, 4]),
                "range at {slots} slots"
            );
            for (key, value) in ENTRIES {
                assert_eq!(table.get(*key), Some(value));
            }
            assert_eq!(table.get("e@z.test"), None);
            assert_eq!(table, Table::from(whole.clone()), "equal across partitions");
        }
    }

    #[test]
    fn editing_a_shared_table_copies_only_the_edited_part() {
        let old = parted(ENTRIES, 4);
        let mut new = old.clone();
        new.insert("a@x.test".into(), 10);
        let edited = slot_of("a@x.test", 4);
        for slot in 0..4 {
            assert_eq!(
                Arc::ptr_eq(&old.parts()[slot], &new.parts()[slot]),
                slot != edited,
                "slot {slot}"
            );
        }
        assert_eq!(old.get("a@x.test"), Some(&1));
        assert_eq!(new.get("a@x.test"), Some(&10));
        assert_eq!(new.remove("a@x.test"), Some(10));
        assert_eq!((new.len(), old.len()), (ENTRIES.len() - 1, ENTRIES.len()));
        assert_eq!(new.get_mut("a@x.test"), None);
    }
}
