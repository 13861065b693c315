//! The "build desired objects" step: pure functions from a MailServer and its compiled directory
//! to every object the operator owns for it (names are a contract; docs/ARCHITECTURE.md).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, SleepAction, TCPSocketAction, Volume, VolumeMount,
    VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use virtmail_crds::contract::{
    self, AgentArgs, AgentDirectory, DIRECTORY_DIR, LMTP_SOCKET, POSTFIX_QUEUE_STATS, SOCKET_DIR,
    SOCKETMAP_SOCKET,
};
use virtmail_crds::encoding::{
    self, ANNOTATION_SHARD_HASH, Encoded, LABEL_ROLE, LABEL_SERVER, Shard,
};
use virtmail_crds::{DirectorySource, MailServer, ServiceKind, TrafficPolicy};

use crate::profile::{self, Profile, ProfileInput};

/// Port of the agent's HTTP endpoints, as Kubernetes types it.
pub const AGENT_HTTP_PORT: i32 = contract::AGENT_HTTP_PORT as i32;
/// Where the Postfix container reads the TLS Secret (`tls.crt`, `tls.key`).
pub const TLS_DIR: &str = "/etc/virtmail/tls";
/// Postfix's SMTP listener that expects HAProxy's PROXY protocol (`postfix.proxyProtocol`).
pub const PROXY_PROTOCOL_PORT: u16 = 10025;
/// Postfix's queue, on its own volume per pod: mail accepted with 250 and not yet delivered
/// survives a pod restart.
pub const POSTFIX_QUEUE_DIR: &str = "/var/spool/postfix";
/// Size of each pod's Postfix queue volume.
pub const POSTFIX_QUEUE_SIZE: &str = "1Gi";
/// The pod's default termination grace (`pod.terminationGracePeriodSeconds`).
pub const TERMINATION_GRACE_SECONDS: i64 = 60;

/// At stop, Postfix hands its queue to the agent for at most this long (a third of the grace)
/// before it stops; the agent keeps serving meanwhile (its own stop waits five seconds longer),
/// and what is left stays in the persistent queue for the next pod.
pub fn postfix_flush_seconds(grace: i64) -> i64 {
    (grace / 3).max(5)
}

fn termination_grace(server: &MailServer) -> i64 {
    let pod = server.spec.pod.as_ref();
    pod.and_then(|p| p.termination_grace_period_seconds)
        .unwrap_or(TERMINATION_GRACE_SECONDS)
}
/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "virtmail-operator";

/// Images and other operator-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// Default agent image.
    pub agent_image: String,
    /// Default Postfix image.
    pub postfix_image: String,
}

impl Default for BuildConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            agent_image: format!("virtmail/agent:{version}"),
            postfix_image: format!("virtmail/postfix:{version}"),
        }
    }
}

/// Every object owned by one MailServer.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The directory head; shards are built one by one ([`shard_config_map`]) when applied.
    pub head: ConfigMap,
    /// `<server>-postfix`.
    pub postfix: ConfigMap,
    /// `<server>-agent`.
    pub service_account: ServiceAccount,
    /// `<server>-agent`.
    pub role: Role,
    /// `<server>-agent`.
    pub role_binding: RoleBinding,
    /// `<server>`.
    pub service: Service,
    /// `<server>`.
    pub stateful_set: StatefulSet,
    /// `<server>`, only when replicas > 1.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// `<server>`: SMTP from anywhere, the agent's HTTP port from the metrics namespace only.
    pub network_policy: NetworkPolicy,
    /// Profile parameters the server asked for and did not get.
    pub refused_parameters: Vec<String>,
}

/// Names of the owned objects.
pub fn postfix_config_name(server: &str) -> String {
    format!("{server}-postfix")
}

/// ServiceAccount, Role and RoleBinding of the agent.
pub fn agent_identity_name(server: &str) -> String {
    format!("{server}-agent")
}

/// Labels shared by every owned object (Kubernetes' recommended `app.kubernetes.io/*` set);
/// the first two select the pods.
pub fn labels(server: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "virtmail".to_string()),
        ("app.kubernetes.io/instance".to_string(), server.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "mailserver".to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "virtmail".to_string(),
        ),
        (
            "app.kubernetes.io/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
    ])
}

/// Labels that select a server's pods (stable for the StatefulSet's immutable selector).
fn selector_labels(server: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "virtmail".to_string()),
        ("app.kubernetes.io/instance".to_string(), server.to_string()),
    ])
}

/// The pods' label selector as a string (the scale subresource's `status.selector`).
pub fn pod_selector(server: &str) -> String {
    selector_labels(server)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Owner reference making `server` the controller of an object (garbage collection).
pub fn owner_reference(server: &MailServer) -> OwnerReference {
    server
        .controller_owner_ref(&())
        .expect("a MailServer read from the API has a name and uid")
}

fn meta(server: &MailServer, name: String, extra_labels: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = labels(&server.name_any());
    for (k, v) in extra_labels {
        labels.insert((*k).to_string(), (*v).to_string());
    }
    ObjectMeta {
        name: Some(name),
        namespace: server.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(server)]),
        ..Default::default()
    }
}

/// One directory shard's ConfigMap. Built only when the shard must be applied: a shard that
/// already holds what we want is never copied (at 100,000 mailboxes the shards are 12 MB).
pub fn shard_config_map(server: &MailServer, shard: &Shard) -> ConfigMap {
    let mut metadata = meta(
        server,
        shard.name.clone(),
        &[(LABEL_SERVER, &server.name_any()), (LABEL_ROLE, "shard")],
    );
    metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_SHARD_HASH.to_string(),
        shard.hash.clone(),
    )]));
    ConfigMap {
        metadata,
        data: Some((*shard.data).clone()),
        ..Default::default()
    }
}

/// The directory head's ConfigMap.
pub fn head_config_map(server: &MailServer, encoded: &Encoded) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            server,
            encoded.head_name.clone(),
            &[(LABEL_SERVER, &server.name_any()), (LABEL_ROLE, "head")],
        ),
        data: Some(encoded.head.clone()),
        ..Default::default()
    }
}

/// Every directory ConfigMap: shards first, head last (the apply order that keeps readers safe).
pub fn directory_config_maps(server: &MailServer, encoded: &Encoded) -> Vec<ConfigMap> {
    let mut maps: Vec<ConfigMap> = encoded
        .shards
        .iter()
        .map(|shard| shard_config_map(server, shard))
        .collect();
    maps.push(head_config_map(server, encoded));
    maps
}

/// The Postfix profile for a server.
pub fn postfix_profile(server: &MailServer) -> Profile {
    profile::profile(&ProfileInput {
        lmtp_socket: LMTP_SOCKET.into(),
        socketmap_socket: SOCKETMAP_SOCKET.into(),
        mailbox_size_limit: server.spec.mailbox_size_limit,
        recipient_delimiter: server.spec.recipient_delimiter.clone(),
        extra: server
            .spec
            .postfix
            .as_ref()
            .map(|p| p.parameters.clone())
            .unwrap_or_default(),
        tls_dir: tls_secret(server).map(|_| TLS_DIR.to_string()),
        proxy_protocol_port: proxy_protocol(server).then_some(PROXY_PROTOCOL_PORT),
        relay_host: server.spec.outbound.as_ref().map(|o| o.relay_host.clone()),
    })
}

fn tls_secret(server: &MailServer) -> Option<&str> {
    let tls = server.spec.postfix.as_ref()?.tls.as_ref()?;
    Some(tls.secret_name.as_str())
}

fn proxy_protocol(server: &MailServer) -> bool {
    let postfix = server.spec.postfix.as_ref();
    postfix.is_some_and(|p| p.proxy_protocol)
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(AGENT_HTTP_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    })
}

/// The agent container: root (it must switch to each mailbox owner) with only the three
/// capabilities that needs, read-only root filesystem.
fn agent_container(server: &MailServer, config: &BuildConfig) -> Container {
    let name = server.name_any();
    let spec = &server.spec;
    let agent = spec.agent.clone().unwrap_or_default();
    let mounted = directory_source(server) == DirectorySource::MountedFiles;
    let mut mounts = vec![
        volume_mount("sockets", SOCKET_DIR, false),
        volume_mount("mailboxes", &spec.mailbox_base, false),
        volume_mount("tmp", "/tmp", false),
    ];
    if mounted {
        mounts.push(volume_mount("directory", DIRECTORY_DIR, true));
    }
    let args = AgentArgs {
        server: name,
        directory: if mounted {
            AgentDirectory::Mounted {
                dir: DIRECTORY_DIR.into(),
            }
        } else {
            AgentDirectory::Api {
                namespace: "$(POD_NAMESPACE)".into(),
            }
        },
        mailbox_base: spec.mailbox_base.clone(),
        // The agent's own uid floor: the directory ConfigMaps (writable by whoever may write
        // ConfigMaps in the namespace) cannot lower it.
        minimum_uid: spec.minimum_uid.max(1),
        log_format: agent.log_format.clone(),
    }
    .to_args();
    Container {
        name: "agent".into(),
        image: Some(agent.image.unwrap_or_else(|| config.agent_image.clone())),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "POD_NAMESPACE".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: AGENT_HTTP_PORT,
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        // Outlive Postfix's flush at stop (the image has no shell: the kubelet sleeps).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: postfix_flush_seconds(termination_grace(server)) + 5,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: agent.resources,
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["SETUID".into(), "SETGID".into(), "CHOWN".into()]),
            }),
            seccomp_profile: runtime_default_seccomp(),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The MailServer's directory source (default `Api`).
pub fn directory_source(server: &MailServer) -> DirectorySource {
    server
        .spec
        .agent
        .as_ref()
        .and_then(|a| a.directory_source)
        .unwrap_or_default()
}

/// `MountedFiles` mode: one projected volume with the head (keys at the top) and a fixed list of
/// optional shard slots (keys under `<shard name>/`), so the volume never has to change when
/// shards are rewritten; the kubelet swaps the whole volume at once (`..data`), and the agent
/// still serves a version only when every shard matches the head's hash.
fn directory_volume(server: &MailServer, shards: usize) -> Volume {
    let name = server.name_any();
    let mut sources = vec![VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: encoding::head_name(&name),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }];
    for index in 0..encoding::mount_slots(shards) {
        let shard = encoding::shard_name(&name, index);
        let items = [
            encoding::KEY_DOMAINS,
            encoding::KEY_MAILBOXES,
            encoding::KEY_ALIASES,
        ]
        .iter()
        .map(|key| KeyToPath {
            key: (*key).to_string(),
            path: format!("{shard}/{key}"),
            ..Default::default()
        })
        .collect();
        sources.push(VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: shard,
                optional: Some(true),
                items: Some(items),
            }),
            ..Default::default()
        });
    }
    Volume {
        name: "directory".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Postfix container: the image applies `/etc/virtmail/postfix/{main.cf,master.cf}` with
/// postconf at start. It never sees the mailbox volume.
fn postfix_container(server: &MailServer, config: &BuildConfig) -> Container {
    let postfix = server.spec.postfix.clone().unwrap_or_default();
    let mut ports = vec![ContainerPort {
        name: Some("smtp".into()),
        container_port: 25,
        ..Default::default()
    }];
    if postfix.proxy_protocol {
        ports.push(ContainerPort {
            name: Some("smtp-proxy".into()),
            container_port: PROXY_PROTOCOL_PORT.into(),
            ..Default::default()
        });
    }
    let mut mounts = vec![
        volume_mount("sockets", SOCKET_DIR, false),
        volume_mount("postfix-config", "/etc/virtmail/postfix", true),
        volume_mount("postfix-queue", POSTFIX_QUEUE_DIR, false),
    ];
    if postfix.tls.is_some() {
        mounts.push(volume_mount("tls", TLS_DIR, true));
    }
    Container {
        name: "postfix".into(),
        image: Some(
            postfix
                .image
                .unwrap_or_else(|| config.postfix_image.clone()),
        ),
        ports: Some(ports),
        env: Some(vec![EnvVar {
            name: "VIRTMAIL_QUEUE_STATS".into(),
            value: Some(POSTFIX_QUEUE_STATS.into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(25),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/usr/local/bin/postfix-entrypoint".into(),
                        "drain".into(),
                        postfix_flush_seconds(termination_grace(server)).to_string(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: postfix.resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            seccomp_profile: runtime_default_seccomp(),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// Why the MailServer's replicas cannot run as asked, if they cannot: more than one pod needs one
/// volume they all share (`storage.existingClaim`, ReadWriteMany); with a claim template each pod
/// would hold its own mailboxes behind one Service, and a mailbox's mail would be split between
/// them. The schema refuses this too; this covers objects stored before that rule.
pub fn replicas_refusal(server: &MailServer) -> Option<String> {
    let shared = server
        .spec
        .storage
        .as_ref()
        .is_some_and(|s| s.existing_claim.is_some());
    (server.spec.replicas > 1 && !shared).then(|| {
        format!(
            "replicas {} needs storage.existingClaim (a ReadWriteMany claim every pod shares); running 1",
            server.spec.replicas
        )
    })
}

fn effective_replicas(server: &MailServer) -> i32 {
    if replicas_refusal(server).is_some() {
        1
    } else {
        server.spec.replicas
    }
}

fn stateful_set(
    server: &MailServer,
    config: &BuildConfig,
    postfix_hash: &str,
    shards: usize,
) -> StatefulSet {
    let name = server.name_any();
    let spec = &server.spec;
    let mounted = directory_source(server) == DirectorySource::MountedFiles;
    let storage = spec.storage.clone().unwrap_or_default();
    let mut volumes = vec![
        empty_dir("sockets"),
        empty_dir("tmp"),
        Volume {
            name: "postfix-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: postfix_config_name(&name),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if mounted {
        volumes.push(directory_volume(server, shards));
    }
    if let Some(secret) = tls_secret(server) {
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                // Read by Postfix's root processes only.
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let claim = |name: &str, access_modes: Vec<String>, size: Quantity| PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Each pod's own queue, also when the mailboxes are one shared claim.
    let mut claim_templates = vec![claim(
        "postfix-queue",
        vec!["ReadWriteOnce".into()],
        Quantity(POSTFIX_QUEUE_SIZE.into()),
    )];
    match &storage.existing_claim {
        Some(claim) => volumes.push(Volume {
            name: "mailboxes".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        None => {
            let access_modes = if storage.access_modes.is_empty() {
                vec!["ReadWriteOnce".to_string()]
            } else {
                storage.access_modes.clone()
            };
            claim_templates.push(claim(
                "mailboxes",
                access_modes,
                storage
                    .size
                    .clone()
                    .unwrap_or_else(|| Quantity("10Gi".into())),
            ));
        }
    }
    let pod = spec.pod.clone().unwrap_or_default();
    // The user's labels first: virtmail's own (which select the pods) win.
    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(labels(&name));
    pod_labels.remove("app.kubernetes.io/managed-by");
    let mut pod_annotations = pod.annotations.clone();
    // Pods restart when the Postfix profile changes; directory changes reach the running agent
    // through its watch instead.
    pod_annotations.insert(
        "virtmail.io/postfix-config-hash".to_string(),
        postfix_hash.to_string(),
    );
    StatefulSet {
        metadata: meta(server, name.clone(), &[]),
        spec: StatefulSetSpec {
            replicas: Some(effective_replicas(server)),
            service_name: Some(name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(agent_identity_name(&name)),
                    // MountedFiles is for clusters that forbid API access from pods.
                    automount_service_account_token: mounted.then_some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: runtime_default_seccomp(),
                        ..Default::default()
                    }),
                    containers: vec![
                        postfix_container(server, config),
                        agent_container(server, config),
                    ],
                    termination_grace_period_seconds: Some(termination_grace(server)),
                    volumes: Some(volumes),
                    node_selector: (!pod.node_selector.is_empty()).then_some(pod.node_selector),
                    tolerations: (!pod.tolerations.is_empty()).then_some(pod.tolerations),
                    affinity: pod.affinity,
                    topology_spread_constraints: (!pod.topology_spread_constraints.is_empty())
                        .then_some(pod.topology_spread_constraints),
                    priority_class_name: pod.priority_class_name,
                    image_pull_secrets: (!pod.image_pull_secrets.is_empty())
                        .then_some(pod.image_pull_secrets),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(claim_templates),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Build every owned object. Pure.
pub fn desired(server: &MailServer, encoded: &Encoded, config: &BuildConfig) -> Desired {
    let name = server.name_any();
    let identity = agent_identity_name(&name);
    let profile = postfix_profile(server);
    let postfix_data = BTreeMap::from([
        ("main.cf".to_string(), profile.main_cf()),
        ("master.cf".to_string(), profile.master_cf()),
        (
            "master-services.cf".to_string(),
            profile.master_services_cf(),
        ),
    ]);
    let postfix_hash =
        hex::encode(&Sha256::digest(encoding::data_hash(&postfix_data).as_bytes())[..8]);
    let postfix = ConfigMap {
        metadata: meta(server, postfix_config_name(&name), &[]),
        data: Some(postfix_data),
        ..Default::default()
    };
    let service_account = ServiceAccount {
        metadata: meta(server, identity.clone(), &[]),
        ..Default::default()
    };
    let role = Role {
        metadata: meta(server, identity.clone(), &[]),
        // MountedFiles: the pod gets no token, so the Role grants nothing.
        rules: Some(
            if directory_source(server) == DirectorySource::MountedFiles {
                Vec::new()
            } else {
                vec![
                    // The directory ConfigMaps (the agent watches them with a label selector, which
                    // resourceNames cannot restrict; keep MailServers in their own namespace).
                    PolicyRule {
                        api_groups: Some(vec![String::new()]),
                        resources: Some(vec!["configmaps".into()]),
                        verbs: vec!["get".into(), "list".into(), "watch".into()],
                        ..Default::default()
                    },
                    // The Provisioned condition.
                    PolicyRule {
                        api_groups: Some(vec![virtmail_crds::GROUP.into()]),
                        resources: Some(vec!["mailboxes/status".into()]),
                        verbs: vec!["patch".into()],
                        ..Default::default()
                    },
                ]
            },
        ),
    };
    let role_binding = RoleBinding {
        metadata: meta(server, identity.clone(), &[]),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: identity.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: identity,
            namespace: server.namespace(),
            ..Default::default()
        }]),
    };
    let service = service(server);
    let pod_disruption_budget = (server.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(server, name.clone(), &[]),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let network_policy = network_policy(server);
    Desired {
        network_policy,
        head: head_config_map(server, encoded),
        postfix,
        service_account,
        role,
        role_binding,
        service,
        stateful_set: stateful_set(server, config, &postfix_hash, encoded.shards.len()),
        pod_disruption_budget,
        refused_parameters: profile
            .refused
            .into_iter()
            .chain(replicas_refusal(server))
            .collect(),
    }
}

/// The Service in front of the pods: SMTP on port 25, exposed as `spec.service` says. With
/// `postfix.proxyProtocol` it leads to Postfix's PROXY-protocol listener.
pub fn service(server: &MailServer) -> Service {
    let name = server.name_any();
    let exposure = server.spec.service.clone().unwrap_or_default();
    let mut metadata = meta(server, name.clone(), &[]);
    if !exposure.annotations.is_empty() {
        metadata.annotations = Some(exposure.annotations.clone());
    }
    let target = if proxy_protocol(server) {
        "smtp-proxy"
    } else {
        "smtp"
    };
    let type_ = match exposure.type_ {
        ServiceKind::ClusterIP => "ClusterIP",
        ServiceKind::NodePort => "NodePort",
        ServiceKind::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("smtp".into()),
                port: 25,
                target_port: Some(IntOrString::String(target.into())),
                node_port: exposure.node_port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            external_traffic_policy: exposure.external_traffic_policy.map(|p| {
                match p {
                    TrafficPolicy::Cluster => "Cluster",
                    TrafficPolicy::Local => "Local",
                }
                .to_string()
            }),
            load_balancer_class: exposure.load_balancer_class,
            load_balancer_source_ranges: exposure.load_balancer_source_ranges,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pods' ingress: SMTP (Postfix's `smtp` port) from anywhere, the agent's HTTP port only
/// from pods in `spec.agent.metricsNamespace` (none when unset). Anyone in the cluster network
/// is untrusted; the agent's HTTP server also caps and times out connections itself.
pub fn network_policy(server: &MailServer) -> NetworkPolicy {
    let name = server.name_any();
    let scraper = server
        .spec
        .agent
        .as_ref()
        .and_then(|a| a.metrics_namespace.clone());
    let port = |port: IntOrString| NetworkPolicyPort {
        port: Some(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut smtp_ports = vec![port(IntOrString::String("smtp".into()))];
    if proxy_protocol(server) {
        smtp_ports.push(port(IntOrString::String("smtp-proxy".into())));
    }
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(smtp_ports),
        ..Default::default()
    }];
    if let Some(namespace) = scraper {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        namespace,
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![port(IntOrString::Int(AGENT_HTTP_PORT))]),
        });
    }
    NetworkPolicy {
        metadata: meta(server, name.clone(), &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// Whether an object is owned (as controller) by this server.
pub fn owned_by<K: Resource>(object: &K, server: &MailServer) -> bool {
    let uid = server.meta().uid.as_deref();
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests;
