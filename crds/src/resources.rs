//! The four custom resources of group `virtmail.io`, version `v1alpha1`.
//!
//! Doc comments on every field become `kubectl explain` text. Field names follow the Postfix
//! parameter they stand for, in camelCase (`virtual_minimum_uid` → `minimumUid`).

// clippy reads repeated `printcolumn(type_ = …)` arguments of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// API group of every virtmail resource.
pub const GROUP: &str = "virtmail.io";
/// API version of every virtmail resource.
pub const VERSION: &str = "v1alpha1";

/// Whether `name` is a name the apiserver accepts for these objects and their ConfigMaps (an
/// RFC 1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters, digits
/// and inner `-`). The manifest loader and the directory decoder hold names to it, so standalone
/// mode accepts what a cluster would and every directory can be encoded again.
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A DNS domain name in ASCII (IDNs in their `xn--` form), without a trailing dot.
pub const DOMAIN_PATTERN: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// `local@domain`: an unquoted local part (UTF-8 allowed) and a domain as in [`DOMAIN_PATTERN`].
pub const ADDRESS_PATTERN: &str = r#"^[^@\s"<>()\[\]\\,;:]+@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#;
/// `local@domain` or `@domain` (a catch-all alias).
pub const ALIAS_ADDRESS_PATTERN: &str = r#"^[^@\s"<>()\[\]\\,;:]*@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"#;
/// A local part without the `@`.
pub const LOCAL_PART_PATTERN: &str = r#"^[^@\s"<>()\[\]\\,;:]+$"#;
/// A relative mailbox path: no leading `/`, no NUL.
pub const PATH_PATTERN: &str = r"^[^/\x00][^\x00]*$";
/// An absolute directory without `..`.
pub const BASE_PATTERN: &str = r"^/[^\x00]*$";

/// How an mbox file is locked while mail is appended (Postfix `virtual_mailbox_lock`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LockMethod {
    /// POSIX record lock (`fcntl(F_SETLK)`) on the whole file.
    Fcntl,
    /// BSD `flock(LOCK_EX)`.
    Flock,
    /// A `<mailbox>.lock` file created exclusively beside the mailbox.
    Dotlock,
}

/// On-disk mailbox format.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum MailboxFormat {
    /// A qmail-style maildir (`tmp/ new/ cur/`); its path ends in `/`.
    Maildir,
    /// A UNIX mbox file (one file, `From ` separated); its path does not end in `/`.
    Mbox,
}

fn default_mailbox_base() -> String {
    "/var/mail/vhosts".into()
}
fn default_minimum_uid() -> u32 {
    100
}
fn default_mailbox_lock() -> Vec<LockMethod> {
    vec![LockMethod::Fcntl, LockMethod::Dotlock]
}
fn default_mailbox_size_limit() -> u64 {
    51_200_000
}
fn default_recipient_delimiter() -> String {
    "+".into()
}
fn default_replicas() -> i32 {
    1
}

/// One Postfix + delivery agent StatefulSet serving the MailDomains it selects.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "virtmail.io",
    version = "v1alpha1",
    kind = "MailServer",
    doc = "A Postfix + virtmail delivery agent StatefulSet serving the MailDomains it selects.",
    namespaced,
    status = "MailServerStatus",
    shortname = "msrv",
    category = "virtmail",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(json_path = ".spec.replicas", name = "Replicas", type_ = "integer"),
    printcolumn(
        json_path = ".status.readyReplicas",
        name = "Ready-Pods",
        type_ = "integer"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        name = "Ready",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Available\")].status",
        name = "Available",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".spec.service.type",
        name = "Service",
        type_ = "string",
        priority = "1"
    ),
    printcolumn(json_path = ".status.domains", name = "Domains", type_ = "integer"),
    printcolumn(json_path = ".status.mailboxes", name = "Mailboxes", type_ = "integer"),
    printcolumn(
        json_path = ".status.directory.version",
        name = "Directory",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[x_kube(validation = Rule::new("has(self.outbound) || !has(self.postfix) || !has(self.postfix.parameters) || !self.postfix.parameters.exists(k, k in ['relayhost', 'default_transport', 'relay_transport', 'transport_maps', 'relay_domains', 'sender_dependent_relayhost_maps', 'sender_dependent_default_transport_maps', 'smtp_fallback_relay', 'fallback_transport', 'content_filter', 'always_bcc', 'sender_bcc_maps', 'recipient_bcc_maps'])").message("postfix.parameters may send mail elsewhere than this server's mailboxes (relayhost, transports, relay_domains, content_filter, BCC maps) only when spec.outbound declares how outbound mail leaves"))]
#[x_kube(validation = Rule::new("self.replicas <= 1 || (has(self.storage) && has(self.storage.existingClaim))").message("replicas > 1 needs storage.existingClaim, a ReadWriteMany claim every pod shares: with a claim template each pod would hold its own copy of the mailboxes"))]
#[serde(rename_all = "camelCase")]
pub struct MailServerSpec {
    /// Directory prepended to every mailbox path (Postfix `virtual_mailbox_base`). The persistent
    /// volume is mounted here in the agent container. Absolute.
    #[serde(default = "default_mailbox_base")]
    #[schemars(regex(pattern = BASE_PATTERN), length(max = 255))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..')").message("mailboxBase must not contain '..'"))]
    pub mailbox_base: String,

    /// Smallest uid a mailbox may be owned by (Postfix `virtual_minimum_uid`). Mailboxes with a
    /// smaller uid are kept in the directory as deferring entries (mail waits, never bounces).
    #[serde(default = "default_minimum_uid")]
    #[schemars(range(min = 1))]
    pub minimum_uid: u32,

    /// mbox locking methods, applied in the order dotlock, flock, fcntl (Postfix
    /// `virtual_mailbox_lock`). Maildir delivery needs no lock.
    #[serde(default = "default_mailbox_lock")]
    #[schemars(length(min = 1, max = 3))]
    pub mailbox_lock: Vec<LockMethod>,

    /// Largest mbox file and largest Maildir message file in bytes, 0 for no limit (Postfix
    /// `virtual_mailbox_limit`). Postfix's `message_size_limit` is derived from it.
    #[serde(default = "default_mailbox_size_limit")]
    pub mailbox_size_limit: u64,

    /// Characters that separate a local part from its extension (`user+ext@domain` delivers to
    /// `user@domain`). Empty disables extensions (Postfix `recipient_delimiter`).
    #[serde(default = "default_recipient_delimiter")]
    #[schemars(length(max = 8))]
    pub recipient_delimiter: String,

    /// Which MailDomains in this namespace this server serves. Empty or absent selects every
    /// MailDomain in the namespace.
    pub domain_selector: Option<LabelSelector>,

    /// Number of Postfix + agent pods. More than one needs `storage.existingClaim`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Persistent volume holding the mailboxes.
    pub storage: Option<StorageSpec>,

    /// The Postfix container.
    pub postfix: Option<PostfixSpec>,

    /// The delivery agent container.
    pub agent: Option<AgentSpec>,

    /// How the server's Service exposes SMTP (default: a ClusterIP Service on port 25).
    pub service: Option<ServiceExposure>,

    /// Placement and metadata of the server's pods.
    pub pod: Option<PodSettings>,

    /// How mail this server sends itself (a Mailbox's `autoreply`) leaves: Postfix hands it to
    /// `relayHost`. Absent: this server sends no mail of its own, and every `autoreply` is refused
    /// (reason `AutoreplyRefused` on the Mailbox).
    pub outbound: Option<OutboundSpec>,
}

/// A Postfix `relayhost`: `host`, `host:port`, `[host]` or `[host]:port` (brackets: no MX lookup).
pub const RELAY_HOST_PATTERN: &str =
    r"^(\[[A-Za-z0-9.:-]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$";

/// Whether `relay_host` is a Postfix `relayhost` as [`RELAY_HOST_PATTERN`] describes it (the
/// apiserver checks the schema; manifests read from files and the Postfix profile check here).
pub fn valid_relay_host(relay_host: &str) -> bool {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(RELAY_HOST_PATTERN).expect("RELAY_HOST_PATTERN compiles")
    });
    relay_host.len() <= 261 && PATTERN.is_match(relay_host)
}

/// The outbound path of a MailServer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundSpec {
    /// The relay every outgoing message goes to (Postfix `relayhost`), e.g.
    /// `[smtp.example.net]:587`.
    #[schemars(regex(pattern = RELAY_HOST_PATTERN), length(max = 261))]
    pub relay_host: String,
}

impl Default for MailServerSpec {
    fn default() -> Self {
        // Same values as an empty spec decoded through serde, so `{}` and `Default` agree.
        serde_json::from_str("{}").expect("an empty MailServer spec is valid")
    }
}

/// Where the mailboxes live.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Use this existing PersistentVolumeClaim (shared by all replicas: it must be ReadWriteMany
    /// when replicas > 1). When absent, a claim template gives each replica its own volume.
    pub existing_claim: Option<String>,
    /// Size requested by the claim template.
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))").message("size must be a quantity such as 512Mi or 10Gi"))]
    pub size: Option<Quantity>,
    /// StorageClass of the claim template; absent uses the cluster default.
    pub storage_class_name: Option<String>,
    /// Access modes of the claim template (default `[ReadWriteOnce]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
}

/// Settings of the Postfix container.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostfixSpec {
    /// Container image of Postfix.
    pub image: Option<String>,
    /// Compute resources of the Postfix container.
    pub resources: Option<ResourceRequirements>,
    /// Extra main.cf parameters, applied after virtmail's profile. Parameters that wire Postfix
    /// to the agent cannot be overridden, and none may make the server relay mail for others
    /// (`mynetworks` beyond loopback, a `mynetworks_style` other than `host`, relay restrictions
    /// without `reject_unauth_destination`, or a transport that sends mail elsewhere).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 40))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z0-9_]{1,64}$'))").message("postfix.parameters keys are main.cf parameter names: lowercase letters, digits and '_'"))]
    #[x_kube(validation = Rule::new("!self.exists(k, k in ['virtual_transport', 'virtual_mailbox_domains', 'virtual_mailbox_maps', 'virtual_alias_maps', 'virtual_alias_domains', 'recipient_delimiter', 'lmtp_line_length_limit', 'lmtp_destination_recipient_limit', 'mydestination', 'smtpd_tls_cert_file', 'smtpd_tls_key_file', 'smtpd_upstream_proxy_protocol'])").message("postfix.parameters may not override the parameters that wire Postfix to the agent (virtual_*, recipient_delimiter, lmtp_*, mydestination) or the ones set by postfix.tls and postfix.proxyProtocol"))]
    #[x_kube(validation = Rule::new("!('mynetworks_style' in self) || self['mynetworks_style'] == 'host'").message("mynetworks_style other than host would let other hosts relay through this server"))]
    pub parameters: BTreeMap<String, String>,
    /// STARTTLS on SMTP with the certificate of a `kubernetes.io/tls` Secret in the server's
    /// namespace (keys `tls.crt`, `tls.key`). A renewed Secret is picked up without a restart.
    pub tls: Option<TlsSettings>,
    /// The load balancer in front of the Service speaks HAProxy's PROXY protocol (v1 or v2):
    /// the Service's SMTP port then reaches a Postfix listener that expects it and records the
    /// real client address. Clients that connect directly must not use that port.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// SMTP TLS settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// Name of a `kubernetes.io/tls` Secret (e.g. one cert-manager keeps renewed).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Kind of Service that exposes SMTP.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceKind {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's (or MetalLB's) load balancer.
    LoadBalancer,
}

/// Which nodes route external traffic (Kubernetes `externalTrafficPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficPolicy {
    /// Any node forwards to the pod; the client's address is lost to SNAT.
    Cluster,
    /// Only nodes with a ready pod receive traffic; Postfix sees the client's address.
    Local,
}

/// The Service in front of the server's pods.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("nodePort needs type NodePort or LoadBalancer"))]
#[x_kube(validation = Rule::new("!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'").message("externalTrafficPolicy needs type NodePort or LoadBalancer"))]
#[x_kube(validation = Rule::new("!has(self.loadBalancerSourceRanges) || self.type == 'LoadBalancer'").message("loadBalancerSourceRanges needs type LoadBalancer"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceExposure {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceKind,
    /// Annotations of the Service (load balancer settings, external-dns names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `Cluster` or `Local` (keeps the client's address; see Kubernetes `externalTrafficPolicy`).
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// Fixed node port of SMTP (inside the cluster's node port range); absent: allocated.
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
    /// Load balancer implementation (`spec.loadBalancerClass`).
    pub load_balancer_class: Option<String>,
    /// Client networks the load balancer admits (CIDRs); absent: all.
    #[schemars(length(max = 64))]
    pub load_balancer_source_ranges: Option<Vec<String>>,
}

/// Placement and metadata of a MailServer's pods.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Extra pod labels (the `app.kubernetes.io/*` labels virtmail sets win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity.
    pub affinity: Option<Affinity>,
    /// How replicas spread across zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the Postfix and agent images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Seconds a stopping pod gets (default 60). Postfix hands its queue to the agent for up to
    /// a third of it; mail still queued then stays on the pod's queue volume for the next pod.
    #[schemars(range(min = 30, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Settings of the delivery agent container.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Container image of the agent.
    pub image: Option<String>,
    /// Compute resources of the agent container.
    pub resources: Option<ResourceRequirements>,
    /// Log format of the agent: `text` or `json`.
    #[x_kube(validation = Rule::new("self in ['text', 'json']").message("logFormat is text or json"))]
    pub log_format: Option<String>,
    /// How the agent receives the directory: `Api` (default) watches the directory ConfigMaps
    /// through the Kubernetes API and sees changes within a second; `MountedFiles` reads them
    /// from a projected ConfigMap volume, for clusters that forbid API access from pods (changes
    /// then arrive with the kubelet's sync, up to about a minute, and the agent reports
    /// provisioning in its logs and metrics instead of the Mailbox status).
    pub directory_source: Option<DirectorySource>,
    /// Namespace of the metrics scraper (e.g. Prometheus). The operator's NetworkPolicy admits
    /// connections to the agent's HTTP port (`/metrics`, `/healthz`, `/readyz`) only from pods
    /// of this namespace; absent: from no pod (SMTP stays open to all).
    pub metrics_namespace: Option<String>,
}

/// How the agent receives the directory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DirectorySource {
    /// Watch the ConfigMaps through the API (the agent's ServiceAccount may get/list/watch them).
    #[default]
    Api,
    /// Read a projected ConfigMap volume; the pod gets no API token.
    MountedFiles,
}

/// The compiled directory as published.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryStatus {
    /// Content version of the published directory.
    pub version: String,
    /// Number of shard ConfigMaps.
    pub shards: u32,
    /// Bytes of directory data across all shards.
    pub bytes: u64,
}

/// Observed state of a MailServer.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailServerStatus {
    /// Generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready` (the last reconcile succeeded and the spec is served as written),
    /// `Available` (every wanted pod is ready), `DirectoryPublished`, `DomainConflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Domains served.
    #[serde(default)]
    pub domains: u32,
    /// Mailboxes in the directory (deferring entries included).
    #[serde(default)]
    pub mailboxes: u32,
    /// Aliases in the directory (implied postmaster aliases included).
    #[serde(default)]
    pub aliases: u32,
    /// Objects with a diagnostic.
    #[serde(default)]
    pub invalid: u32,
    /// The published directory.
    pub directory: Option<DirectoryStatus>,
    /// Pods of the StatefulSet that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the StatefulSet (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the pods, as a string (the scale subresource's selector).
    pub selector: Option<String>,
}

/// Fallback owner, format and quota for the mailboxes of a domain.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxDefaults {
    /// uid that owns mailboxes which set none (Postfix `virtual_uid_maps = static:N`).
    #[schemars(range(min = 1))]
    pub uid: Option<u32>,
    /// gid that owns mailboxes which set none (Postfix `virtual_gid_maps = static:N`).
    #[schemars(range(min = 1))]
    pub gid: Option<u32>,
    /// Format of mailboxes which set none (default Maildir).
    pub format: Option<MailboxFormat>,
    /// Quota of mailboxes which set none.
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))").message("quota must be a quantity such as 512Mi or 10Gi"))]
    pub quota: Option<Quantity>,
}

/// A mail domain whose recipients have virtual mailboxes (Postfix `virtual_mailbox_domains`).
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "virtmail.io",
    version = "v1alpha1",
    kind = "MailDomain",
    doc = "A mail domain whose recipients have virtual mailboxes (Postfix virtual_mailbox_domains).",
    namespaced,
    status = "MailDomainStatus",
    shortname = "mdom",
    category = "virtmail",
    printcolumn(json_path = ".spec.domain", name = "Domain", type_ = "string"),
    printcolumn(json_path = ".spec.postmaster", name = "Postmaster", type_ = "string"),
    printcolumn(json_path = ".status.mailboxes", name = "Mailboxes", type_ = "integer"),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        name = "Ready",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainSpec {
    /// The domain name, e.g. `example.com`. Case-insensitive.
    #[schemars(regex(pattern = DOMAIN_PATTERN), length(max = 253))]
    pub domain: String,
    /// Address of the person responsible for this domain (RFC 2142). Unless a Mailbox or
    /// MailAlias defines `postmaster@<domain>`, virtmail adds an alias to this address.
    #[schemars(regex(pattern = ADDRESS_PATTERN), length(max = 320))]
    pub postmaster: String,
    /// Owner, format and quota used by mailboxes of this domain that set none.
    pub defaults: Option<MailboxDefaults>,
    /// Local part of a mailbox in this domain that receives mail for every address of the domain
    /// that has no Mailbox or MailAlias of its own (`@domain`).
    #[schemars(regex(pattern = LOCAL_PART_PATTERN), length(max = 64))]
    pub catch_all: Option<String>,
    /// The uids the domain's Mailboxes may be owned by (inclusive). A Mailbox (or the domain's
    /// default) outside it defers with `InvalidOwner`. Lets the administrator who creates the
    /// MailDomain bound what the authors of its Mailboxes may choose; absent: any uid at or
    /// above the server's `minimumUid`.
    pub uid_range: Option<IdRange>,
    /// The gids the domain's Mailboxes may use (inclusive); like `uidRange`.
    pub gid_range: Option<IdRange>,
}

/// An inclusive range of numeric ids.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("min must not be greater than max"))]
#[serde(rename_all = "camelCase")]
pub struct IdRange {
    /// Smallest id allowed.
    #[schemars(range(min = 1))]
    pub min: u32,
    /// Largest id allowed.
    #[schemars(range(min = 1))]
    pub max: u32,
}

impl IdRange {
    /// Whether `id` lies in the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.min..=self.max).contains(&id)
    }
}

/// Observed state of a MailDomain.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainStatus {
    /// Generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`: served by a MailServer's published directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Mailboxes of this domain in the directory.
    #[serde(default)]
    pub mailboxes: u32,
    /// MailServers that serve this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// One virtual mailbox: a recipient address delivered to a Maildir or an mbox file on the volume.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "virtmail.io",
    version = "v1alpha1",
    kind = "Mailbox",
    doc = "A virtual mailbox: a recipient address delivered to a Maildir or an mbox file.",
    namespaced,
    status = "MailboxStatus",
    shortname = "mbx",
    category = "virtmail",
    printcolumn(json_path = ".spec.address", name = "Address", type_ = "string"),
    printcolumn(json_path = ".status.format", name = "Format", type_ = "string"),
    printcolumn(json_path = ".status.uid", name = "Uid", type_ = "integer"),
    printcolumn(
        json_path = ".status.gid",
        name = "Gid",
        type_ = "integer",
        priority = "1"
    ),
    printcolumn(
        json_path = ".status.quota",
        name = "Quota",
        type_ = "string",
        priority = "1"
    ),
    printcolumn(
        json_path = ".status.path",
        name = "Path",
        type_ = "string",
        priority = "1"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        name = "Ready",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Provisioned\")].status",
        name = "Provisioned",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[x_kube(validation = Rule::new("!has(self.path) || !has(self.format) || (self.path.endsWith('/') == (self.format == 'Maildir'))").message("a path ending in '/' is a Maildir and an mbox path must not end in '/': make format and path agree"))]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// The recipient address, `local@domain`. Case-insensitive; `local+ext@domain` is delivered
    /// here too.
    #[schemars(regex(pattern = ADDRESS_PATTERN), length(max = 320))]
    pub address: String,
    /// `Maildir` or `Mbox`. Absent: the path decides (trailing `/` = Maildir), else the domain's
    /// default, else Maildir.
    pub format: Option<MailboxFormat>,
    /// Location below the server's `mailboxBase`. Default `<domain>/<local>/` for Maildir and
    /// `<domain>/<local>` for Mbox. Relative; no `.` or `..` components, no empty components.
    #[schemars(regex(pattern = PATH_PATTERN), length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.split('/').exists(c, c == '..' || c == '.')").message("path must not contain '.' or '..' components"))]
    #[x_kube(validation = Rule::new("!self.contains('//')").message("path must not contain empty components"))]
    pub path: Option<String>,
    /// Owner uid of the mailbox; deliveries run with it. Default: the domain's `defaults.uid`.
    /// Must be at least the server's `minimumUid`; 0 is never accepted.
    #[schemars(range(min = 1))]
    pub uid: Option<u32>,
    /// Group of the mailbox. Default: the domain's `defaults.gid`. 0 is never accepted.
    #[schemars(range(min = 1))]
    pub gid: Option<u32>,
    /// Largest total size of the mailbox (e.g. `1Gi`); mail that would exceed it is refused at
    /// RCPT with 552 5.2.2. Absent: the domain's default, else no quota.
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))").message("quota must be a quantity such as 512Mi or 10Gi"))]
    pub quota: Option<Quantity>,
    /// Temporarily refuse mail with 450 4.2.1 (senders retry); nothing is bounced.
    #[serde(default)]
    pub suspended: bool,
    /// An automatic reply (RFC 3834) to mail delivered here, sent through the MailServer's
    /// `outbound` path (refused without one).
    pub autoreply: Option<AutoreplySpec>,
}

/// A vacation-style automatic reply. It is sent after the message is stored, at most once per
/// sender per `interval`, never to a null, `MAILER-DAEMON`, `owner-*` or `*-request` sender, nor
/// for mail marked `Auto-Submitted` (other than `no`), `Precedence: bulk|list|junk`, mailing-list
/// mail (`List-*` headers), or mail that does not name the mailbox's address in To or Cc.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoreplySpec {
    /// Subject of the reply. Absent: `Auto: <subject of the message>`.
    #[schemars(length(max = 256))]
    pub subject: Option<String>,
    /// Text of the reply (plain text, UTF-8).
    #[schemars(length(min = 1, max = 65536))]
    pub body: String,
    /// Reply only to mail delivered at or after this time (RFC 3339).
    pub start: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Reply only to mail delivered before this time (RFC 3339).
    pub end: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Least time between two replies to one sender: a number and a unit, `h` or `d` (e.g.
    /// `12h`, `7d`); at least `1h`. Default `7d` (RFC 3834).
    #[schemars(regex(pattern = r"^[0-9]{1,5}[hd]$"))]
    pub interval: Option<String>,
}

/// Observed state of a Mailbox.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStatus {
    /// Generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready` (in the published directory) and `Provisioned` (exists on the volume with the
    /// right owner, set by the agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Absolute path of the mailbox inside the agent container.
    pub path: Option<String>,
    /// Format in effect (the spec's, else the path's or the domain's default).
    pub format: Option<MailboxFormat>,
    /// Owner uid in effect (the spec's, else the domain's default).
    pub uid: Option<u32>,
    /// Group in effect (the spec's, else the domain's default).
    pub gid: Option<u32>,
    /// Quota in effect, in bytes, absent for none.
    pub quota: Option<u64>,
}

/// A virtual alias (Postfix `virtual_alias_maps`): mail to `address` goes to every `to` address.
/// Listing `address` itself in `to` keeps a copy in its own mailbox (the autoreply pattern).
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "virtmail.io",
    version = "v1alpha1",
    kind = "MailAlias",
    doc = "A virtual alias (Postfix virtual_alias_maps): mail to address goes to every to address.",
    namespaced,
    status = "MailAliasStatus",
    shortname = "malias",
    category = "virtmail",
    printcolumn(json_path = ".spec.address", name = "Address", type_ = "string"),
    printcolumn(json_path = ".spec.to", name = "To", type_ = "string"),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        name = "Ready",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[x_kube(validation = Rule::new("!has(self.pattern) || self.address.startsWith('@')").message("a pattern alias names its domain as address: '@<domain>'"))]
#[serde(rename_all = "camelCase")]
pub struct MailAliasSpec {
    /// `local@domain`, or `@domain` for every address of the domain without a Mailbox or
    /// MailAlias of its own. The domain must be served by a MailDomain. With `pattern`, always
    /// `@domain`: the domain the pattern applies to.
    #[schemars(regex(pattern = ALIAS_ADDRESS_PATTERN), length(max = 320))]
    pub address: String,
    /// A regular expression (Rust `regex` syntax, linear-time, no backreferences) that the whole
    /// local part must match, case-insensitively, with or without its extension: e.g.
    /// `sales-[a-z]+` sends `sales-eu@domain` and `Sales-Asia+x@domain` to `to`. Tried after every
    /// exact address (Mailbox or MailAlias) and before the domain's `@domain` alias and
    /// `catchAll`; when several patterns match, the oldest MailAlias wins. No `$1` substitution
    /// in `to`. At most 256 characters, and 256 patterns per domain.
    #[schemars(length(min = 1, max = 256))]
    pub pattern: Option<String>,
    /// Destination addresses, in this or any other domain.
    #[schemars(length(min = 1, max = 1000), inner(regex(pattern = ADDRESS_PATTERN)))]
    pub to: Vec<String>,
}

/// Observed state of a MailAlias.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailAliasStatus {
    /// Generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`: in the published directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
