//! The order and content of the reconcile's API requests, against a mock API service (no
//! apiserver): a recorded request/response verifier that answers each request as the apiserver
//! would for the calls the reconcile makes, keeps the ConfigMaps it is sent (so a second
//! reconcile sees the first one's writes) and logs every request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use virtmail_crds::MailServer;
use virtmail_crds::encoding::{self, Encoded, Shard};

use super::*;
use crate::fixtures;
use apply::METADATA_ONLY;

/// One request as the mock API saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// The path without the query.
    path: String,
    /// The ConfigMap written, by name (from the path, or from the body of a create).
    config_map: Option<String>,
    /// The `Accept` header.
    accept: Option<String>,
}

impl Seen {
    fn is(&self, method: &Method, path_end: &str) -> bool {
        self.method == *method && self.path.ends_with(path_end)
    }

    /// Whether this request writes the ConfigMap `name` (applied, replaced or created).
    fn writes(&self, name: &str) -> bool {
        [Method::PATCH, Method::PUT, Method::POST].contains(&self.method)
            && self.config_map.as_deref() == Some(name)
    }
}

/// What the mock API holds: the objects whose status the reconcile patches (by
/// `<plural>/<name>`), the ConfigMaps written to it, and every request in order.
#[derive(Debug, Default)]
struct ApiState {
    objects: BTreeMap<String, Value>,
    config_maps: BTreeMap<String, Value>,
    resource_version: u64,
    log: Vec<Seen>,
    /// Watch events fed to these versions before each ConfigMap write is answered, as a real
    /// watch can deliver them: the write's own, and with `intruder` a change by someone else
    /// right after it.
    echo: Option<(Arc<OwnedVersions>, bool)>,
}

/// The mock API's log, shared with the task answering its requests.
#[derive(Debug, Clone, Default)]
struct MockApi(Arc<Mutex<ApiState>>);

impl MockApi {
    /// A client whose requests this mock answers.
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.expect("request body");
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let accept = parts
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let (status, answer) = api.answer(&parts.method, &parts.uri, accept, body);
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                        .expect("response"),
                );
            }
        });
        Client::new(service, "default")
    }

    /// Hold `object`, as the answer to patches of its status.
    fn hold<K: Resource<DynamicType = ()> + serde::Serialize>(&self, object: &K) -> &Self {
        let key = format!("{}/{}", K::plural(&()), object.name_any());
        let value = serde_json::to_value(object).expect("json");
        self.0
            .lock()
            .expect("mock state")
            .objects
            .insert(key, value);
        self
    }

    fn log(&self) -> Vec<Seen> {
        self.0.lock().expect("mock state").log.clone()
    }

    /// The index in the log of the one request `method` whose path ends with `path_end`.
    fn position(&self, method: &Method, path_end: &str) -> usize {
        let log = self.log();
        let found: Vec<usize> = (0..log.len())
            .filter(|&i| log[i].is(method, path_end))
            .collect();
        assert_eq!(found.len(), 1, "one {method} …{path_end} in {log:#?}");
        found[0]
    }

    /// The ConfigMap of this name as last written.
    fn config_map(&self, name: &str) -> Option<Value> {
        self.0
            .lock()
            .expect("mock state")
            .config_maps
            .get(name)
            .cloned()
    }

    fn count(&self, method: &Method, path_end: &str) -> usize {
        self.log().iter().filter(|s| s.is(method, path_end)).count()
    }

    /// How many requests wrote the ConfigMap `name`.
    fn writes(&self, name: &str) -> usize {
        self.log().iter().filter(|s| s.writes(name)).count()
    }

    /// The methods of the requests that wrote the ConfigMap `name`, in order.
    fn write_methods(&self, name: &str) -> Vec<Method> {
        self.log()
            .into_iter()
            .filter(|s| s.writes(name))
            .map(|s| s.method)
            .collect()
    }

    /// The index in the log of the one request that wrote the ConfigMap `name`.
    fn write_position(&self, name: &str) -> usize {
        let log = self.log();
        let found: Vec<usize> = (0..log.len()).filter(|&i| log[i].writes(name)).collect();
        assert_eq!(found.len(), 1, "one write of {name} in {log:#?}");
        found[0]
    }

    fn answer(
        &self,
        method: &Method,
        uri: &http::Uri,
        accept: Option<String>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut state = self.0.lock().expect("mock state");
        let path = uri.path().to_string();
        let segments: Vec<&str> = path.split('/').collect();
        let config_map = match segments.as_slice() {
            [.., "configmaps", name] => Some(name.to_string()),
            _ => None,
        };
        let created = (method == Method::POST && path.ends_with("/configmaps"))
            .then(|| body["metadata"]["name"].as_str().map(str::to_string))
            .flatten();
        state.log.push(Seen {
            method: method.clone(),
            path: path.clone(),
            config_map: config_map.clone().or(created.clone()),
            accept,
        });
        if let Some(name) = created {
            return match state.config_maps.contains_key(&name) {
                true => conflict(),
                false => (StatusCode::CREATED, state.store_config_map(&name, body)),
            };
        }
        match (method.as_str(), config_map) {
            ("GET", None) if path.ends_with("/configmaps") => {
                let selector = uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("labelSelector=")))
                    .map(|s| {
                        s.replace("%2F", "/")
                            .replace("%3D", "=")
                            .replace("%2C", ",")
                    })
                    .unwrap_or_default();
                let items: Vec<Value> = state
                    .config_maps
                    .values()
                    .filter(|cm| has_labels(cm, &selector))
                    .map(|cm| json!({ "metadata": cm["metadata"] }))
                    .collect();
                (
                    StatusCode::OK,
                    json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                            "metadata": {}, "items": items }),
                )
            }
            ("PATCH", Some(name)) => (StatusCode::OK, state.store_config_map(&name, body)),
            ("PUT", Some(name)) => match state.config_maps.contains_key(&name) {
                true => (StatusCode::OK, state.store_config_map(&name, body)),
                false => not_found(),
            },
            ("GET", Some(name)) => match state.config_maps.get(&name) {
                Some(stored) => (StatusCode::OK, stored.clone()),
                None => not_found(),
            },
            ("DELETE", Some(name)) => match state.config_maps.remove(&name) {
                Some(deleted) => (StatusCode::OK, deleted),
                None => not_found(),
            },
            ("PATCH", None) if path.ends_with("/status") => {
                let held = segments[segments.len() - 3..segments.len() - 1].join("/");
                match state.objects.get(&held) {
                    Some(object) => {
                        let mut object = object.clone();
                        object["status"] = body["status"].clone();
                        (StatusCode::OK, object)
                    }
                    None => not_found(),
                }
            }
            ("PATCH", None) => {
                state.resource_version += 1;
                let mut applied = body;
                applied["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                (StatusCode::OK, applied)
            }
            ("POST", None) => (StatusCode::CREATED, body),
            _ => not_found(),
        }
    }
}

impl ApiState {
    /// Keep a ConfigMap written as `name` at a new resourceVersion, feeding its watch events
    /// first if asked to (see `echo`); what the write answers.
    fn store_config_map(&mut self, name: &str, body: Value) -> Value {
        self.resource_version += 1;
        let mut stored = body;
        stored["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.config_maps.insert(name.to_string(), stored.clone());
        if let Some((owned, intruder)) = self.echo.clone() {
            let event = |version: u64| {
                let mut cm: ConfigMap =
                    serde_json::from_value(stored.clone()).expect("a ConfigMap");
                cm.metadata.namespace = Some("ns".into());
                cm.metadata.resource_version = Some(version.to_string());
                Event::Apply(cm)
            };
            let triggered = owned.observe(event(self.resource_version));
            assert!(
                triggered.is_empty(),
                "the write's own event triggers: {name}"
            );
            if intruder {
                self.resource_version += 1;
                let _ = owned.observe(event(self.resource_version));
            }
        }
        stored
    }
}

/// Whether a stored object carries every `key=value` label of `selector`.
fn has_labels(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|pair| match pair.split_once('=') {
            Some((key, value)) => object["metadata"]["labels"][key] == value,
            None => false,
        })
}

fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "already exists", "reason": "AlreadyExists", "code": 409 }),
    )
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "not found", "reason": "NotFound", "code": 404 }),
    )
}

/// A reconcile context on the mock API, its caches listed and holding `server`.
fn context(api: &MockApi, server: &MailServer) -> Arc<Context> {
    let caches = MemberCaches::default();
    caches.domains.apply(&Event::InitDone);
    caches.mailboxes.apply(&Event::InitDone);
    caches.aliases.apply(&Event::InitDone);
    let (servers, mut writer) = reflector::store::<MailServer>();
    writer.apply_watcher_event(&Event::Apply(server.clone()));
    Arc::new(Context::new(
        api.client(),
        BuildConfig::default(),
        caches,
        servers,
        Arc::default(),
        "test".into(),
        WatchedState::default(),
    ))
}

/// `server`'s directory, as shards named and filled by hand (a real encoding of a few entries
/// is one shard).
fn directory(server: &MailServer, shards: &[(usize, &str)]) -> Encoded {
    let compiled = fixtures::compiled_alone(server);
    let mut encoded = encoding::encode(&compiled.directory);
    encoded.shards = shards
        .iter()
        .map(|&(index, line)| {
            let data: encoding::Data =
                [(encoding::KEY_MAILBOXES.to_string(), format!("{line}\n"))].into();
            Shard {
                name: encoding::shard_name(&server.name_any(), index),
                hash: encoding::data_hash(&data),
                data: data.into(),
            }
        })
        .collect();
    encoded
}

async fn apply(ctx: &Context, server: &MailServer, encoded: &Encoded) {
    assert_eq!(
        apply_once(ctx, server, encoded).await,
        Applied::Done { look_again: false }
    );
}

async fn apply_once(ctx: &Context, server: &MailServer, encoded: &Encoded) -> Applied {
    let desired = build::desired(server, encoded, &ctx.config);
    apply_desired(ctx, server, "ns", encoded, &desired)
        .await
        .expect("applied")
}

/// A mock API and context for server `mail` whose ConfigMap writes feed their watch events
/// before answering (with `intruder`, also someone else's change after each).
fn with_echo(intruder: bool) -> (MockApi, MailServer, Arc<Context>) {
    let api = MockApi::default();
    let server = fixtures::server("ns", "mail", 1);
    let ctx = context(&api, &server);
    api.0.lock().expect("mock state").echo = Some((ctx.owned.clone(), intruder));
    (api, server, ctx)
}

#[tokio::test]
async fn the_event_of_an_own_write_arriving_before_its_answer_needs_no_second_look() {
    let (api, server, ctx) = with_echo(false);
    // The mock asserts that each ConfigMap's event, fed before the answer, triggers nothing.
    apply(&ctx, &server, &directory(&server, &[(0, "a"), (1, "b")])).await;
    apply(&ctx, &server, &directory(&server, &[(0, "a"), (1, "b2")])).await;
    assert_eq!(api.writes("mail-directory-01"), 2);
}

#[tokio::test]
async fn a_change_by_someone_else_during_a_write_asks_for_a_second_look() {
    let (api, server, ctx) = with_echo(true);
    assert_eq!(
        apply_once(&ctx, &server, &directory(&server, &[(0, "a")])).await,
        Applied::Done { look_again: true }
    );
    // The next apply finds the shard changed under it and writes it again.
    api.0.lock().expect("mock state").echo = None;
    let before = api.writes("mail-directory-00");
    apply(&ctx, &server, &directory(&server, &[(0, "a")])).await;
    assert_eq!(api.writes("mail-directory-00"), before + 1);
}

const PATCH: Method = Method::PATCH;

#[tokio::test]
async fn shards_go_before_the_head_unchanged_ones_not_at_all_and_orphans_after_the_head() {
    let api = MockApi::default();
    let server = fixtures::server("ns", "mail", 1);
    let ctx = context(&api, &server);
    apply(
        &ctx,
        &server,
        &directory(&server, &[(0, "a"), (1, "b"), (2, "c")]),
    )
    .await;
    let head = api.write_position("mail-directory");
    for shard in [
        "mail-directory-00",
        "mail-directory-01",
        "mail-directory-02",
    ] {
        assert!(
            api.write_position(shard) < head,
            "{shard} before the head: {:#?}",
            api.log()
        );
    }
    assert!(head < api.position(&PATCH, "/statefulsets/mail"));

    // Shard 00 unchanged, 01 changed, 02 no longer named.
    let before = api.log().len();
    apply(&ctx, &server, &directory(&server, &[(0, "a"), (1, "b2")])).await;
    let second: Vec<Seen> = api.log().split_off(before);
    let written = |name: &str| second.iter().position(|s| s.writes(name));
    assert_eq!(written("mail-directory-00"), None, "{second:#?}");
    let changed = written("mail-directory-01").expect("changed shard written");
    let head = written("mail-directory").expect("head applied");
    let orphan = second
        .iter()
        .position(|s| s.is(&Method::DELETE, "/configmaps/mail-directory-02"))
        .expect("orphan deleted");
    assert!(changed < head && head < orphan, "{second:#?}");
    assert_eq!(
        api.count(&Method::DELETE, "/configmaps/mail-directory-02"),
        1
    );
    assert_eq!(
        api.count(&Method::DELETE, "/configmaps/mail-directory-00"),
        0
    );
}

/// A mock API and a context holding server `mail`, domain `example.test` and these Mailboxes
/// (in the caches, and as the answers to their status patches).
fn with_mailboxes(names: &[&str]) -> (MockApi, MailServer, Arc<Context>) {
    let api = MockApi::default();
    let server = fixtures::server("ns", "mail", 1);
    let ctx = context(&api, &server);
    let domain = fixtures::domain("ns");
    api.hold(&server).hold(&domain);
    ctx.domains.apply(&Event::Apply(domain));
    for name in names {
        let mailbox = fixtures::mailbox("ns", name, 1, false);
        api.hold(&mailbox);
        ctx.mailboxes.apply(&Event::Apply(mailbox));
    }
    (api, server, ctx)
}

#[tokio::test]
async fn statuses_are_patched_only_after_the_directory_is_published() {
    let (api, server, ctx) = with_mailboxes(&["alice"]);

    reconcile(Arc::new(server.clone()), ctx.clone())
        .await
        .expect("reconciled");
    let task = ctx
        .member_status
        .lock()
        .expect("tasks")
        .remove(&server_key(&server))
        .map(|(_, task)| task)
        .expect("member status task spawned");
    task.await.expect("member status task");

    let head = api.write_position("mail-directory");
    let shard = api.write_position("mail-directory-00");
    let server_status = api.position(&PATCH, "/mailservers/mail/status");
    let mailbox_status = api.position(&PATCH, "/mailboxes/alice/status");
    let domain_status = api.position(&PATCH, "/maildomains/example/status");
    let log = api.log();
    assert!(shard < head, "{log:#?}");
    assert!(head < server_status, "{log:#?}");
    assert!(server_status < mailbox_status, "{log:#?}");
    assert!(server_status < domain_status, "{log:#?}");
    // The DirectoryPublished Event follows the status that shows the version.
    let event = (0..log.len())
        .find(|&i| log[i].is(&Method::POST, "/events"))
        .expect("an Event");
    assert!(server_status < event, "{log:#?}");
}

/// Reconcile `server` and wait for the members' status task it spawns, which stays registered
/// (as it does in the operator until the next snapshot replaces it).
async fn reconcile_and_publish_members(ctx: &Arc<Context>, server: &MailServer) {
    reconcile(Arc::new(server.clone()), ctx.clone())
        .await
        .expect("reconciled");
    loop {
        let finished = ctx
            .member_status
            .lock()
            .expect("tasks")
            .get(&server_key(server))
            .expect("member status task spawned")
            .1
            .is_finished();
        if finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reconcile after changes the caches and the watches already hold; the requests it made.
async fn reconcile_again(api: &MockApi, ctx: &Arc<Context>, server: &MailServer) -> Vec<Seen> {
    let before = api.log().len();
    reconcile_and_publish_members(ctx, server).await;
    api.log().split_off(before)
}

/// The snapshot the server's last reconcile kept.
fn kept_snapshot(ctx: &Context, server: &MailServer) -> Arc<Snapshot> {
    ctx.snapshots.lock().expect("snapshots")[&server_key(server)].clone()
}

#[tokio::test]
async fn an_in_place_mailbox_edit_publishes_its_shard_and_only_its_status() {
    use crate::input_changes::Change;
    let (api, server, ctx) = with_mailboxes(&["alice", "bob"]);
    let bob = fixtures::mailbox("ns", "bob", 1, false);
    reconcile_and_publish_members(&ctx, &server).await;
    assert_eq!(api.count(&PATCH, "/mailboxes/alice/status"), 1);
    assert_eq!(
        api.count(&Method::GET, "/configmaps"),
        1,
        "the shards listed once"
    );

    // Bob is suspended: the cache holds the edit, the watches count it (as in `watches`).
    let mut edited = bob;
    edited.metadata.generation = Some(2);
    edited.spec.suspended = true;
    api.hold(&edited);
    ctx.mailboxes.apply(&Event::Apply(edited));
    ctx.input_changes
        .record([(Some("ns".into()), Change::Mailbox("bob".into()))]);
    let second = reconcile_again(&api, &ctx, &server).await;
    let count = |path_end: &str| second.iter().filter(|s| s.is(&PATCH, path_end)).count();
    let writes = |name: &str| second.iter().filter(|s| s.writes(name)).count();
    assert_eq!(writes("mail-directory-00"), 1, "{second:#?}");
    assert_eq!(writes("mail-directory"), 1, "{second:#?}");
    assert_eq!(count("/mailboxes/bob/status"), 1, "{second:#?}");
    // Alice's status still differs from what her cached object shows (this mock does not feed
    // patches back into the caches), so a pass over every member would patch it again.
    assert_eq!(count("/mailboxes/alice/status"), 0, "{second:#?}");
    assert_eq!(count("/maildomains/example/status"), 0, "{second:#?}");
    // The shard names are those of the last listing: nothing can be left over, no list.
    assert!(
        !second.iter().any(|s| s.is(&Method::GET, "/configmaps")),
        "{second:#?}"
    );
    let snapshot = kept_snapshot(&ctx, &server);
    assert!(
        matches!(
            snapshot.made,
            Made::InPlace {
                entries: 1,
                shards: 1,
                copied: false
            }
        ),
        "{:?}",
        snapshot.made
    );
}

#[tokio::test]
async fn a_mailbox_created_and_one_deleted_are_applied_in_place() {
    use crate::input_changes::Change;
    let (api, server, ctx) = with_mailboxes(&["alice", "bob"]);
    reconcile_and_publish_members(&ctx, &server).await;

    // Bob goes and Carol comes: the caches hold both changes, the watches count them.
    ctx.mailboxes
        .apply(&Event::Delete(fixtures::mailbox("ns", "bob", 1, false)));
    let carol = fixtures::mailbox("ns", "carol", 1, false);
    api.hold(&carol);
    ctx.mailboxes.apply(&Event::Apply(carol));
    ctx.input_changes.record([
        (Some("ns".into()), Change::Mailbox("bob".into())),
        (Some("ns".into()), Change::Mailbox("carol".into())),
    ]);
    let second = reconcile_again(&api, &ctx, &server).await;
    let count = |path_end: &str| second.iter().filter(|s| s.is(&PATCH, path_end)).count();
    let writes = |name: &str| second.iter().filter(|s| s.writes(name)).count();
    assert_eq!(writes("mail-directory-00"), 1, "{second:#?}");
    assert_eq!(writes("mail-directory"), 1, "{second:#?}");
    assert_eq!(count("/mailboxes/carol/status"), 1, "{second:#?}");
    assert_eq!(count("/mailboxes/bob/status"), 0, "{second:#?}");
    assert_eq!(count("/mailboxes/alice/status"), 0, "{second:#?}");
    let snapshot = kept_snapshot(&ctx, &server);
    assert!(
        matches!(
            snapshot.made,
            Made::InPlace {
                entries: 2,
                shards: 1,
                copied: false
            }
        ),
        "{:?}",
        snapshot.made
    );
    let keys: Vec<&String> = snapshot.compiled.directory.mailboxes.keys().collect();
    assert_eq!(keys, ["alice@example.test", "carol@example.test"]);
    let shard = api
        .config_map("mail-directory-00")
        .expect("the shard was written")
        .to_string();
    assert!(
        shard.contains("carol@example.test") && !shard.contains("bob@example.test"),
        "{shard}"
    );
}

#[tokio::test]
async fn a_mail_alias_created_is_applied_in_place() {
    use crate::input_changes::Change;
    let (api, server, ctx) = with_mailboxes(&["alice", "bob"]);
    reconcile_and_publish_members(&ctx, &server).await;

    let sales = fixtures::alias("ns", "sales", "sales@example.test", "bob@example.test");
    api.hold(&sales);
    ctx.aliases.apply(&Event::Apply(sales));
    ctx.input_changes
        .record([(Some("ns".into()), Change::Alias("sales".into()))]);
    let second = reconcile_again(&api, &ctx, &server).await;
    let count = |path_end: &str| second.iter().filter(|s| s.is(&PATCH, path_end)).count();
    let writes = |name: &str| second.iter().filter(|s| s.writes(name)).count();
    assert_eq!(writes("mail-directory-00"), 1, "{second:#?}");
    assert_eq!(writes("mail-directory"), 1, "{second:#?}");
    assert_eq!(count("/mailaliases/sales/status"), 1, "{second:#?}");
    assert_eq!(count("/mailboxes/bob/status"), 0, "{second:#?}");
    let snapshot = kept_snapshot(&ctx, &server);
    assert!(
        matches!(
            snapshot.made,
            Made::InPlace {
                entries: 1,
                shards: 1,
                copied: false
            }
        ),
        "{:?}",
        snapshot.made
    );
    let shard = api
        .config_map("mail-directory-00")
        .expect("the shard was written")
        .to_string();
    assert!(shard.contains("sales@example.test"), "{shard}");
}

#[tokio::test]
async fn a_batch_of_member_changes_larger_than_the_in_place_limit_compiles_from_scratch() {
    use crate::input_changes::Change;
    let (api, server, ctx) = with_mailboxes(&["alice"]);
    reconcile_and_publish_members(&ctx, &server).await;

    // A bulk import: more new Mailboxes than are worth applying one walk at a time.
    let names: Vec<String> = (0..=snapshot::IN_PLACE_LIMIT)
        .map(|i| format!("new{i}"))
        .collect();
    for name in &names {
        let mailbox = fixtures::mailbox("ns", name, 1, false);
        api.hold(&mailbox);
        ctx.mailboxes.apply(&Event::Apply(mailbox));
    }
    ctx.input_changes.record(
        names
            .iter()
            .map(|name| (Some("ns".to_string()), Change::Mailbox(name.clone()))),
    );
    reconcile_and_publish_members(&ctx, &server).await;
    let snapshot = kept_snapshot(&ctx, &server);
    assert_eq!(snapshot.made, Made::Full);
    assert_eq!(
        snapshot.compiled.directory.mailboxes.len(),
        names.len() + 1,
        "every new Mailbox is in the directory"
    );
}

#[tokio::test]
async fn shards_are_created_then_replaced_whole_and_answered_with_their_metadata_only() {
    let (api, server, ctx) = with_echo(false);
    apply(&ctx, &server, &directory(&server, &[(0, "a")])).await;
    apply(&ctx, &server, &directory(&server, &[(0, "a2")])).await;
    let shard_writes: Vec<Seen> = api
        .log()
        .into_iter()
        .filter(|s| s.writes("mail-directory-00"))
        .collect();
    assert_eq!(
        api.write_methods("mail-directory-00"),
        [Method::POST, Method::PUT],
        "{shard_writes:#?}"
    );
    for write in &shard_writes {
        assert_eq!(
            write.accept.as_deref(),
            Some(METADATA_ONLY),
            "{shard_writes:#?}"
        );
    }
    assert!(
        api.config_map("mail-directory-00")
            .expect("stored")
            .to_string()
            .contains("a2"),
        "the replacement holds the new content"
    );
    // Everything else is still applied server-side (the head here).
    let head = api.write_methods("mail-directory");
    assert_eq!(head, [Method::PATCH]);
}

#[tokio::test]
async fn a_shard_write_falls_back_when_the_watch_is_out_of_date() {
    // The watch saw a shard that is gone: the replace finds nothing, so it is created.
    let (api, server, ctx) = with_echo(false);
    let mut seen = ConfigMap::default();
    seen.metadata.name = Some("mail-directory-00".into());
    seen.metadata.namespace = Some("ns".into());
    seen.metadata.resource_version = Some("7".into());
    let _ = ctx.owned.observe(Event::Apply(seen));
    apply(&ctx, &server, &directory(&server, &[(0, "a")])).await;
    let methods = api.write_methods("mail-directory-00");
    assert_eq!(methods, [Method::PUT, Method::POST]);
    assert!(api.config_map("mail-directory-00").is_some());

    // A shard there that the watch has not seen yet: the create conflicts, so it is replaced.
    let (api, server, ctx) = with_echo(false);
    api.0.lock().expect("mock state").config_maps.insert(
        "mail-directory-00".into(),
        json!({"metadata": {"name": "mail-directory-00", "resourceVersion": "1"}, "data": {}}),
    );
    apply(&ctx, &server, &directory(&server, &[(0, "a")])).await;
    let methods = api.write_methods("mail-directory-00");
    assert_eq!(methods, [Method::POST, Method::PUT]);
    assert!(
        api.config_map("mail-directory-00")
            .expect("stored")
            .to_string()
            .contains("\"a\\n\""),
        "replaced with the shard's content"
    );
}

#[tokio::test]
async fn after_a_start_shards_that_hold_what_is_wanted_are_read_not_written_again() {
    let api = MockApi::default();
    let server = fixtures::server("ns", "mail", 1);
    let wanted = directory(&server, &[(0, "a"), (1, "b"), (2, "c")]);
    apply(&context(&api, &server), &server, &wanted).await;
    // Shard 02 edited by hand while no operator ran (its hash annotation left as it was).
    api.0
        .lock()
        .expect("mock state")
        .config_maps
        .get_mut("mail-directory-02")
        .expect("stored")["data"]["mailboxes.jsonl"] = json!("forged\n");

    let restarted = context(&api, &server);
    let before = api.log().len();
    apply(&restarted, &server, &wanted).await;
    let second: Vec<Seen> = api.log().split_off(before);
    let read = |name: &str| {
        second
            .iter()
            .any(|s| s.is(&Method::GET, &format!("/configmaps/{name}")))
    };
    let written = |name: &str| second.iter().any(|s| s.writes(name));
    for name in ["mail-directory-00", "mail-directory-01"] {
        assert!(read(name) && !written(name), "{name}: {second:#?}");
    }
    assert!(
        written("mail-directory-02"),
        "the forged shard is repaired: {second:#?}"
    );
    assert!(
        api.config_map("mail-directory-02")
            .expect("stored")
            .to_string()
            .contains("\"c\\n\""),
        "with the wanted content"
    );
}
