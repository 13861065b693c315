//! The node (`tools/cluster.sh up --node`) and the images (`tools/images.sh build`), as users'
//! pods meet them: the node registers Ready with containerd 2 and its own identity; a pod of
//! each project image starts; a claim template binds to the default StorageClass and a non-root
//! pod writes to it; a Service's ClusterIP reaches a pod from the host and from another pod; the
//! `kubernetes` Service serves in-cluster config; and nothing a pod sends is routed off the
//! machine.

use std::time::Duration;

use virtmail_tests::cluster::TestNamespace;
use virtmail_tests::node::{self, apply, banner, eventually, exec, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn node_registers_ready_with_its_own_identity() {
    let cluster = node::cluster();
    let node = cluster.node();
    let object: serde_json::Value = serde_json::from_str(
        &virtmail_tests::cluster::run(
            cluster
                .kubectl()
                .args(["get", "node", &node.name, "-o", "json"]),
        )
        .expect("the node is registered"),
    )
    .unwrap();
    let ready = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready["status"], "True", "node not Ready: {object:#}");
    let info = &object["status"]["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://2."),
        "runtime: {info:#}"
    );
    assert_eq!(info["kubeletVersion"], "v1.37.2");
    let addresses = object["status"]["addresses"].as_array().unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == node.ip.as_str()),
        "the node registers its local address {}: {addresses:?}",
        node.ip
    );
    // The node address is local to this machine: nothing sent to it leaves.
    assert!(
        node::route_get(&node.ip).starts_with("local "),
        "{}",
        node::route_get(&node.ip)
    );
    // The kubelet's identity is its own (Node authorizer): it may read its own Node but, under
    // NodeRestriction, may not label another.
    let other = virtmail_tests::cluster::run_with_stdin(
        cluster
            .kubectl()
            .env(
                "KUBECONFIG",
                cluster
                    .admin_kubeconfig
                    .parent()
                    .unwrap()
                    .join("kubelet.kubeconfig"),
            )
            .args(["create", "-f", "-"]),
        "apiVersion: v1\nkind: Node\nmetadata: {name: not-this-kubelet}\n",
    );
    let err = other.expect_err("a kubelet may not create another Node");
    assert!(err.stderr.contains("forbidden"), "{err}");
}

#[test]
fn a_pod_of_each_image_starts() {
    let cluster = node::cluster();
    let ns = cluster.namespace("node-images");
    let version = env!("CARGO_PKG_VERSION");
    let operator = node::run_pod(&ns, "operator", &node::image("operator"), &["--version"]);
    assert_eq!(operator.trim(), format!("virtmail-operator {version}"));
    let agent = node::run_pod(&ns, "agent", &node::image("agent"), &["--version"]);
    assert_eq!(agent.trim(), format!("virtmail-agent {version}"));

    // Postfix: the entrypoint applies a profile from the mounted ConfigMap and answers on 25.
    postfix_behind_a_service(
        &ns,
        "postfix",
        "# a comment line is skipped\nmyhostname = smoke.virtmail.test\nsmtpd_banner = $myhostname ESMTP smoke\n",
        "smtp/inet/chroot = n\n",
        25,
    );
    wait_for(&ns, "pod/postfix", "condition=Ready", MINUTE * 2);
    let ip = node::cluster_ip(&ns, "postfix");
    let greeting = eventually("the Postfix pod greets through its Service", MINUTE, || {
        banner(&ip, 25, Duration::from_secs(5)).map_err(|e| e.to_string())
    });
    assert_eq!(greeting, "220 smoke.virtmail.test ESMTP smoke");
    let applied = exec(&ns, "postfix", "postfix", &["postconf", "-h", "myhostname"])
        .expect("postconf in the pod");
    assert_eq!(applied.trim(), "smoke.virtmail.test");
    let master = exec(
        &ns,
        "postfix",
        "postfix",
        &["postconf", "-F", "smtp/inet/chroot"],
    )
    .expect("postconf -F in the pod");
    assert_eq!(master.trim(), "smtp/inet/chroot = n");
}

#[test]
fn a_claim_template_binds_and_a_non_root_pod_writes_to_it() {
    let cluster = node::cluster();
    let node = cluster.node();
    let ns = cluster.namespace("node-storage");
    apply(
        &ns,
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: writer}}
spec:
  serviceName: writer
  replicas: 1
  selector: {{matchLabels: {{app: writer}}}}
  template:
    metadata: {{labels: {{app: writer}}}}
    spec:
      securityContext: {{runAsUser: 5000, runAsGroup: 5000}}
      containers:
      - name: main
        image: {image}
        imagePullPolicy: Never
        command: ["bash", "-c", "id -u > /data/written-by && sleep infinity"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#,
            image = node::image("postfix")
        ),
    );
    wait_for(
        &ns,
        "pvc/data-writer-0",
        "jsonpath={.status.phase}=Bound",
        MINUTE * 2,
    );
    wait_for(&ns, "pod/writer-0", "condition=Ready", MINUTE * 2);
    let pvc = ns.get_json("pvc", "data-writer-0");
    assert_eq!(
        pvc["spec"]["storageClassName"], "standard",
        "the default class: {pvc:#}"
    );
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap();
    let pv: serde_json::Value = serde_json::from_str(
        &virtmail_tests::cluster::run(cluster.kubectl().args(["get", "pv", pv_name, "-o", "json"]))
            .unwrap(),
    )
    .unwrap();
    let dir = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(
        dir.starts_with(&node.storage),
        "{} is below {}",
        dir.display(),
        node.storage.display()
    );
    let file = dir.join("written-by");
    let written = eventually("the pod's file on the host", MINUTE, || {
        std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))
    });
    assert_eq!(written.trim(), "5000");
    assert_eq!(node::owner_uid(&file).unwrap(), 5000);
}

#[test]
fn services_reach_pods_from_the_host_and_from_pods_and_nothing_leaves_the_machine() {
    let cluster = node::cluster();
    let node = cluster.node();
    let ns = cluster.namespace("node-network");
    let image = node::image("postfix");
    let kubectl = cluster.kubectl.display().to_string();
    postfix_behind_a_service(&ns, "server", "myhostname = net.virtmail.test\n", "", 2525);
    apply(
        &ns,
        &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: reader}}
rules: [{{apiGroups: [""], resources: [services], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}}
subjects: [{{kind: ServiceAccount, name: reader}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  serviceAccountName: reader
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: ["sleep", "infinity"]
    volumeMounts: [{{name: kubectl, mountPath: /usr/local/bin/kubectl}}]
  volumes: [{{name: kubectl, hostPath: {{path: "{kubectl}", type: File}}}}]
"#
        ),
    );
    wait_for(&ns, "pod/server", "condition=Ready", MINUTE * 2);
    wait_for(&ns, "pod/client", "condition=Ready", MINUTE * 2);
    let service_ip = node::cluster_ip(&ns, "server");

    // From the host, through kube-proxy's rules for the ClusterIP.
    let from_host = eventually("the Service answers the host", MINUTE, || {
        banner(&service_ip, 2525, Duration::from_secs(5)).map_err(|e| e.to_string())
    });
    assert!(
        from_host.starts_with("220 net.virtmail.test"),
        "{from_host}"
    );

    // From another pod, through the same ClusterIP.
    let script = format!("exec 3<>/dev/tcp/{service_ip}/2525 && head -n1 <&3");
    let from_pod = eventually("the Service answers another pod", MINUTE, || {
        exec(&ns, "client", "main", &["bash", "-c", &script]).map_err(|e| e.to_string())
    });
    assert!(from_pod.starts_with("220 net.virtmail.test"), "{from_pod}");

    // In-cluster config: the ServiceAccount's token and the `kubernetes` Service.
    let fetched = exec(
        &ns,
        "client",
        "main",
        &[
            "kubectl",
            "get",
            "service",
            "server",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )
    .expect("kubectl in the pod, configured from its ServiceAccount");
    assert_eq!(fetched, service_ip);
    let forbidden = exec(&ns, "client", "main", &["kubectl", "get", "secrets"])
        .expect_err("the ServiceAccount may read services only");
    assert!(forbidden.stderr.contains("forbidden"), "{forbidden}");

    // No cluster DNS that could ask a server off the machine.
    let resolv = exec(&ns, "client", "main", &["cat", "/etc/resolv.conf"]).unwrap();
    let servers: Vec<&str> = resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(servers, ["127.0.0.1"], "{resolv}");

    // The host routes the node's ranges locally, never through the default gateway.
    let gateway = node::default_gateway();
    let pod_ip = ns.get_json("pod", "server")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    for (address, expected) in [
        (service_ip.as_str(), "dev virtmail-node"),
        (pod_ip.as_str(), "dev virtmail-cni0"),
        (node.ip.as_str(), "local "),
    ] {
        let route = node::route_get(address);
        assert!(route.contains(expected), "ip route get {address}: {route}");
        assert!(
            !route.contains(&format!("via {gateway}")),
            "ip route get {address}: {route}"
        );
    }

    // A pod that tries to reach the default gateway is dropped by the node's firewall.
    let dropped = "pods reach nothing off the node";
    let before = node::firewall_packets(dropped);
    let escape = format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{gateway}/80' && echo connected");
    let result = exec(&ns, "client", "main", &["bash", "-c", &escape]);
    assert!(
        result
            .as_ref()
            .map_or(true, |out| !out.contains("connected")),
        "a pod reached the default gateway {gateway}: {result:?}"
    );
    let after = node::firewall_packets(dropped);
    assert!(
        after > before,
        "the firewall dropped nothing ({before} → {after}) when a pod tried {gateway}"
    );
}

/// A Postfix pod `name` from the project's image, its profile from a ConfigMap, behind a
/// Service `name` on `port`.
fn postfix_behind_a_service(
    ns: &TestNamespace,
    name: &str,
    main_cf: &str,
    master_cf: &str,
    port: u16,
) {
    let data = serde_json::json!({"main.cf": main_cf, "master.cf": master_cf});
    apply(
        ns,
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-profile}}
data: {data}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  containers:
  - name: postfix
    image: {image}
    imagePullPolicy: Never
    ports: [{{containerPort: 25}}]
    volumeMounts: [{{name: profile, mountPath: /etc/virtmail/postfix}}]
  volumes: [{{name: profile, configMap: {{name: {name}-profile}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}, targetPort: 25}}]
"#,
            image = node::image("postfix")
        ),
    );
}
