use super::*;
use crate::directory::{AliasEntry, Directory, MailboxEntry};
use crate::encoding::encode;
use crate::test_rng::Rng;

fn nth_key<T>(map: &Table<T>, rng: &mut Rng) -> Option<String> {
    map.keys().nth(rng.below(map.len())).cloned()
}

fn mailbox(i: usize) -> (String, MailboxEntry) {
    let mut entry = Directory::synthetic(1)
        .mailboxes
        .values()
        .next()
        .cloned()
        .unwrap();
    entry.path = format!("domain{}.test/new{i}/", i % 100);
    entry.object = format!("new{i}");
    (format!("new{i}@domain{}.test", i % 100), entry)
}

/// One random edit of the kinds a server sees: a mailbox added, removed, changed or suspended,
/// an alias added or removed, a domain's postmaster changed, a setting changed, or a batch
/// (an import, a namespace emptied) large enough to change the shard count.
fn edit(directory: &mut Directory, rng: &mut Rng, serial: &mut usize) {
    *serial += 1;
    match rng.below(10) {
        0 | 1 => {
            let (key, entry) = mailbox(*serial);
            directory.mailboxes.insert(key, entry);
        }
        2 => {
            if let Some(key) = nth_key(&directory.mailboxes, rng) {
                directory.mailboxes.remove(&key);
            }
        }
        3 => {
            if let Some(key) = nth_key(&directory.mailboxes, rng) {
                let entry = directory.mailboxes.get_mut(&key).unwrap();
                entry.quota = Some(rng.next() % (1 << 40));
            }
        }
        4 => {
            if let Some(key) = nth_key(&directory.mailboxes, rng) {
                let entry = directory.mailboxes.get_mut(&key).unwrap();
                entry.suspended = !entry.suspended;
            }
        }
        5 => {
            directory.aliases.insert(
                format!("list{serial}@domain{}.test", rng.below(100)),
                AliasEntry {
                    to: vec![format!("user{}@domain1.test", rng.below(1000))],
                    defer: None,
                    object: Some(format!("list{serial}")),
                },
            );
        }
        6 => {
            if let Some(key) = nth_key(&directory.aliases, rng) {
                directory.aliases.remove(&key);
            }
        }
        7 => {
            if let Some(key) = nth_key(&directory.domains, rng) {
                directory.domains.get_mut(&key).unwrap().postmaster = format!("pm{serial}@{key}");
            }
        }
        8 => directory.settings.minimum_uid = 100 + rng.below(100) as u32,
        _ => {
            if rng.below(2) == 0 {
                for i in 0..2500 {
                    let (key, entry) = mailbox(*serial * 10_000 + i);
                    directory.mailboxes.insert(key, entry);
                }
            } else {
                let keep = directory.mailboxes.len().saturating_sub(2500);
                let gone: Vec<String> = directory.mailboxes.keys().skip(keep).cloned().collect();
                for key in gone {
                    directory.mailboxes.remove(&key);
                }
            }
        }
    }
}

#[test]
fn random_edit_sequences_encode_exactly_as_a_full_encode_after_every_step() {
    let mut shard_counts = std::collections::BTreeSet::new();
    let (mut partial, mut full) = (0, 0);
    for seed in [1u64, 2, 3] {
        let mut rng = Rng::new(seed);
        let mut directory = Directory::synthetic(3000);
        let mut encoder = Encoder::new(&directory);
        assert_eq!(encoder.encoded(), &encode(&directory));
        let mut serial = 0;
        for step in 0..50 {
            let old = directory.clone();
            edit(&mut directory, &mut rng, &mut serial);
            let update = encoder.update(&old, &directory);
            let reference = encode(&directory);
            assert_eq!(
                encoder.encoded(),
                &reference,
                "seed {seed}, step {step}: {update:?}"
            );
            if update.full {
                full += 1;
            } else {
                partial += 1;
                assert!(
                    update.shards <= update.records,
                    "only shards holding a changed record are encoded again: {update:?}"
                );
            }
            shard_counts.insert(reference.shards.len());
        }
    }
    // The sequences exercised what they are for: several shard counts, and both paths.
    assert!(
        shard_counts.len() >= 3,
        "shard counts seen: {shard_counts:?}"
    );
    assert!(partial > full * 3, "partial {partial}, full {full}");
}

#[test]
fn one_mailbox_edit_encodes_one_shard_again() {
    let mut directory = Directory::synthetic(20_000);
    let mut encoder = Encoder::new(&directory);
    assert!(encoder.encoded().shards.len() >= 4);
    let before = encoder.encoded().clone();
    let old = directory.clone();
    directory
        .mailboxes
        .get_mut("user7@domain7.test")
        .unwrap()
        .quota = Some(5);
    let update = encoder.update(&old, &directory);
    assert_eq!(
        update,
        Update {
            records: 1,
            shards: 1,
            full: false
        }
    );
    assert_eq!(before, encode(&old));
    let changed: Vec<&str> = encoder
        .encoded()
        .shards
        .iter()
        .zip(&before.shards)
        .filter(|(a, b)| a.hash != b.hash)
        .map(|(a, _)| a.name.as_str())
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_ne!(encoder.encoded().version, before.version);
    // Unchanged shards are the very same data, not copies.
    let shared = encoder
        .encoded()
        .shards
        .iter()
        .zip(&before.shards)
        .filter(|(a, b)| Arc::ptr_eq(&a.data, &b.data))
        .count();
    assert_eq!(shared, before.shards.len() - 1);
}

#[test]
fn a_settings_change_encodes_no_shard_again() {
    let mut directory = Directory::synthetic(3000);
    let mut encoder = Encoder::new(&directory);
    let old = directory.clone();
    directory.settings.mailbox_size_limit += 1;
    let update = encoder.update(&old, &directory);
    assert_eq!((update.records, update.shards, update.full), (0, 0, false));
    assert_eq!(encoder.encoded(), &encode(&directory));
}

#[test]
fn mailbox_keys_an_in_place_compile_reports_are_enough_to_encode_the_new_version() {
    let mut directory = Directory::synthetic(5000);
    let mut encoder = Encoder::new(&directory);
    for (step, key) in [
        "user1@domain1.test",
        "user2@domain2.test",
        "user1@domain1.test",
    ]
    .into_iter()
    .enumerate()
    {
        directory.mailboxes.get_mut(key).unwrap().quota = Some(step as u64);
        let update = encoder.update_mailboxes(&directory, [key]);
        assert_eq!((update.records, update.shards, update.full), (1, 1, false));
        assert_eq!(encoder.encoded(), &encode(&directory));
    }
}
