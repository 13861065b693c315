//! The apply step: server-side apply of the desired objects with the operator's one field
//! manager (directory shards are written whole instead; see [`write_shard`]). Directory shards go
//! first, then the head that names them, then the rest; shards the head no longer names are
//! deleted only after the new head is applied, so a reader never finds a head naming a missing
//! shard. Objects still holding the operator's last write are skipped (see [`crate::owned`]).
//!
//! The shards that exist are listed only when the directory's shard names differ from those of
//! the server's last listing (or after a start): only then can a shard be left over that the head
//! no longer names. An edit keeps the names, so it costs no list; the owned-object watch's
//! versions stand in for the listed ones (a shard edited by hand meanwhile is repaired by the
//! reconcile its watch event triggers).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use virtmail_crds::MailServer;
use virtmail_crds::encoding::{self, LABEL_ROLE, LABEL_SERVER};

use super::Context;
use crate::build::{self, Desired, FIELD_MANAGER};
use crate::error::Result;
use crate::owned;

/// What the apply step writes: a namespaced object it can send and read back.
trait OwnedObject:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> OwnedObject for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// Send one write of an owned object of content `hash`, announced to [`crate::owned`] while it
/// is in flight (so that its own watch event triggers no reconcile), and settle it with the
/// resourceVersion `send` returns. Returns whether the object's watch reported another change
/// meanwhile, which the reconcile must look at again.
async fn announced_write(
    ctx: &Context,
    key: owned::OwnedKey,
    hash: String,
    send: impl Future<Output = kube::Result<String>>,
) -> Result<bool> {
    ctx.owned.writing(&key);
    match send.await {
        Ok(version) => Ok(ctx.owned.wrote(key, hash, version)),
        Err(error) => {
            ctx.owned.failed(&key);
            Err(error.into())
        }
    }
}

/// Server-side apply of one owned object of content `hash`, with the operator's field manager
/// (forced: the operator owns these fields); see [`announced_write`].
async fn apply_owned<K: OwnedObject>(
    ctx: &Context,
    namespace: &str,
    object: &K,
    hash: String,
) -> Result<bool> {
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let send = async {
        let written = api.patch(&name, &params, &Patch::Apply(object)).await?;
        Ok(written.resource_version().unwrap_or_default())
    };
    announced_write(ctx, owned::key::<K>(namespace, &name), hash, send).await
}

/// What the apiserver is asked to answer a shard write with: the metadata alone (the version
/// is all the operator reads), not the half mebibyte of data it was just sent.
pub(super) const METADATA_ONLY: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Write one directory shard of content `hash`: replaced whole when it is there as far as
/// [`crate::owned`] knows, created otherwise (either falls back to the other when the apiserver
/// disagrees); see [`announced_write`].
///
/// Not a server-side apply: the apiserver parses an apply body as YAML, which for a shard of
/// half a mebibyte doubles the write's time (measured against a real apiserver: 36 against
/// 17 ms median, 66 against 23 ms at the 90th percentile), and an edit's publication waits for
/// it. A shard is the operator's alone, so replacing it whole loses no one's fields; the field
/// manager is the same.
async fn write_shard(
    ctx: &Context,
    namespace: &str,
    shard: &ConfigMap,
    hash: String,
) -> Result<bool> {
    let key = owned::key::<ConfigMap>(namespace, &shard.name_any());
    let replace = ctx.owned.exists(&key);
    let send = async {
        match send_shard(ctx, namespace, shard, replace).await {
            // Deleted since the watch saw it, or created since it last looked.
            Err(kube::Error::Api(e))
                if (replace && e.code == 404) || (!replace && e.code == 409) =>
            {
                send_shard(ctx, namespace, shard, !replace).await
            }
            other => other,
        }
    };
    announced_write(ctx, key, hash, send).await
}

/// One replace (or create) of a shard, answered with its metadata; its new resourceVersion.
async fn send_shard(
    ctx: &Context,
    namespace: &str,
    shard: &ConfigMap,
    replace: bool,
) -> kube::Result<String> {
    let request = kube::core::Request::new(ConfigMap::url_path(&(), Some(namespace)));
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let body = serde_json::to_vec(shard).map_err(kube::Error::SerdeError)?;
    let mut http_request = if replace {
        request.replace(&shard.name_any(), &params, body)
    } else {
        request.create(&params, body)
    }
    .map_err(kube::Error::BuildRequest)?;
    http_request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    let written = ctx
        .client
        .request::<PartialObjectMeta<ConfigMap>>(http_request)
        .await?;
    Ok(written.resource_version().unwrap_or_default())
}

/// [`apply_owned`] unless the object still holds exactly this content from the operator's last
/// write (see [`crate::owned`]).
async fn apply_if_changed<K: OwnedObject>(
    ctx: &Context,
    namespace: &str,
    object: &K,
) -> Result<bool> {
    let key = owned::key::<K>(namespace, &object.name_any());
    let hash = owned::content_hash(object);
    if ctx.owned.unchanged(&key, &hash, None) {
        return Ok(false);
    }
    apply_owned(ctx, namespace, object, hash).await
}

/// Record as the operator's own the listed shards that already hold what `encoded` wants there:
/// those whose hash annotation names the wanted content, read and checked against that hash.
/// The apply then skips them. After a start the operator knows none of its writes, and would
/// otherwise write every shard again (at 450,000 Mailboxes, 56 MB through the apiserver and the
/// directory write budget before the first server is published); a read costs no etcd write.
async fn adopt_shards_holding(
    ctx: &Context,
    config_maps: &Api<ConfigMap>,
    namespace: &str,
    encoded: &encoding::Encoded,
    listed: &[&PartialObjectMeta<ConfigMap>],
) -> Result<()> {
    let wanted: HashMap<&str, &str> = encoded
        .shards
        .iter()
        .map(|shard| (shard.name.as_str(), shard.hash.as_str()))
        .collect();
    let candidates: Vec<(String, String, String)> = listed
        .iter()
        .filter_map(|meta| {
            let name = meta.name_any();
            let hash = *wanted.get(name.as_str())?;
            let annotated = meta.annotations().get(encoding::ANNOTATION_SHARD_HASH)?;
            let version = meta.resource_version()?;
            let key = owned::key::<ConfigMap>(namespace, &name);
            (annotated == hash && !ctx.owned.unchanged(&key, hash, Some(&version)))
                .then(|| (name, hash.to_string(), version))
        })
        .collect();
    stream::iter(candidates)
        .map(|(name, hash, version)| async move {
            let Some(shard) = config_maps.get_opt(&name).await? else {
                return Result::<()>::Ok(());
            };
            let holds = shard.resource_version().as_deref() == Some(version.as_str())
                && shard
                    .data
                    .as_ref()
                    .is_some_and(|data| encoding::data_hash(data) == hash);
            if holds {
                ctx.owned
                    .holds(owned::key::<ConfigMap>(namespace, &name), hash, version);
            }
            Ok(())
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// What the apply step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Nothing: the directory write budget puts the reconcile off this long.
    Paced(Duration),
    /// Everything; `look_again` when an owned object was changed by someone else while the
    /// operator wrote it (its watch event was held back; see [`crate::owned`]).
    Done { look_again: bool },
}

/// The apply step: shards, head, then the rest; finally shards the head no longer names.
/// The directory write is first taken from the write budget; when the budget refuses it,
/// nothing is applied and the wait is returned (see [`crate::pacing`]).
pub(super) async fn apply_desired(
    ctx: &Context,
    server: &MailServer,
    namespace: &str,
    encoded: &encoding::Encoded,
    desired: &Desired,
) -> Result<Applied> {
    let client = &ctx.client;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let server_name = server.name_any();
    let server_key = super::server_key(server);
    let names: Vec<String> = encoded.shards.iter().map(|s| s.name.clone()).collect();
    let listed_before = ctx
        .listed_shards
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&server_key)
        == Some(&names);
    // name → resourceVersion of the shards this server owns, when listed.
    let existing_versions: Option<HashMap<String, String>> = if listed_before {
        None
    } else {
        let shard_selector = format!("{LABEL_SERVER}={server_name},{LABEL_ROLE}=shard");
        let existing = config_maps
            .list_metadata(&ListParams::default().labels(&shard_selector))
            .await?;
        let owned: Vec<_> = existing
            .items
            .iter()
            .filter(|m| build::owned_by(*m, server))
            .collect();
        adopt_shards_holding(ctx, &config_maps, namespace, encoded, &owned).await?;
        Some(
            owned
                .iter()
                .map(|m| (m.name_any(), m.resource_version().unwrap_or_default()))
                .collect(),
        )
    };
    // Shards: skip those present exactly as we last wrote them, with the content we want now
    // (same hash, same resourceVersion); a hand edit changes the resourceVersion and gets
    // overwritten.
    let shard_key = |name: &str| owned::key::<ConfigMap>(namespace, name);
    let to_apply: Vec<usize> = (0..encoded.shards.len())
        .filter(|&index| {
            let shard = &encoded.shards[index];
            let key = shard_key(&shard.name);
            let unchanged = match &existing_versions {
                Some(listed) => listed
                    .get(&shard.name)
                    .is_some_and(|current| ctx.owned.unchanged(&key, &shard.hash, Some(current))),
                None => ctx.owned.unchanged(&key, &shard.hash, None),
            };
            !unchanged
        })
        .collect();
    // The head changes only with its shards (an unchanged apply writes no etcd revision).
    if !to_apply.is_empty() {
        let written = to_apply
            .iter()
            .map(|&index| encoding::data_size(&encoded.shards[index].data) as u64)
            .sum::<u64>()
            + encoding::data_size(&encoded.head) as u64;
        let whole = encoded.shard_bytes() + encoding::data_size(&encoded.head) as u64;
        if let Err(wait) = ctx.budget().take(written, whole, Instant::now()) {
            return Ok(Applied::Paced(wait));
        }
        ctx.metrics.observe_written(written);
    }
    let results: Vec<Result<bool>> = stream::iter(to_apply)
        .map(|index| {
            // Indices, not references: a stream of borrowed shards is not `Send` for every
            // lifetime, which the controller requires.
            let shard = &encoded.shards[index];
            let config_map = build::shard_config_map(server, shard);
            let hash = shard.hash.clone();
            async move { write_shard(ctx, namespace, &config_map, hash).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut look_again = false;
    for result in results {
        look_again |= result?;
    }
    // Each of the rest is skipped while it holds our last write (an edit of one Mailbox
    // changes only a shard and the head).
    look_again |= apply_if_changed(ctx, namespace, &desired.head).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.postfix).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.service_account).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.role).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.role_binding).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.service).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.network_policy).await?;
    look_again |= apply_if_changed(ctx, namespace, &desired.stateful_set).await?;
    match &desired.pod_disruption_budget {
        Some(pdb) => {
            look_again |= apply_if_changed(ctx, namespace, pdb).await?;
        }
        None => {
            // Only a budget the watch has seen can be there to delete.
            let key = owned::key::<PodDisruptionBudget>(namespace, &server_name);
            let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
            if ctx.owned.observed(&key)
                && let Some(pdb) = pdbs.get_opt(&server_name).await?
                && build::owned_by(&pdb, server)
            {
                pdbs.delete(&server_name, &DeleteParams::default()).await?;
                ctx.owned.forget(&key);
            }
        }
    }
    // Only now, with the head naming the new shards applied, remove shards nobody names.
    if let Some(existing_versions) = existing_versions {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        for name in existing_versions
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
        {
            match config_maps.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.owned.forget(&shard_key(name));
        }
        ctx.listed_shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_key, names);
    }
    Ok(Applied::Done { look_again })
}
