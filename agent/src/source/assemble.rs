//! Assembling a directory version from the head and shard ConfigMaps (pure).
//!
//! Multi-object updates are not atomic: the agent sees shards and heads arrive in any order. A
//! version is assembled only when every shard the head names is present with its hash; until then
//! the previous version keeps serving. A head or shard that does not verify is never served
//! (fail static).
//!
//! A new version takes from the one being served the parts of every shard whose hash did not
//! change: only changed shards must be present, and only they are verified and parsed.

use std::collections::BTreeMap;

use virtmail_crds::encoding::{self, Data, DecodeError, Decoded, ShardHashes};

use super::Loaded;

/// What one assembly attempt found.
#[derive(Debug)]
pub enum Assembly {
    /// No head ConfigMap yet.
    NoHead,
    /// The head names the version already being served.
    Unchanged,
    /// A new version, complete and verified.
    Ready {
        /// The directory, and what was decoded of it.
        decoded: Box<Decoded>,
        /// Its version.
        version: String,
    },
    /// Shards the head names are not (yet) present.
    Waiting {
        /// The version the head names.
        version: String,
        /// Missing shard names.
        missing: Vec<String>,
    },
    /// The set does not verify (stale or edited shard, bad head).
    Invalid {
        /// The version the head names, if readable.
        version: Option<String>,
        /// Why.
        error: DecodeError,
    },
}

/// Try to assemble the version `head` names from `shards` and the parts of `serving`, unless
/// it is `serving` already.
pub fn assemble(
    head: Option<&Data>,
    shards: &BTreeMap<String, Data>,
    serving: Option<&Loaded>,
) -> Assembly {
    let Some(head) = head else {
        return Assembly::NoHead;
    };
    let version = match encoding::head_version(head) {
        Ok(v) => v.to_string(),
        Err(error) => {
            return Assembly::Invalid {
                version: None,
                error,
            };
        }
    };
    if serving.is_some_and(|loaded| loaded.version == version) {
        return Assembly::Unchanged;
    }
    let no_hashes = ShardHashes::default();
    let held = serving.map_or(&no_hashes, |loaded| &loaded.hashes);
    match encoding::shards_to_read(head, held) {
        Ok(list) => {
            let missing: Vec<String> = list
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| !shards.contains_key(name))
                .collect();
            if !missing.is_empty() {
                return Assembly::Waiting { version, missing };
            }
        }
        Err(error) => {
            return Assembly::Invalid {
                version: Some(version),
                error,
            };
        }
    }
    let previous = serving.map(|loaded| (&*loaded.directory, &loaded.hashes));
    match encoding::decode_reusing(head, |name| shards.get(name), previous) {
        Ok(decoded) => Assembly::Ready {
            decoded: Box::new(decoded),
            version,
        },
        Err(error) => Assembly::Invalid {
            version: Some(version),
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use virtmail_crds::manifests::load_dir;

    fn encoded(example: &str) -> encoding::Encoded {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        let resources = load_dir(&dir).expect("example");
        let server = resources.server(None).expect("server");
        encoding::encode(&virtmail_crds::compile(resources.inputs(&server)).directory)
    }

    fn shard_map(e: &encoding::Encoded) -> BTreeMap<String, Data> {
        e.shards
            .iter()
            .map(|s| (s.name.clone(), (*s.data).clone()))
            .collect()
    }

    #[test]
    fn assembles_only_complete_verified_versions() {
        let e = encoded("3-many-virtual-users");
        let shards = shard_map(&e);
        assert!(matches!(assemble(None, &shards, None), Assembly::NoHead));
        let serving = match assemble(Some(&e.head), &shards, None) {
            Assembly::Ready { version, decoded } => {
                assert_eq!(version, e.version);
                assert_eq!(decoded.directory.mailboxes.len(), 13);
                Loaded::new(decoded.directory, version, decoded.hashes)
            }
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            assemble(Some(&e.head), &shards, Some(&serving)),
            Assembly::Unchanged
        ));
        // Head arrived before its shards.
        match assemble(Some(&e.head), &BTreeMap::new(), None) {
            Assembly::Waiting { missing, .. } => assert_eq!(missing.len(), e.shards.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_version_needs_only_the_shards_that_changed() {
        let e = encoding::encode(&virtmail_crds::Directory::synthetic(20_000));
        assert!(e.shards.len() > 1);
        let first = match assemble(Some(&e.head), &shard_map(&e), None) {
            Assembly::Ready { version, decoded } => {
                Loaded::new(decoded.directory, version, decoded.hashes)
            }
            other => panic!("{other:?}"),
        };
        let mut directory = (*first.directory).clone();
        let (address, entry) = directory
            .mailboxes
            .iter()
            .next()
            .map(|(a, e)| (a.clone(), e.clone()))
            .expect("a mailbox");
        directory.mailboxes.insert(
            address,
            virtmail_crds::directory::MailboxEntry {
                suspended: !entry.suspended,
                ..entry
            },
        );
        let edited = encoding::encode(&directory);
        let changed: BTreeMap<String, Data> = shard_map(&edited)
            .into_iter()
            .filter(|(name, data)| shard_map(&e).get(name) != Some(data))
            .collect();
        assert_eq!(changed.len(), 1);
        match assemble(Some(&edited.head), &changed, Some(&first)) {
            Assembly::Ready { decoded, .. } => {
                assert_eq!((decoded.decoded, decoded.reused), (1, e.shards.len() - 1));
                assert_eq!(decoded.directory, directory);
            }
            other => panic!("{other:?}"),
        }
        // Without the served version the unchanged shards are missing.
        assert!(matches!(
            assemble(Some(&edited.head), &changed, None),
            Assembly::Waiting { .. }
        ));
    }

    #[test]
    fn edited_shard_is_never_served() {
        let e = encoded("1-virtual-for-all-mail");
        let mut shards = shard_map(&e);
        let first = e.shards[0].name.clone();
        shards
            .get_mut(&first)
            .expect("shard")
            .insert("mailboxes.jsonl".into(), String::new());
        assert!(matches!(
            assemble(Some(&e.head), &shards, None),
            Assembly::Invalid {
                error: DecodeError::HashMismatch { .. },
                ..
            }
        ));
    }
}
