use std::collections::BTreeMap;

use super::*;
use crate::directory::Directory;

fn directory(mailboxes: usize) -> Directory {
    Directory::synthetic(mailboxes)
}

fn shard_map(encoded: &Encoded) -> BTreeMap<String, Data> {
    encoded
        .shards
        .iter()
        .map(|s| (s.name.clone(), (*s.data).clone()))
        .collect()
}

/// A directory of `mailboxes`, its encoding, and its shards by name.
fn encoded_with_shards(mailboxes: usize) -> (Directory, Encoded, BTreeMap<String, Data>) {
    let d = directory(mailboxes);
    let encoded = encode(&d);
    let shards = shard_map(&encoded);
    (d, encoded, shards)
}

#[test]
fn round_trip() {
    let (d, encoded, shards) = encoded_with_shards(1000);
    let decoded = decode(&encoded.head, |n| shards.get(n)).expect("decode");
    assert_eq!(decoded, d);
    assert_eq!(encoded.head[KEY_SCHEMA], SCHEMA);
    assert_eq!(encoded.head_name, "mail-directory");
    assert!(
        encoded
            .shards
            .iter()
            .all(|s| s.name.starts_with("mail-directory-"))
    );
}

#[test]
fn encoding_is_deterministic() {
    assert_eq!(encode(&directory(500)), encode(&directory(500)));
}

#[test]
fn hundred_thousand_mailboxes_fit_in_shards_under_the_limit() {
    let d = directory(100_000);
    let encoded = encode(&d);
    assert!(
        encoded.shards.len() > 1,
        "100,000 mailboxes need several shards"
    );
    for shard in &encoded.shards {
        let size: usize = shard.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= SHARD_LIMIT, "shard {} has {size} bytes", shard.name);
    }
    let head_size: usize = encoded.head.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(head_size < 64 * 1024);
    let shards = shard_map(&encoded);
    assert_eq!(
        decode(&encoded.head, |n| shards.get(n))
            .expect("decode")
            .mailboxes
            .len(),
        100_000
    );
}

/// A directory of 20,000 mailboxes, and the same with one mailbox suspended.
fn directory_and_one_edit() -> (Directory, Directory) {
    let d = directory(20_000);
    let mut edited = d.clone();
    edited
        .mailboxes
        .get_mut("user7@domain7.test")
        .expect("exists")
        .suspended = true;
    (d, edited)
}

#[test]
fn one_edit_changes_one_shard() {
    let (d, edited) = directory_and_one_edit();
    let (a, b) = (encode(&d), encode(&edited));
    assert_ne!(a.version, b.version);
    let names_a: Vec<_> = a.shards.iter().map(|s| &s.name).collect();
    let names_b: Vec<_> = b.shards.iter().map(|s| &s.name).collect();
    assert_eq!(names_a, names_b, "shard names are stable slots");
    let changed = a
        .shards
        .iter()
        .zip(&b.shards)
        .filter(|(x, y)| x.hash != y.hash)
        .count();
    assert_eq!(changed, 1);
}

#[test]
fn shard_names_are_numbered_slots_within_the_mount_slots() {
    let encoded = encode(&directory(100_000));
    for shard in &encoded.shards {
        let index = shard
            .name
            .strip_prefix("mail-directory-")
            .expect("slot name");
        assert_eq!(index.len(), 2, "{}", shard.name);
        let index: usize = index.parse().expect("numbered");
        assert!(index < mount_slots(encoded.shards.len()));
    }
    assert_eq!(mount_slots(1), MOUNT_SLOTS);
    assert_eq!(mount_slots(64), 64);
    assert_eq!(mount_slots(65), 128);
    assert_eq!(shard_name("mail", 7), "mail-directory-07");
    assert_eq!(shard_name("mail", 123), "mail-directory-123");
}

#[test]
fn a_shard_rewritten_before_its_head_is_refused_not_served() {
    // Stable names: the new content of a slot can arrive while the old head is still present.
    let (d, edited) = directory_and_one_edit();
    let (old, new) = (encode(&d), encode(&edited));
    let mut shards = shard_map(&old);
    for shard in &new.shards {
        shards.insert(shard.name.clone(), (*shard.data).clone());
    }
    assert!(matches!(
        decode(&old.head, |n| shards.get(n)),
        Err(DecodeError::HashMismatch { .. })
    ));
    assert_eq!(decode(&new.head, |n| shards.get(n)), Ok(edited));
}

#[test]
fn missing_shard_is_refused() {
    let encoded = encode(&directory(20_000));
    let mut shards = shard_map(&encoded);
    let victim = encoded.shards[1].name.clone();
    shards.remove(&victim);
    assert_eq!(
        decode(&encoded.head, |n| shards.get(n)),
        Err(DecodeError::MissingShard(victim))
    );
}

#[test]
fn stale_or_edited_shard_is_refused() {
    let encoded = encode(&directory(20_000));
    let mut shards = shard_map(&encoded);
    let victim = encoded.shards[0].name.clone();
    shards
        .get_mut(&victim)
        .and_then(|d| d.get_mut(KEY_MAILBOXES))
        .expect("mailboxes")
        .push_str("{\"address\":\"evil@domain1.test\"}\n");
    assert!(matches!(
        decode(&encoded.head, |n| shards.get(n)),
        Err(DecodeError::HashMismatch { name, .. }) if name == victim
    ));
}

#[test]
fn head_with_tampered_settings_is_refused() {
    let encoded = encode(&directory(10));
    let shards = shard_map(&encoded);
    let mut head = encoded.head.clone();
    let settings = head[KEY_SETTINGS].replace("\"minimumUid\": 100", "\"minimumUid\": 1");
    head.insert(KEY_SETTINGS.into(), settings);
    assert!(matches!(
        decode(&head, |n| shards.get(n)),
        Err(DecodeError::Version { .. })
    ));
    let mut wrong_schema = encoded.head.clone();
    wrong_schema.insert(KEY_SCHEMA.into(), "virtmail.io/directory/v0".into());
    assert!(matches!(
        decode(&wrong_schema, |n| shards.get(n)),
        Err(DecodeError::Head(_))
    ));
}

#[test]
fn empty_directory_encodes_to_no_shards() {
    let mut d = directory(0);
    d.domains.clear();
    d.aliases.clear();
    let encoded = encode(&d);
    assert!(encoded.shards.is_empty());
    let decoded = decode(&encoded.head, |_| None).expect("decode");
    assert_eq!(decoded, d);
}

/// Found by fuzzing (`directory_decode`): a head whose settings name a server that is no object
/// name (`"fuzz "`) decoded, but the directory could not be encoded again (its shard names would
/// hold a space, which the shard list cannot carry).
#[test]
fn head_naming_a_server_that_is_no_object_name_is_refused() {
    for server in ["fuzz ", "a b", "Mail", "mail/x", "", "mail\n"] {
        let encoded = encode(&directory(10));
        let shards = shard_map(&encoded);
        let mut head = encoded.head.clone();
        let settings = head[KEY_SETTINGS].replace(
            "\"server\": \"mail\"",
            &format!("\"server\": {}", serde_json::to_string(server).unwrap()),
        );
        let hashes: Vec<&str> = encoded.shards.iter().map(|s| s.hash.as_str()).collect();
        head.insert(KEY_VERSION.into(), version_of(&settings, &hashes));
        head.insert(KEY_SETTINGS.into(), settings);
        assert!(
            matches!(decode(&head, |n| shards.get(n)), Err(DecodeError::Head(_))),
            "server {server:?} accepted"
        );
    }
}

#[test]
fn a_new_version_decodes_only_its_changed_shard_and_shares_the_other_parts() {
    let (d, edited) = directory_and_one_edit();
    let (a, b) = (encode(&d), encode(&edited));
    let (shards_a, shards_b) = (shard_map(&a), shard_map(&b));
    let first = decode_reusing(&a.head, |n| shards_a.get(n), None).expect("decode");
    assert_eq!((first.decoded, first.reused), (a.shards.len(), 0));
    assert_eq!(first.directory, d);

    let to_read = shards_to_read(&b.head, &first.hashes).expect("head");
    let changed = slot_of(
        "user7@domain7.test",
        first.directory.mailboxes.parts().len(),
    );
    assert_eq!(
        to_read,
        [(shard_name("mail", changed), b.shards[changed].hash.clone())]
    );
    // Only the changed shard is offered: the others must come from the previous version.
    let only_changed: BTreeMap<String, Data> = shards_b
        .into_iter()
        .filter(|(name, _)| *name == to_read[0].0)
        .collect();
    let second = decode_reusing(
        &b.head,
        |n| only_changed.get(n),
        Some((&first.directory, &first.hashes)),
    )
    .expect("decode reusing");
    assert_eq!((second.decoded, second.reused), (1, a.shards.len() - 1));
    assert_eq!(second.directory, edited);
    let (old, new) = (&first.directory.mailboxes, &second.directory.mailboxes);
    for slot in 0..old.parts().len() {
        assert_eq!(
            Arc::ptr_eq(&old.parts()[slot], &new.parts()[slot]),
            slot != changed,
            "slot {slot}"
        );
    }
    // Without the previous version the same offer is a missing shard.
    assert!(matches!(
        decode_reusing(&b.head, |n| only_changed.get(n), None),
        Err(DecodeError::MissingShard(_))
    ));
}

#[test]
fn a_head_whose_slot_count_does_not_place_its_records_is_refused() {
    // The slot count is not part of the version, so a head edited to name another count still
    // matches its hashes; lookups would then miss records (and bounce mail), so every record
    // must hash to the slot it is in.
    let (_, encoded, shards) = encoded_with_shards(20_000);
    let slots: usize = encoded.head[KEY_SLOTS].parse().expect("slot count");
    assert!(slots > 1);
    let mut forged = encoded.head.clone();
    forged.insert(KEY_SLOTS.into(), (slots + 1).to_string());
    match decode(&forged, |n| shards.get(n)) {
        Err(DecodeError::Record { message, .. }) => {
            assert!(message.contains("belongs in slot"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    for bad in ["0", "x", "99999999"] {
        forged.insert(KEY_SLOTS.into(), bad.into());
        assert!(matches!(
            decode(&forged, |n| shards.get(n)),
            Err(DecodeError::Head(_))
        ));
    }
}

#[test]
fn a_head_without_a_slot_count_decodes_whole() {
    let (d, encoded, shards) = encoded_with_shards(5_000);
    let mut older = encoded.head.clone();
    older.remove(KEY_SLOTS);
    let decoded = decode_reusing(&older, |n| shards.get(n), None).expect("decode");
    assert_eq!(decoded.directory, d);
    assert_eq!(decoded.directory.mailboxes.parts().len(), 1);
    assert_eq!(decoded.hashes, ShardHashes::default(), "nothing to reuse");
}
