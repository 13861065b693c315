use std::path::Path;

use virtmail_crds::encoding;
use virtmail_crds::manifests::load_dir;

use super::*;
use k8s_openapi::api::core::v1::Container;

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

#[test]
fn owned_object_names_are_the_contract() {
    let (server, encoded) = example_server("1-virtual-for-all-mail");
    let d = desired(&server, &encoded, &BuildConfig::default());
    assert_eq!(
        d.directory.last().and_then(|c| c.metadata.name.as_deref()),
        Some("mail-directory")
    );
    assert!(d.directory[..d.directory.len() - 1].iter().all(|c| {
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
    let pod = d.stateful_set.spec.template.spec.as_ref().expect("pod");
    let agent = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("agent");
    let postfix = pod
        .containers
        .iter()
        .find(|c| c.name == "postfix")
        .expect("postfix");
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
    assert_eq!(claims[0].metadata.name.as_deref(), Some("mailboxes"));
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
    assert!(spec.volume_claim_templates.is_none());
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
