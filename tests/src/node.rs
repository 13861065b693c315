//! Pods on the plane's node (`tools/cluster.sh up --node`, see tools/README.md "The node"):
//! the project's images as the node runs them, pods waited for with their logs on failure,
//! commands run in them, and the host's view of the node's network.
//!
//! ```no_run
//! use virtmail_tests::{cluster, node};
//! let ns = node::cluster().namespace("smoke");
//! node::run_pod(&ns, "hello", &node::image("agent"), &["--version"]);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{self, Cluster, TestNamespace, run};
use crate::workspace_root;

/// The plane with its node, and the project's images built from the current sources and
/// loaded into the node's containerd (`tools/images.sh build`: a rebuild compiles only what
/// changed). Panics naming what is missing.
#[track_caller]
pub fn cluster() -> &'static Cluster {
    cluster::use_node();
    let cluster = cluster::cluster();
    static IMAGES: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = IMAGES.get_or_init(build_images) {
        panic!("the project's images could not be built for the node:\n{e}");
    }
    cluster
}

fn build_images() -> Result<(), String> {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("tools/images.sh"))
        .args(["build", "pause", "operator", "agent", "postfix"]);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run tools/images.sh: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`tools/images.sh build` failed ({status}) after {:.0?}; its output is above",
            started.elapsed()
        ));
    }
    Ok(())
}

/// The full reference of an image as the chart and the operator name it by default
/// (`operator`, `agent`, `postfix`, `pause`).
pub fn image(name: &str) -> String {
    static TAGS: OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, String>>> =
        OnceLock::new();
    let tags = TAGS.get_or_init(Default::default);
    let mut tags = tags.lock().unwrap();
    tags.entry(name.to_owned())
        .or_insert_with(|| {
            let out = run(Command::new("bash")
                .arg(workspace_root().join("tools/images.sh"))
                .args(["tag", name]))
            .unwrap_or_else(|e| panic!("no tag for image {name}: {e}"));
            out.trim().to_owned()
        })
        .clone()
}

/// `kubectl apply` of a manifest, panicking with kubectl's message.
#[track_caller]
pub fn apply(ns: &TestNamespace, yaml: &str) {
    if let Err(e) = ns.apply(yaml) {
        panic!("kubectl apply failed: {e}\n--- manifest\n{yaml}");
    }
}

/// Waits until `kubectl wait --for=<condition>` holds for `object` (e.g. `pod/x`,
/// `condition=Ready`, `jsonpath={.status.phase}=Succeeded`); on timeout panics with the pod's
/// description and logs.
/// An object that does not exist yet (a claim a StatefulSet has still to create) is waited for.
#[track_caller]
pub fn wait_for(ns: &TestNamespace, object: &str, condition: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let result = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let result = run(ns.kubectl().args([
            "wait",
            &format!("--for={condition}"),
            &format!("--timeout={left}s"),
            object,
        ]));
        match result {
            Err(e) if e.stderr.contains("NotFound") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            result => break result,
        }
    };
    if let Err(e) = result {
        panic!(
            "{object} in {} did not reach {condition} within {timeout:?}: {e}\n{}\n{}",
            ns.name(),
            describe(ns, object),
            node_report(ns.cluster(), ns.name())
        );
    }
}

/// `kubectl describe` and the logs of every container, for failure messages.
pub fn describe(ns: &TestNamespace, object: &str) -> String {
    let mut out = String::new();
    match run(ns.kubectl().args(["describe", object])) {
        Ok(text) => out.push_str(&text),
        Err(e) => out.push_str(&format!("describe {object}: {e}\n")),
    }
    if object.starts_with("pod/") {
        match run(ns
            .kubectl()
            .args(["logs", object, "--all-containers", "--prefix", "--tail=60"]))
        {
            Ok(text) => out.push_str(&format!("--- logs\n{text}")),
            Err(e) => out.push_str(&format!("--- logs: {e}\n")),
        }
    }
    out
}

/// Runs a pod of one container to completion (`restartPolicy: Never`) and returns its log;
/// panics if it does not succeed within two minutes.
#[track_caller]
pub fn run_pod(ns: &TestNamespace, name: &str, image: &str, args: &[&str]) -> String {
    let args = serde_json::to_string(args).unwrap();
    apply(
        ns,
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    args: {args}
"
        ),
    );
    wait_for(
        ns,
        &format!("pod/{name}"),
        "jsonpath={.status.phase}=Succeeded",
        Duration::from_secs(120),
    );
    logs(ns, name, "main")
}

/// A container's log.
#[track_caller]
pub fn logs(ns: &TestNamespace, pod: &str, container: &str) -> String {
    run(ns.kubectl().args(["logs", pod, "-c", container]))
        .unwrap_or_else(|e| panic!("cannot read the log of {pod}/{container}: {e}"))
}

/// `kubectl exec` of a command in a container; its stdout, or the error with stderr.
pub fn exec(
    ns: &TestNamespace,
    pod: &str,
    container: &str,
    command: &[&str],
) -> Result<String, cluster::CommandError> {
    run(ns
        .kubectl()
        .args(["exec", pod, "-c", container, "--"])
        .args(command))
}

/// An object's JSON, or `None` if it does not exist.
pub fn get(ns: &TestNamespace, resource: &str, name: &str) -> Option<Value> {
    run(ns
        .kubectl()
        .args(["get", resource, name, "-o", "json", "--ignore-not-found"]))
    .ok()
    .filter(|text| !text.trim().is_empty())
    .map(|text| serde_json::from_str(&text).expect("kubectl printed invalid JSON"))
}

/// A Service's ClusterIP; panics if it has none.
#[track_caller]
pub fn cluster_ip(ns: &TestNamespace, service: &str) -> String {
    let svc = ns.get_json("service", service);
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .unwrap_or_else(|| panic!("service {service} has no ClusterIP: {svc:#}"))
        .to_owned()
}

/// `ip route get ADDRESS` on the host: the output line, e.g. `10.0.0.1 dev virtmail-node src ...`.
#[track_caller]
pub fn route_get(address: &str) -> String {
    run(Command::new("ip").args(["route", "get", address]))
        .unwrap_or_else(|e| panic!("ip route get {address}: {e}"))
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The host's default gateway (the address pods must never reach).
#[track_caller]
pub fn default_gateway() -> String {
    let out = run(Command::new("ip").args(["-4", "route", "show", "default"]))
        .unwrap_or_else(|e| panic!("ip route show default: {e}"));
    out.split_whitespace()
        .skip_while(|word| *word != "via")
        .nth(1)
        .unwrap_or_else(|| panic!("no default route on this machine: {out:?}"))
        .to_owned()
}

/// Packets counted by the node's firewall rule whose comment contains `comment`.
#[track_caller]
pub fn firewall_packets(comment: &str) -> u64 {
    let out =
        run(Command::new("iptables").args(["-w", "5", "-L", "VIRTMAIL-NODE", "-v", "-x", "-n"]))
            .unwrap_or_else(|e| panic!("the node's iptables chain VIRTMAIL-NODE is missing: {e}"));
    let line = out
        .lines()
        .find(|line| line.contains(comment))
        .unwrap_or_else(|| panic!("no rule with comment {comment:?} in VIRTMAIL-NODE:\n{out}"));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the packet count of {line:?}"))
}

/// Reads the first line a TCP server sends (an SMTP greeting), from the host.
pub fn banner(address: &str, port: u16, timeout: Duration) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader};
    let addr: std::net::SocketAddr = format!("{address}:{port}")
        .parse()
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Retries `attempt` until it returns `Some`, or panics after `timeout` with `what` and the
/// last error.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The owner uid of `path` (a file the node's volumes hold, read on the host).
pub fn owner_uid(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(path)?.uid())
}

/// Namespace of the chart release that reconciles every node test's MailServer (cluster-wide).
pub const OPERATOR_NAMESPACE: &str = "virtmail-node-system";

/// `helm` against the plane, from the workspace (charts/virtmail).
pub fn helm(cluster: &Cluster) -> Command {
    let mut cmd = cluster.helm();
    cmd.current_dir(workspace_root());
    cmd
}

/// A namespace that enforces the `restricted` Pod Security Standard.
pub fn restricted_namespace(cluster: &Cluster, name: &str) {
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
    );
    cluster::run_with_stdin(cluster.kubectl().args(["apply", "-f", "-"]), &manifest)
        .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
}

/// The operator from the chart, cluster-wide, installed once per test process.
pub fn operator(cluster: &'static Cluster) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        restricted_namespace(cluster, OPERATOR_NAMESPACE);
        // A release left by an earlier run runs the images of then: start from none.
        uninstall(cluster, "virtmail", OPERATOR_NAMESPACE);
        let out = run(helm(cluster).args([
            "install",
            "virtmail",
            "charts/virtmail",
            "-n",
            OPERATOR_NAMESPACE,
            "--set",
            "crds.install=false",
            "--wait",
            "--timeout",
            "180s",
        ]));
        if let Err(e) = out {
            panic!(
                "helm install of the operator failed: {e}\n{}\n{}",
                operator_logs(cluster),
                node_report(cluster, OPERATOR_NAMESPACE)
            );
        }
    });
}

/// Why pods of `namespace` may not run, for failure messages: their description, the node's
/// conditions, the latest Events, and the tails of the kubelet's and containerd's logs.
pub fn node_report(cluster: &Cluster, namespace: &str) -> String {
    let mut out = String::new();
    let mut section = |title: &str, text: Result<String, String>| {
        out.push_str(&format!("--- {title}\n"));
        out.push_str(&text.unwrap_or_else(|e| format!("({e})\n")));
    };
    let kubectl = |args: &[&str]| run(cluster.kubectl().args(args)).map_err(|e| e.to_string());
    section("pods", kubectl(&["-n", namespace, "describe", "pods"]));
    section(
        "node",
        kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*].status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}",
        ]),
    );
    section(
        "events",
        kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]).map(|text| tail(&text, 40)),
    );
    let logs = cluster
        .node()
        .storage
        .parent()
        .map(|state| state.join("logs"))
        .unwrap_or_default();
    for component in ["kubelet", "containerd"] {
        let path = logs.join(format!("{component}.log"));
        section(
            &format!("{} (tail)", path.display()),
            std::fs::read_to_string(&path)
                .map(|text| tail(&text, 40))
                .map_err(|e| e.to_string()),
        );
    }
    out
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// `helm uninstall`, waiting; a missing release is fine.
pub fn uninstall(cluster: &Cluster, release: &str, namespace: &str) {
    run(helm(cluster).args([
        "uninstall",
        release,
        "-n",
        namespace,
        "--ignore-not-found",
        "--wait",
    ]))
    .unwrap_or_else(|e| panic!("helm uninstall {release}: {e}"));
}

/// The operator's last log lines.
pub fn operator_logs(cluster: &Cluster) -> String {
    run(cluster.kubectl().args([
        "-n",
        OPERATOR_NAMESPACE,
        "logs",
        "deployment/virtmail",
        "--tail=80",
    ]))
    .unwrap_or_else(|e| e.to_string())
}

/// The host directory behind a bound claim (the node's hostPath provisioner).
pub fn volume_of(ns: &TestNamespace, claim: &str) -> PathBuf {
    let pvc = ns.get_json("pvc", claim);
    let pv = pvc["spec"]["volumeName"]
        .as_str()
        .unwrap_or_else(|| panic!("claim {claim} is not bound: {pvc:#}"));
    let pv: Value = serde_json::from_str(
        &run(ns.cluster().kubectl().args(["get", "pv", pv, "-o", "json"])).unwrap(),
    )
    .unwrap();
    PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap())
}

/// A namespace for a MailServer, reconciled by the chart's operator: MailServer pods need the
/// `baseline` Pod Security Standard (the agent adds SETUID, SETGID and CHOWN); a failing test
/// dumps its pods, claims, Services, Events and MailServers.
pub fn mail_namespace(test: &str) -> TestNamespace {
    let cluster = cluster();
    operator(cluster);
    let mut ns = cluster.namespace(test);
    ns.dump_also(&["pods", "pvc", "services", "events", "mailservers"]);
    run(ns.kubectl().args([
        "label",
        "namespace",
        ns.name(),
        "pod-security.kubernetes.io/enforce=baseline",
    ]))
    .unwrap();
    ns
}
