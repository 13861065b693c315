//! A real Kubernetes control plane for the suites: `tools/cluster.sh up` (etcd, kube-apiserver,
//! kube-controller-manager on loopback, see tools/README.md), brought up once per test process,
//! with the CRDs from `crds/*.yaml` installed and Established, and a fresh labelled namespace per
//! test.
//!
//! ```no_run
//! let cluster = virtmail_tests::cluster::cluster();
//! let ns = cluster.namespace("my-test");
//! ns.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").unwrap();
//! let cm = ns.get_json("configmap", "c");
//! assert_eq!(cm["metadata"]["name"], "c");
//! ```
//!
//! Nothing is skipped: if Go, etcd, openssl or a binary is missing, `cluster()` panics with
//! `tools/cluster.sh`'s own message naming it. The plane is left running after the run (the next
//! run reuses it in a fraction of a second); `tools/cluster.sh down` stops it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// The label every test namespace carries, with the test's name as its value.
pub const TEST_LABEL: &str = "virtmail.io/test";

/// Resources listed (as YAML) in a failing test's namespace, besides any added with
/// [`TestNamespace::dump_also`]. `virtmail` is the category of the four custom resources.
const DUMP_RESOURCES: &[&str] = &[
    "virtmail",
    "statefulsets",
    "deployments",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "leases",
];

/// The running plane, as described by `tools/cluster.sh up`'s export lines.
#[derive(Debug)]
pub struct Cluster {
    /// `https://<address>:<port>` of kube-apiserver (127.0.0.1, or the node's address).
    pub server: String,
    /// kubectl built from the same pin as the apiserver (`target/tools/bin/kubectl`).
    pub kubectl: PathBuf,
    /// helm built from the pin in tools/helm.
    pub helm: PathBuf,
    /// Admin kubeconfig (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// Kubeconfig per identity named in tools/identities.conf (`operator`, `agent`, ...).
    pub kubeconfigs: BTreeMap<String, PathBuf>,
    /// Names of the CustomResourceDefinitions installed from `crds/`.
    pub crds: Vec<String>,
    /// The node, when the plane was brought up with one ([`use_node`]).
    pub node: Option<Node>,
}

/// The plane's node (`tools/cluster.sh up --node`): kubelet, containerd, kube-proxy, a default
/// StorageClass whose volumes are directories under `storage`.
#[derive(Debug, Clone)]
pub struct Node {
    /// The Node object's name.
    pub name: String,
    /// Its InternalIP: local to this machine, the apiserver's address too.
    pub ip: String,
    /// The host directory behind the default StorageClass's volumes.
    pub storage: PathBuf,
    /// containerd's socket.
    pub containerd: PathBuf,
    /// containerd's `ctr`, built from the same pin.
    pub ctr: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

/// The plane of this test process: started (or reused) and given the CRDs on first use. Panics
/// with the reason, naming what is missing, if it cannot be had.
#[track_caller]
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("the Kubernetes control plane for the tests is not available:\n{e}"),
    }
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let root = workspace_root();
        let script = root.join("tools/cluster.sh");
        let exports = run_cluster_script(&script)?;
        let get = |name: &str| {
            exports
                .get(name)
                .cloned()
                .ok_or_else(|| format!("tools/cluster.sh up printed no {name}"))
        };
        let mut kubeconfigs = BTreeMap::new();
        for (name, value) in &exports {
            if let Some(identity) = name.strip_prefix("VIRTMAIL_KUBECONFIG_") {
                let identity = identity.to_ascii_lowercase().replace('_', "-");
                if identity != "admin" {
                    kubeconfigs.insert(identity, PathBuf::from(value));
                }
            }
        }
        let mut cluster = Cluster {
            server: get("VIRTMAIL_CLUSTER_SERVER")?,
            kubectl: PathBuf::from(get("VIRTMAIL_KUBECTL")?),
            helm: PathBuf::from(get("VIRTMAIL_HELM")?),
            admin_kubeconfig: PathBuf::from(get("KUBECONFIG")?),
            kubeconfigs,
            crds: Vec::new(),
            node: match exports.get("VIRTMAIL_NODE_NAME") {
                Some(name) => Some(Node {
                    name: name.clone(),
                    ip: get("VIRTMAIL_NODE_IP")?,
                    storage: PathBuf::from(get("VIRTMAIL_NODE_STORAGE")?),
                    containerd: PathBuf::from(get("VIRTMAIL_NODE_CONTAINERD")?),
                    ctr: PathBuf::from(get("VIRTMAIL_CTR")?),
                }),
                None if NODE.get().is_some() => {
                    return Err("tools/cluster.sh up --node printed no VIRTMAIL_NODE_NAME".into());
                }
                None => None,
            },
        };
        for (what, path) in [("kubectl", &cluster.kubectl), ("helm", &cluster.helm)] {
            if !path.is_file() {
                return Err(format!(
                    "{what} is missing at {} (tools/cluster.sh build makes it)",
                    path.display()
                ));
            }
        }
        cluster.crds = cluster.install_crds(&root.join("crds"))?;
        Ok(cluster)
    }

    /// Server-side applies every `crds/*.yaml` and waits until each CRD is Established.
    fn install_crds(&self, dir: &Path) -> Result<Vec<String>, String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("no CRD manifests in {}", dir.display()));
        }
        let mut cmd = self.kubectl();
        cmd.args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=virtmail-tests",
            "-o",
            "name",
        ]);
        for f in &files {
            cmd.arg("-f").arg(f);
        }
        let out = run(&mut cmd).map_err(|e| format!("installing the CRDs failed: {e}"))?;
        let names: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("customresourcedefinition.apiextensions.k8s.io/"))
            .map(str::to_owned)
            .collect();
        for name in &names {
            run(self.kubectl().args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}"),
            ]))
            .map_err(|e| format!("CRD {name} did not become Established: {e}"))?;
        }
        Ok(names)
    }

    /// The node; panics if this process's plane has none (call [`use_node`] first).
    #[track_caller]
    pub fn node(&self) -> &Node {
        self.node
            .as_ref()
            .expect("this test process's plane has no node: call cluster::use_node() first")
    }

    /// kubectl as the admin (`system:masters`).
    pub fn kubectl(&self) -> Command {
        self.kubectl_with(&self.admin_kubeconfig)
    }

    /// kubectl as one of the identities of tools/identities.conf (e.g. `"agent"`).
    pub fn kubectl_as(&self, identity: &str) -> Command {
        self.kubectl_with(self.kubeconfig(identity))
    }

    /// The kubeconfig of an identity; panics naming the known ones if there is no such identity.
    pub fn kubeconfig(&self, identity: &str) -> &Path {
        if identity == "admin" {
            return &self.admin_kubeconfig;
        }
        match self.kubeconfigs.get(identity) {
            Some(path) => path,
            None => panic!(
                "no identity {identity:?} in the plane (known: admin, {}); add it to \
                 tools/identities.conf",
                self.kubeconfigs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn kubectl_with(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", kubeconfig)
            .env_remove("KUBECTL_NAMESPACE")
            .arg("--request-timeout=60s");
        cmd
    }

    /// helm as the admin.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(&self.helm);
        cmd.env("KUBECONFIG", &self.admin_kubeconfig);
        cmd
    }

    /// A fresh namespace for one test, labelled `virtmail.io/test=<test>`. Dropping it deletes
    /// the namespace (not waiting); if the test is panicking, the namespace's objects and events
    /// are printed first. `VIRTMAIL_KEEP_NAMESPACES=1` keeps every namespace.
    pub fn namespace(&'static self, test: &str) -> TestNamespace {
        let label = label_value(test);
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        // Unique across processes and runs (a reused plane may still hold an earlier run's
        // namespaces, terminating or kept).
        let unique = {
            use std::hash::BuildHasher;
            let h = std::hash::RandomState::new();
            h.hash_one((std::process::id(), n, std::time::SystemTime::now())) as u32
        };
        let suffix = format!("-{n}-{unique:08x}");
        let mut base: String = label.to_ascii_lowercase().replace(['_', '.'], "-");
        base.truncate(63 - 2 - suffix.len());
        let name = format!("t-{}{suffix}", base.trim_end_matches('-'));
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    {TEST_LABEL}: \"{label}\"\n"
        );
        if let Err(e) = run_with_stdin(self.kubectl().args(["create", "-f", "-"]), &manifest) {
            panic!("cannot create namespace {name}: {e}");
        }
        TestNamespace {
            cluster: self,
            name,
            test: test.to_owned(),
            also: Vec::new(),
        }
    }
}

/// A namespace that belongs to one test. See [`Cluster::namespace`].
#[derive(Debug)]
pub struct TestNamespace {
    cluster: &'static Cluster,
    name: String,
    test: String,
    also: Vec<String>,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plane it lives in.
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    /// kubectl as the admin, with `-n <namespace>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = self.cluster.kubectl();
        cmd.args(["-n", &self.name]);
        cmd
    }

    /// kubectl as an identity of tools/identities.conf, with `-n <namespace>`.
    pub fn kubectl_as(&self, identity: &str) -> Command {
        let mut cmd = self.cluster.kubectl_as(identity);
        cmd.args(["-n", &self.name]);
        cmd
    }

    /// `kubectl apply -f -` of YAML (one or more documents) into the namespace, as the admin.
    /// Returns kubectl's output, or the error with its stderr (a rejection's message).
    pub fn apply(&self, yaml: &str) -> Result<String, CommandError> {
        run_with_stdin(self.kubectl().args(["apply", "-f", "-"]), yaml)
    }

    /// `kubectl apply -f <file>` into the namespace, as the admin.
    pub fn apply_file(&self, file: &Path) -> Result<String, CommandError> {
        run(self.kubectl().arg("apply").arg("-f").arg(file))
    }

    /// `kubectl apply -f examples/<example>` into the namespace, as the admin; panics naming the
    /// example if it is refused.
    pub fn apply_example(&self, example: &str) {
        self.apply_file(&workspace_root().join("examples").join(example))
            .unwrap_or_else(|e| panic!("example {example}: {e}"));
    }

    /// One object as JSON (`kubectl get <resource> <name> -o json`); panics if it cannot be read.
    pub fn get_json(&self, resource: &str, name: &str) -> serde_json::Value {
        let out = run(self.kubectl().args(["get", resource, name, "-o", "json"]))
            .unwrap_or_else(|e| panic!("cannot get {resource}/{name} in {}: {e}", self.name));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl printed invalid JSON for {resource}/{name}: {e}"))
    }

    /// Also dump these resources (e.g. `"pods"`, `"secrets"`) if the test fails.
    pub fn dump_also(&mut self, resources: &[&str]) {
        self.also.extend(resources.iter().map(|r| (*r).to_owned()));
    }

    /// The namespace's relevant objects (YAML) and events, as printed when a test fails.
    pub fn dump(&self) -> String {
        let mut out = format!(
            "==== namespace {} of test {} (server {})\n",
            self.name, self.test, self.cluster.server
        );
        let resources: Vec<String> = DUMP_RESOURCES
            .iter()
            .map(|r| (*r).to_owned())
            .chain(self.also.iter().cloned())
            .collect();
        for resource in &resources {
            match run(self
                .kubectl()
                .args(["get", resource, "-o", "yaml", "--ignore-not-found"]))
            {
                Ok(yaml) if yaml.contains("items: []") || yaml.trim().is_empty() => {}
                Ok(yaml) => out.push_str(&format!("---- {resource}\n{yaml}\n")),
                Err(e) => out.push_str(&format!("---- {resource}: {e}\n")),
            }
        }
        match run(self
            .kubectl()
            .args(["get", "events", "--sort-by=.lastTimestamp"]))
        {
            Ok(events) => out.push_str(&format!("---- events\n{events}\n")),
            Err(e) => out.push_str(&format!("---- events: {e}\n")),
        }
        out
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
        if std::env::var_os("VIRTMAIL_KEEP_NAMESPACES").is_some_and(|v| v == "1") {
            return;
        }
        if let Err(e) = run(self.cluster.kubectl().args([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ])) {
            eprintln!("warning: cannot delete namespace {}: {e}", self.name);
        }
    }
}

/// A command that failed to run or exited unsuccessfully.
#[derive(Debug)]
pub struct CommandError {
    /// The command line.
    pub command: String,
    /// Its exit status, if it ran.
    pub status: Option<ExitStatus>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr (kubectl's error messages).
    pub stderr: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "`{}` failed ({status})", self.command)?,
            None => write!(f, "`{}` could not be run", self.command)?,
        }
        for (what, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                write!(f, "\n{what}:\n{}", text.trim_end())?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion; its stdout on success, else the error with both outputs.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    run_with_stdin(cmd, "")
}

/// Like [`run`], with `input` on the command's stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<String, CommandError> {
    let command = command_line(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CommandError {
            command: command.clone(),
            status: None,
            stdout: String::new(),
            stderr: e.to_string(),
        })?;
    // The input is written beside the reading of the outputs: a command that answers as it
    // reads (kubectl prints a line per object) would otherwise fill its output pipe while this
    // side still writes, and both would wait for ever.
    let stdin = child.stdin.take();
    let output = std::thread::scope(|scope| {
        if let Some(mut stdin) = stdin {
            // A command that exits without reading its input is not an error here.
            scope.spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| CommandError {
        command: command.clone(),
        status: None,
        stdout: String::new(),
        stderr: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(CommandError {
            command,
            status: Some(output.status),
            stdout,
            stderr,
        })
    }
}

/// Runs `tools/cluster.sh up`, passing its progress (a first build takes minutes) straight to
/// the terminal, and parses the `export NAME=value` lines it prints.
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Use a private plane in `dir` (instead of `target/cluster`) for this test process; call it
/// before the first [`cluster`]. For suites that inject faults into the plane.
pub fn use_cluster_dir(dir: &Path) {
    let _ = CLUSTER_DIR.set(dir.to_path_buf());
}

static NODE: OnceLock<()> = OnceLock::new();

/// Bring this process's plane up with a node (`tools/cluster.sh up --node`, in
/// `target/cluster-node` unless [`use_cluster_dir`] says otherwise), so pods run. Call before
/// the first [`cluster`].
pub fn use_node() {
    let _ = NODE.set(());
}

static CLUSTER_IDENTITIES: OnceLock<String> = OnceLock::new();

/// Extra identities for this process's plane, as `tools/cluster.sh`'s
/// `VIRTMAIL_CLUSTER_IDENTITIES` (`name=user;name=user`): each gets a static token and a
/// kubeconfig ([`Cluster::kubeconfig`]`("name")`). Call before the first [`cluster`], with a
/// private plane ([`use_cluster_dir`]) whose namespaces are known in advance.
pub fn use_cluster_identities(identities: &str) {
    let _ = CLUSTER_IDENTITIES.set(identities.to_owned());
}

/// `bash tools/cluster.sh <command>` for this process's plane.
pub fn cluster_script(command: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_root().join("tools/cluster.sh"))
        .arg(command);
    if NODE.get().is_some() {
        cmd.arg("--node");
    }
    if let Some(dir) = CLUSTER_DIR.get() {
        cmd.env("VIRTMAIL_CLUSTER_DIR", dir);
    }
    if let Some(identities) = CLUSTER_IDENTITIES.get() {
        cmd.env("VIRTMAIL_CLUSTER_IDENTITIES", identities);
    }
    cmd
}

fn run_cluster_script(script: &Path) -> Result<BTreeMap<String, String>, String> {
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let started = Instant::now();
    let mut child = cluster_script("up")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    // Written to the process's stderr directly (not the test harness's captured output), so a
    // long build shows its progress while it runs; kept for the error message too.
    let progress = std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut stdout)
        .map_err(|e| format!("reading tools/cluster.sh output: {e}"))?;
    let status = child
        .wait()
        .map_err(|e| format!("waiting for tools/cluster.sh: {e}"))?;
    let log = progress.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "`tools/cluster.sh up` failed ({status}) after {:.0?}:\n{}",
            started.elapsed(),
            log.trim_end()
        ));
    }
    let exports = parse_exports(&stdout);
    if exports.is_empty() {
        return Err(format!(
            "`tools/cluster.sh up` printed no export lines:\n{stdout}\n{log}"
        ));
    }
    if started.elapsed() > Duration::from_secs(20) {
        let _ = writeln!(
            std::io::stderr(),
            "control plane ready after {:.0?}",
            started.elapsed()
        );
    }
    Ok(exports)
}

/// `export NAME=value` lines, values as printed by bash's `printf %q` (backslash escapes).
pub fn parse_exports(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|rest| rest.split_once('='))
        .map(|(name, value)| (name.to_owned(), unquote(value)))
        .collect()
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A label value from a test name: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(test: &str) -> String {
    let mapped: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "test".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `kubectl patch <kind> <name> --type=merge -p <patch>` with `kubectl` (its namespace and
/// identity already set).
pub fn merge_patch(
    mut kubectl: Command,
    kind: &str,
    name: &str,
    patch: &str,
) -> Result<String, CommandError> {
    run(kubectl.args(["patch", kind, name, "--type=merge", "-p", patch]))
}

/// The `(status, reason, message)` of condition `kind` in an object's JSON.
pub fn condition(object: &serde_json::Value, kind: &str) -> Option<(String, String, String)> {
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?;
    let field = |name: &str| c[name].as_str().unwrap_or_default().to_owned();
    Some((field("status"), field("reason"), field("message")))
}

/// The `(status, reason)` of condition `kind` in an object's JSON.
pub fn condition_status(object: &serde_json::Value, kind: &str) -> Option<(String, String)> {
    condition(object, kind).map(|(status, reason, _)| (status, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_parsed_and_unquoted() {
        let text = "export KUBECONFIG=/a/b.kubeconfig\nexport VIRTMAIL_X=/with\\ space/x\n\
                    noise\nexport Q='/q r'\n";
        let env = parse_exports(text);
        assert_eq!(env["KUBECONFIG"], "/a/b.kubeconfig");
        assert_eq!(env["VIRTMAIL_X"], "/with space/x");
        assert_eq!(env["Q"], "/q r");
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn a_large_input_to_a_command_that_answers_as_it_reads_does_not_stall() {
        // `cat` echoes as it reads, as kubectl prints a line per object it creates; 4 MiB is
        // far beyond a pipe's buffer in both directions.
        let input = "mailbox.virtmail.io/e-0 created\n".repeat(128 * 1024);
        let (done, finished) = std::sync::mpsc::channel();
        let sent = input.clone();
        std::thread::spawn(move || {
            let _ = done.send(run_with_stdin(&mut Command::new("cat"), &sent));
        });
        let output = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("run_with_stdin stalled: the input and the output pipe wait for each other")
            .expect("cat");
        assert_eq!(output.len(), input.len());
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("cluster_smoke::crds"), "cluster_smoke--crds");
        assert_eq!(label_value("::x::"), "x");
        assert_eq!(label_value("!!"), "test");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }
}
