//! Assembling a directory version from the head and shard ConfigMaps (pure).
//!
//! Multi-object updates are not atomic: the agent sees shards and heads arrive in any order. A
//! version is assembled only when every shard the head names is present with its hash; until then
//! the previous version keeps serving. A head or shard that does not verify is never served
//! (fail static).

use std::collections::BTreeMap;

use virtmail_crds::Directory;
use virtmail_crds::encoding::{self, Data, DecodeError};

/// What one assembly attempt found.
#[derive(Debug)]
pub enum Assembly {
    /// No head ConfigMap yet.
    NoHead,
    /// The head names the version already being served.
    Unchanged,
    /// A new version, complete and verified.
    Ready {
        /// The directory.
        directory: Box<Directory>,
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

/// Try to assemble the version `head` names from `shards`, unless it is `serving` already.
pub fn assemble(
    head: Option<&Data>,
    shards: &BTreeMap<String, Data>,
    serving: Option<&str>,
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
    if serving == Some(version.as_str()) {
        return Assembly::Unchanged;
    }
    match encoding::shard_list(head) {
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
    match encoding::decode(head, |name| shards.get(name)) {
        Ok(directory) => Assembly::Ready {
            directory: Box::new(directory),
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
        match assemble(Some(&e.head), &shards, None) {
            Assembly::Ready { version, directory } => {
                assert_eq!(version, e.version);
                assert_eq!(directory.mailboxes.len(), 13);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            assemble(Some(&e.head), &shards, Some(&e.version)),
            Assembly::Unchanged
        ));
        // Head arrived before its shards.
        match assemble(Some(&e.head), &BTreeMap::new(), None) {
            Assembly::Waiting { missing, .. } => assert_eq!(missing.len(), e.shards.len()),
            other => panic!("{other:?}"),
        }
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
