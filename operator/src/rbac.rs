//! The operator's own RBAC, kept next to the code that needs it: `virtmail-operator rbac` prints
//! it, the Helm chart and tests install exactly this.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const MANAGE: &[&str] = &[
    "get", "list", "watch", "create", "patch", "update", "delete",
];

/// Cluster-wide rules: read the four kinds, write their status, manage the owned objects.
/// The agent Role the operator creates grants nothing the operator lacks (no `escalate`).
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["virtmail.io"],
            &["mailservers", "maildomains", "mailboxes", "mailaliases"],
            READ,
        ),
        rule(
            &["virtmail.io"],
            &[
                "mailservers/status",
                "maildomains/status",
                "mailboxes/status",
                "mailaliases/status",
            ],
            &["get", "patch", "update"],
        ),
        // Owner references with blockOwnerDeletion need this where the admission plugin
        // OwnerReferencesPermissionEnforcement is on.
        rule(&["virtmail.io"], &["mailservers/finalizers"], &["update"]),
        rule(
            &[""],
            &["configmaps", "services", "serviceaccounts"],
            MANAGE,
        ),
        rule(&["apps"], &["statefulsets"], MANAGE),
        rule(&["policy"], &["poddisruptionbudgets"], MANAGE),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            MANAGE,
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

/// Rules in the operator's own namespace: the leader-election Lease.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "update"],
    )]
}

/// ClusterRole, ClusterRoleBinding, Role and RoleBinding for a service account.
pub fn objects(
    name: &str,
    namespace: &str,
    service_account: &str,
) -> (ClusterRole, ClusterRoleBinding, Role, RoleBinding) {
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: service_account.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let role_ref = |kind: &str| RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
    };
    let cluster_meta = ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let ns_meta = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    (
        ClusterRole {
            metadata: cluster_meta.clone(),
            rules: Some(cluster_rules()),
            ..Default::default()
        },
        ClusterRoleBinding {
            metadata: cluster_meta,
            role_ref: role_ref("ClusterRole"),
            subjects: Some(vec![subject.clone()]),
        },
        Role {
            metadata: ns_meta.clone(),
            rules: Some(namespace_rules()),
        },
        RoleBinding {
            metadata: ns_meta,
            role_ref: role_ref("Role"),
            subjects: Some(vec![subject]),
        },
    )
}

/// The RBAC objects as one YAML stream.
pub fn yaml(name: &str, namespace: &str, service_account: &str) -> String {
    let (cr, crb, r, rb) = objects(name, namespace, service_account);
    let docs = [
        serde_yaml::to_string(&cr),
        serde_yaml::to_string(&crb),
        serde_yaml::to_string(&r),
        serde_yaml::to_string(&rb),
    ];
    docs.into_iter()
        .map(|d| format!("---\n{}", d.expect("RBAC objects serialize")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secrets_and_no_escalation() {
        let all: Vec<PolicyRule> = cluster_rules()
            .into_iter()
            .chain(namespace_rules())
            .collect();
        for rule in &all {
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(
                !resources.iter().any(|r| r == "secrets" || r == "*"),
                "{rule:?}"
            );
            assert!(
                !rule
                    .verbs
                    .iter()
                    .any(|v| v == "escalate" || v == "bind" || v == "*"),
                "{rule:?}"
            );
        }
        let text = yaml("virtmail-operator", "virtmail-system", "virtmail-operator");
        assert_eq!(text.matches("---\n").count(), 4);
        assert!(text.contains("kind: ClusterRoleBinding"));
    }
}
