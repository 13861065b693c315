use std::path::Path;

use virtmail_crds::encoding;
use virtmail_crds::manifests::load_dir;

use super::*;
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// A MailServer as the API would return it (namespace and uid set).
fn example_server(example: &str) -> (MailServer, Encoded) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let resources = load_dir(&dir).expect("example loads");
    let mut server = resources.server(None).expect("server");
    server.metadata.namespace = Some("mail".into());
    server.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    let compiled = virtmail_crds::compile(resources.inputs(&server));
    let encoded = encoding::encode(&compiled.directory);
    (server, encoded)
}

/// The StatefulSet's pod template.
fn pod_of(d: &Desired) -> &PodSpec {
    d.stateful_set.spec.template.spec.as_ref().expect("pod")
}

/// The pod's container `name`.
fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} container"))
}

#[test]
fn owned_object_names_are_the_contract() {
    let (server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let directory = directory_config_maps(&server, &encoded);
    assert_eq!(d.head, *directory.last().expect("head"));
    assert_eq!(
        directory.last().and_then(|c| c.metadata.name.as_deref()),
        Some("mail-directory")
    );
    assert!(directory[..directory.len() - 1].iter().all(|c| {
        c.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("mail-directory-"))
    }));
    assert_eq!(d.postfix.metadata.name.as_deref(), Some("mail-postfix"));
    assert_eq!(d.stateful_set.metadata.name.as_deref(), Some("mail"));
    assert_eq!(d.service.metadata.name.as_deref(), Some("mail"));
    assert_eq!(
        d.service_account.metadata.name.as_deref(),
        Some("mail-agent")
    );
    assert_eq!(d.role.metadata.name.as_deref(), Some("mail-agent"));
    assert_eq!(d.role_binding.metadata.name.as_deref(), Some("mail-agent"));
    assert!(d.pod_disruption_budget.is_none(), "replicas 1: no PDB");
    for owner in [
        &d.postfix.metadata,
        &d.service.metadata,
        &d.stateful_set.metadata,
    ] {
        let refs = owner.owner_references.as_ref().expect("owner refs");
        assert_eq!(refs[0].kind, "MailServer");
        assert_eq!(refs[0].controller, Some(true));
    }
}

#[test]
fn agent_container_has_exactly_three_capabilities_and_the_volume() {
    let (server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let pod = pod_of(&d);
    let agent = container(pod, "agent");
    let postfix = container(pod, "postfix");
    let sc = agent.security_context.as_ref().expect("securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["SETUID".to_string(), "SETGID".into(), "CHOWN".into()][..])
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let mounts = |c: &Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect()
    };
    assert!(mounts(agent).contains(&"mailboxes".to_string()));
    assert!(
        !mounts(postfix).contains(&"mailboxes".to_string()),
        "the PV is mounted only in the agent"
    );
    assert!(
        mounts(postfix).contains(&"sockets".to_string())
            && mounts(agent).contains(&"sockets".to_string())
    );
    let args = agent.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--lmtp unix:/run/virtmail/lmtp.sock"),
        "{args}"
    );
    assert!(args.contains("--mailbox-base /var/mail/vhosts"), "{args}");
    assert_eq!(
        agent
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref()),
        Some("/readyz")
    );
    let claims = d
        .stateful_set
        .spec
        .volume_claim_templates
        .as_ref()
        .expect("claim template");
    let names: Vec<_> = claims.iter().map(|c| c.metadata.name.as_deref()).collect();
    assert_eq!(names, [Some("postfix-queue"), Some("mailboxes")]);
}

/// Mail accepted with 250 survives the pod: Postfix's queue is on each pod's own volume, the
/// queue is handed to the agent at stop while the agent keeps serving, and the pod's grace
/// period covers both.
#[test]
fn postfix_queue_is_persistent_and_drained_before_the_agent_stops() {
    let (server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let spec = &d.stateful_set.spec;
    let queue = spec
        .volume_claim_templates
        .as_ref()
        .and_then(|c| {
            c.iter()
                .find(|c| c.metadata.name.as_deref() == Some("postfix-queue"))
        })
        .expect("a queue claim template");
    assert_eq!(
        queue.spec.as_ref().and_then(|s| s.access_modes.clone()),
        Some(vec!["ReadWriteOnce".to_string()])
    );
    let pod = pod_of(&d);
    let postfix = container(pod, "postfix");
    let mounts = postfix.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "postfix-queue" && m.mount_path == "/var/spool/postfix")
    );
    assert_eq!(
        postfix
            .readiness_probe
            .as_ref()
            .and_then(|p| p.tcp_socket.as_ref())
            .map(|t| t.port.clone()),
        Some(IntOrString::Int(25))
    );
    let drain = postfix
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("a preStop drain");
    assert_eq!(
        drain[1..],
        [
            "drain".to_string(),
            postfix_flush_seconds(TERMINATION_GRACE_SECONDS).to_string()
        ]
    );
    let agent = container(pod, "agent");
    let agent_wait = agent
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds)
        .expect("the agent waits for the drain");
    assert!(agent_wait > postfix_flush_seconds(TERMINATION_GRACE_SECONDS));
    let grace = pod
        .termination_grace_period_seconds
        .expect("a grace period");
    assert!(
        grace > agent_wait + 10,
        "grace {grace} s, agent waits {agent_wait} s"
    );
    // The queue's size goes from Postfix to the agent's /metrics through one file in the
    // shared socket directory, named to both containers.
    let stats = postfix
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "VIRTMAIL_QUEUE_STATS")
        .and_then(|e| e.value.clone())
        .expect("Postfix is told where to write its queue size");
    let args = agent.args.as_deref().unwrap_or_default();
    let told = args.windows(2).find(|w| w[0] == "--postfix-queue-stats");
    assert_eq!(told.map(|w| w[1].as_str()), Some(stats.as_str()));
    assert!(stats.starts_with(&format!("{SOCKET_DIR}/")), "{stats}");
}

#[test]
fn agent_role_grants_only_configmaps_read_and_mailbox_status_patch() {
    let (server, encoded) = example_server("2-coexisting-with-local");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let rules = d.role.rules.expect("rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["configmaps".to_string()][..])
    );
    assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
    assert_eq!(
        rules[1].resources.as_deref(),
        Some(&["mailboxes/status".to_string()][..])
    );
    assert_eq!(rules[1].verbs, vec!["patch"]);
}

#[test]
fn replicas_and_existing_claim() {
    let (mut server, encoded) = example_server("3-many-virtual-users");
    server.spec.replicas = 3;
    server.spec.storage = Some(virtmail_crds::StorageSpec {
        existing_claim: Some("shared-mail".into()),
        ..Default::default()
    });
    let d = desired(&server, &encoded, &BuildConfig::default());
    assert!(d.pod_disruption_budget.is_some());
    let spec = d.stateful_set.spec;
    let claims: Vec<_> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(
        claims,
        [Some("postfix-queue".to_string())],
        "only the queue is per pod"
    );
    let volumes = spec.template.spec.expect("pod").volumes.expect("volumes");
    let mail = volumes
        .iter()
        .find(|v| v.name == "mailboxes")
        .expect("mailboxes volume");
    assert_eq!(
        mail.persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some("shared-mail")
    );
}

#[test]
fn postfix_config_hash_changes_only_with_the_profile() {
    let (server, encoded) = example_server("4-forwarding-old-address");
    let hash = |s: &MailServer, e: &Encoded| {
        desired(s, e, &BuildConfig::default())
            .stateful_set
            .spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("virtmail.io/postfix-config-hash").cloned())
            .expect("hash")
    };
    let (_, other_encoded) = example_server("5-autoreply-copy");
    assert_eq!(
        hash(&server, &encoded),
        hash(&server, &other_encoded),
        "directory changes do not restart pods"
    );
    let mut bigger = server.clone();
    bigger.spec.mailbox_size_limit = 1_000_000;
    assert_ne!(hash(&server, &encoded), hash(&bigger, &encoded));
}

#[test]
fn shard_config_maps_carry_their_hash() {
    let (server, encoded) = example_server("3-many-virtual-users");
    for (cm, shard) in directory_config_maps(&server, &encoded)
        .iter()
        .zip(&encoded.shards)
    {
        assert_eq!(cm.metadata.name.as_deref(), Some(shard.name.as_str()));
        assert_eq!(
            cm.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_SHARD_HASH)),
            Some(&shard.hash)
        );
    }
}

fn mounted_server(example: &str) -> (MailServer, Encoded) {
    example_with(example, "agent: {directorySource: MountedFiles}")
}

#[test]
fn api_mode_mounts_no_directory_and_keeps_the_token() {
    let (server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let pod = pod_of(&d);
    assert_eq!(pod.automount_service_account_token, None);
    assert!(pod.volumes.iter().flatten().all(|v| v.name != "directory"));
    let agent = container(pod, "agent");
    let args = agent.args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--namespace $(POD_NAMESPACE)"), "{args}");
    assert!(!args.contains("--directory-dir"), "{args}");
}

#[test]
fn mounted_files_mode_projects_head_and_every_shard_slot_without_a_token() {
    let (server, encoded) = mounted_server("3-many-virtual-users");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let pod = pod_of(&d);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let agent = container(pod, "agent");
    let args = agent.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--directory-dir /etc/virtmail/directory"),
        "{args}"
    );
    assert!(!args.contains("--namespace"), "{args}");
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "directory")
        .expect("directory mount");
    assert_eq!(mount.mount_path, DIRECTORY_DIR);
    assert_eq!(mount.read_only, Some(true));
    let postfix = container(pod, "postfix");
    assert!(
        postfix
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "directory")
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "directory")
        .expect("directory volume");
    let sources = volume
        .projected
        .as_ref()
        .and_then(|p| p.sources.clone())
        .expect("projected sources");
    assert_eq!(sources.len(), 1 + encoding::MOUNT_SLOTS);
    let head = sources[0].config_map.as_ref().expect("head");
    assert_eq!(head.name, "mail-directory");
    assert_eq!(head.items, None, "the head's keys land at the top");
    assert_eq!(
        head.optional,
        Some(true),
        "the pod starts before the first publish"
    );
    // Every shard the directory has now is among the slots, with its keys under its name.
    for shard in &encoded.shards {
        let slot = sources
            .iter()
            .filter_map(|s| s.config_map.as_ref())
            .find(|c| c.name == shard.name)
            .expect("shard slot");
        assert_eq!(slot.optional, Some(true));
        let paths: Vec<String> = slot
            .items
            .iter()
            .flatten()
            .map(|i| format!("{}={}", i.key, i.path))
            .collect();
        assert_eq!(
            paths,
            vec![
                format!("domains.jsonl={}/domains.jsonl", shard.name),
                format!("mailboxes.jsonl={}/mailboxes.jsonl", shard.name),
                format!("aliases.jsonl={}/aliases.jsonl", shard.name),
            ]
        );
    }
    // The pod has no token, so the Role grants nothing.
    assert_eq!(d.role.rules, Some(Vec::new()));
}

#[test]
fn mounted_files_volume_changes_only_when_the_shard_count_passes_a_slot_boundary() {
    let (server, encoded) = mounted_server("1-virtual-for-all-mail");
    let config = BuildConfig::default();
    let a = stateful_set(&server, &config, "h", encoded.shards.len());
    let b = stateful_set(&server, &config, "h", 64);
    let c = stateful_set(&server, &config, "h", 65);
    assert_eq!(a, b);
    assert_ne!(b, c);
}

/// More than one pod with a claim template would split a mailbox's mail over volumes: the
/// operator runs one and says why.
#[test]
fn replicas_above_one_without_a_shared_claim_run_one_and_are_refused() {
    let (mut server, encoded) = example_server("1-virtual-for-all-mail");
    server.spec.replicas = 3;
    let d = desired(&server, &encoded, &BuildConfig::default());
    assert_eq!(d.stateful_set.spec.replicas, Some(1));
    assert!(
        d.refused_parameters
            .iter()
            .any(|r| r.contains("storage.existingClaim")),
        "{:?}",
        d.refused_parameters
    );
    server.spec.storage = Some(virtmail_crds::StorageSpec {
        existing_claim: Some("shared".into()),
        ..Default::default()
    });
    let d = desired(&server, &encoded, &BuildConfig::default());
    assert_eq!(d.stateful_set.spec.replicas, Some(3));
    assert!(d.refused_parameters.is_empty());
}

#[test]
fn agent_gets_its_own_uid_floor_from_the_mailserver() {
    let (mut server, encoded) = example_server("1-virtual-for-all-mail");
    server.spec.minimum_uid = 2000;
    let d = desired(&server, &encoded, &BuildConfig::default());
    let pod = pod_of(&d);
    let agent = container(pod, "agent");
    let args = agent.args.clone().unwrap_or_default().join(" ");
    assert!(args.contains("--minimum-uid 2000"), "{args}");
}

#[test]
fn network_policy_admits_smtp_from_anywhere_and_http_only_from_the_metrics_namespace() {
    let (mut server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    assert_eq!(d.network_policy.metadata.name.as_deref(), Some("mail"));
    let spec = d.network_policy.spec.clone().expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let ingress = spec.ingress.clone().unwrap_or_default();
    assert_eq!(ingress.len(), 1, "no metrics namespace: HTTP from nobody");
    assert!(ingress[0].from.is_none(), "SMTP from anywhere");
    server.spec.agent = Some(virtmail_crds::resources::AgentSpec {
        metrics_namespace: Some("monitoring".into()),
        ..Default::default()
    });
    let d = desired(&server, &encoded, &BuildConfig::default());
    let ingress = d
        .network_policy
        .spec
        .clone()
        .and_then(|s| s.ingress)
        .unwrap_or_default();
    assert_eq!(ingress.len(), 2);
    let http = &ingress[1];
    assert_eq!(
        http.ports.as_ref().and_then(|p| p[0].port.clone()),
        Some(IntOrString::Int(AGENT_HTTP_PORT))
    );
    let from = http.from.clone().unwrap_or_default();
    assert_eq!(
        from[0]
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("kubernetes.io/metadata.name"))
            .map(String::as_str),
        Some("monitoring")
    );
    assert!(owned_by(&d.network_policy, &server));
}

/// A server of example 1 with `spec` merged in (as YAML).
fn server_with(spec: &str) -> (MailServer, Encoded) {
    example_with("1-virtual-for-all-mail", spec)
}

/// A server of `example` with `spec` merged in (as YAML).
fn example_with(example: &str, spec: &str) -> (MailServer, Encoded) {
    let (mut server, encoded) = example_server(example);
    let mut value = serde_json::to_value(&server.spec).expect("spec");
    let extra: serde_json::Value = serde_yaml::from_str(spec).expect("spec YAML");
    for (k, v) in extra.as_object().expect("a mapping") {
        value[k] = v.clone();
    }
    server.spec = serde_json::from_value(value).expect("a valid spec");
    (server, encoded)
}

#[test]
fn tls_secret_is_mounted_read_only_for_postfix_and_wired_in_main_cf() {
    let (server, encoded) = server_with("postfix: {tls: {secretName: mail-tls}}");
    let d = desired(&server, &encoded, &BuildConfig::default());
    let pod = pod_of(&d);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .expect("a tls volume");
    let secret = volume.secret.as_ref().expect("from a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("mail-tls"));
    assert_eq!(secret.default_mode, Some(0o400));
    let postfix = container(pod, "postfix");
    let agent = container(pod, "agent");
    let mounts = |c: &Container| -> Vec<(String, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.read_only == Some(true)))
            .collect()
    };
    assert!(mounts(postfix).contains(&("tls".into(), true)));
    assert!(
        !mounts(agent).iter().any(|(n, _)| n == "tls"),
        "the agent never sees the key"
    );
    let main_cf = &d.postfix.data.as_ref().unwrap()["main.cf"];
    assert!(main_cf.contains(&format!("smtpd_tls_cert_file = {TLS_DIR}/tls.crt")));
    assert!(main_cf.contains("smtpd_tls_security_level = may"));
    let (plain, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&plain, &encoded, &BuildConfig::default());
    assert!(!d.postfix.data.as_ref().unwrap()["main.cf"].contains("smtpd_tls_cert_file"));
}

#[test]
fn service_exposure_and_proxy_protocol() {
    let (server, encoded) = server_with(
        "service: {type: LoadBalancer, externalTrafficPolicy: Local, nodePort: 30025, annotations: {lb.example/x: y}}
postfix: {proxyProtocol: true}",
    );
    let d = desired(&server, &encoded, &BuildConfig::default());
    let spec = d.service.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.node_port), (25, Some(30025)));
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("smtp-proxy".into()))
    );
    assert_eq!(
        d.service.metadata.annotations.as_ref().unwrap()["lb.example/x"],
        "y"
    );
    let pod = pod_of(&d);
    let postfix = container(pod, "postfix");
    assert!(postfix.ports.iter().flatten().any(|p| {
        p.name.as_deref() == Some("smtp-proxy")
            && p.container_port == i32::from(PROXY_PROTOCOL_PORT)
    }));
    assert!(
        d.postfix.data.as_ref().unwrap()["master-services.cf"]
            .contains("smtpd_upstream_proxy_protocol=haproxy")
    );
    let policy = d.network_policy.spec.unwrap().ingress.unwrap();
    assert!(
        policy[0]
            .ports
            .iter()
            .flatten()
            .any(|p| p.port == Some(IntOrString::String("smtp-proxy".into())))
    );
    // Default: a ClusterIP Service to Postfix's plain listener.
    let (plain, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&plain, &encoded, &BuildConfig::default());
    let spec = d.service.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        spec.ports.as_ref().unwrap()[0].target_port,
        Some(IntOrString::String("smtp".into()))
    );
}

#[test]
fn pod_settings_reach_the_pod_template_and_virtmail_labels_win() {
    let (server, encoded) = server_with(
        "pod:
  labels: {team: mail, app.kubernetes.io/name: other}
  annotations: {backup.example/enabled: 'true'}
  nodeSelector: {disk: ssd}
  tolerations: [{key: mail, operator: Exists, effect: NoSchedule}]
  priorityClassName: mail-critical
  imagePullSecrets: [{name: registry}]
  terminationGracePeriodSeconds: 90
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway}]",
    );
    let d = desired(&server, &encoded, &BuildConfig::default());
    let template = d.stateful_set.spec.template;
    let meta = template.metadata.expect("meta");
    let labels = meta.labels.expect("labels");
    assert_eq!(labels["team"], "mail");
    assert_eq!(labels["app.kubernetes.io/name"], "virtmail");
    assert_eq!(labels["app.kubernetes.io/part-of"], "virtmail");
    let annotations = meta.annotations.expect("annotations");
    assert_eq!(annotations["backup.example/enabled"], "true");
    assert!(annotations.contains_key("virtmail.io/postfix-config-hash"));
    let pod = template.spec.expect("pod");
    assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("mail"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("mail-critical"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
    assert_eq!(pod.topology_spread_constraints.unwrap()[0].max_skew, 1);
    assert_eq!(pod.termination_grace_period_seconds, Some(90));
    let drain = pod.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap();
    assert_eq!(drain[2], "30", "a third of the grace");
    for meta in [
        &d.service.metadata,
        &d.postfix.metadata,
        &d.stateful_set.metadata,
    ] {
        let labels = meta.labels.as_ref().unwrap();
        for key in ["part-of", "component", "managed-by", "instance", "name"] {
            assert!(
                labels.contains_key(&format!("app.kubernetes.io/{key}")),
                "{key}"
            );
        }
    }
}
