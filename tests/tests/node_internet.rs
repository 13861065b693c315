//! A MailServer put on the internet, on the node, through the chart, as a user would: STARTTLS
//! with a certificate from a `kubernetes.io/tls` Secret that is renewed in place; a NodePort
//! Service whose SMTP port expects the PROXY protocol of a load balancer; the pod settings on
//! the pod; status that says whether pods are ready and why a reconcile fails; printer columns
//! and the scale subresource; admission that refuses what cannot work; one server per domain;
//! the chart's PodMonitor and PrometheusRule accepted by the Prometheus Operator's CRDs, naming
//! only metrics the pods export.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use virtmail_tests::cluster::{TestNamespace, condition, run, run_with_stdin};
use virtmail_tests::fixtures::{mail_domain, mail_server, mailbox, resource, stream};
use virtmail_tests::mail::{self, Smtp};
use virtmail_tests::node::{self, apply, eventually, helm, volume_of, wait_for};
use virtmail_tests::workspace_root;

const MINUTE: Duration = Duration::from_secs(60);

/// A self-signed certificate for `name`, as a `kubernetes.io/tls` Secret manifest.
fn tls_secret(ns: &TestNamespace, secret: &str, name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("tls.key"), dir.path().join("tls.crt"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))
    .expect("openssl makes a certificate");
    run(ns
        .kubectl()
        .args([
            "create",
            "secret",
            "tls",
            secret,
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display())))
    .expect("kubectl renders the Secret")
}

/// The subject of the certificate Postfix presents after STARTTLS (openssl's own client).
fn starttls_subject(address: &str) -> Result<String, String> {
    let handshake = run_with_stdin(
        Command::new("openssl").args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("{address}:25"),
        ]),
        "QUIT\n",
    )
    .map_err(|e| format!("STARTTLS handshake: {e}"))?;
    let certificate = handshake
        .find("-----BEGIN CERTIFICATE-----")
        .map(|at| &handshake[at..])
        .ok_or_else(|| format!("no certificate after STARTTLS:\n{handshake}"))?;
    run_with_stdin(
        Command::new("openssl").args(["x509", "-noout", "-subject"]),
        certificate,
    )
    .map(|s| s.trim().to_string())
    .map_err(|e| e.to_string())
}

fn pod_ip(ns: &TestNamespace, pod: &str) -> String {
    ns.get_json("pod", pod)["status"]["podIP"]
        .as_str()
        .unwrap_or_else(|| panic!("pod {pod} has no IP"))
        .to_string()
}

/// Waits until the object's condition has this status and reason; returns its message.
#[track_caller]
fn wait_condition(
    ns: &TestNamespace,
    resource: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(
        &format!("{resource}/{name} {type_}={status} ({reason})"),
        MINUTE * 2,
        || {
            let object = node::get(ns, resource, name).ok_or("not found".to_string())?;
            match condition(&object, type_) {
                Some((s, r, message)) if s == status && r == reason => Ok(message),
                other => Err(format!("{type_} is {other:?}")),
            }
        },
    )
}

fn events(ns: &TestNamespace, object: &str) -> Vec<(String, String, String)> {
    let list: Value = serde_json::from_str(
        &run(ns.kubectl().args([
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={object}"),
            "-o",
            "json",
        ]))
        .unwrap(),
    )
    .unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (field("type"), field("reason"), field("message"))
        })
        .collect()
}

/// `GET http://address/metrics` from the host (the node's pod network is local).
fn scrape(address: &str) -> String {
    run(Command::new("curl").args([
        "-sf",
        "--max-time",
        "5",
        &format!("http://{address}/metrics"),
    ]))
    .unwrap_or_else(|e| panic!("scrape {address}: {e}"))
}

fn metric_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

const EDGE: &str = "
apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: edge}
spec: {domain: edge.test, postmaster: a@edge.test, defaults: {uid: 5000, gid: 5000, format: Mbox}}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: a}
spec: {address: a@edge.test, quota: 10Mi}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: virtmail-test-mail}
value: 1000
description: node test of MailServer pod settings
";

#[test]
fn an_exposed_server_speaks_starttls_and_proxy_protocol_renews_its_certificate_and_is_monitored() {
    let cluster = node::cluster();
    let ns = node::mail_namespace("node-edge");
    apply(&ns, &tls_secret(&ns, "edge-tls", "first.edge.test"));
    apply(&ns, EDGE);
    apply(
        &ns,
        &format!(
            "
apiVersion: virtmail.io/v1alpha1
kind: MailServer
metadata: {{name: edge}}
spec:
  postfix:
    tls: {{secretName: edge-tls}}
    proxyProtocol: true
  service:
    type: NodePort
    externalTrafficPolicy: Local
    annotations: {{lb.example/name: edge}}
  pod:
    labels: {{team: mail}}
    annotations: {{backup.example/volume: mailboxes}}
    nodeSelector: {{kubernetes.io/hostname: {node}}}
    tolerations: [{{key: mail-only, operator: Exists, effect: NoSchedule}}]
    priorityClassName: virtmail-test-mail
    terminationGracePeriodSeconds: 45
",
            node = cluster.node().name
        ),
    );
    wait_for(&ns, "pod/edge-0", "condition=Ready", MINUTE * 4);
    wait_for(&ns, "mailbox/a", "condition=Provisioned", MINUTE);

    // The pod settings, on the pod the StatefulSet made.
    let pod = ns.get_json("pod", "edge-0");
    assert_eq!(pod["metadata"]["labels"]["team"], "mail");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "virtmail"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["backup.example/volume"],
        "mailboxes"
    );
    assert_eq!(pod["spec"]["priorityClassName"], "virtmail-test-mail");
    assert_eq!(pod["spec"]["priority"], 1000);
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 45);
    assert_eq!(
        pod["spec"]["nodeSelector"]["kubernetes.io/hostname"],
        cluster.node().name.as_str()
    );

    // STARTTLS on Postfix's own port, with the Secret's certificate.
    let address = pod_ip(&ns, "edge-0");
    let subject = starttls_subject(&address).unwrap_or_else(|e| panic!("{e}"));
    assert!(subject.contains("CN = first.edge.test"), "{subject}");

    // The NodePort leads to the listener that expects a load balancer's PROXY header; Postfix
    // records the client address the header carries.
    let service = ns.get_json("service", "edge");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        service["metadata"]["annotations"]["lb.example/name"],
        "edge"
    );
    let node_port = service["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port") as u16;
    let node_ip = &cluster.node().ip;
    let send_proxied = |tag: &str| {
        let header = format!("PROXY TCP4 192.0.2.7 {node_ip} 40000 {node_port}\r\n");
        let mut smtp = Smtp::connect_with_preamble(node_ip, node_port, header.as_bytes());
        assert_eq!(smtp.mail("sender@outside.test", "").code, 250);
        assert_eq!(smtp.rcpt("a@edge.test").code, 250);
        let message = mail::message(
            "sender@outside.test",
            "a@edge.test",
            tag,
            &format!("X-Edge-Test: {tag}\r\n"),
            b"through the load balancer\r\n",
        );
        let data = smtp.data(&message);
        assert_eq!(data.code, 250, "DATA: {data}");
        smtp.quit();
    };
    send_proxied("proxied");
    let mbox = volume_of(&ns, "mailboxes-edge-0").join("edge.test/a");
    let stored = eventually("the proxied message in the mbox", MINUTE, || {
        std::fs::read(&mbox)
            .ok()
            .filter(|c| mail::find(c, b"X-Edge-Test: proxied").is_some())
            .ok_or_else(|| format!("not yet in {}", mbox.display()))
    });
    assert!(
        mail::find(&stored, b"[192.0.2.7]").is_some(),
        "Received names the client from the PROXY header:\n{}",
        String::from_utf8_lossy(&stored)
    );

    // Status and printer columns.
    wait_condition(&ns, "mailserver", "edge", "Available", "True", "PodsReady");
    wait_condition(&ns, "mailserver", "edge", "Ready", "True", "Reconciled");
    let table = run(ns.kubectl().args(["get", "msrv", "edge", "-o", "wide"])).unwrap();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("AVAILABLE") && h.contains("SERVICE")),
        "{table}"
    );
    assert!(table.contains("NodePort"), "{table}");
    let mailboxes = run(ns.kubectl().args(["get", "mbx", "-o", "wide"])).unwrap();
    let row = mailboxes
        .lines()
        .find(|l| l.starts_with("a "))
        .expect("row of Mailbox a");
    for shown in ["Mbox", "5000", "10485760", "/var/mail/vhosts/edge.test/a"] {
        assert!(row.contains(shown), "{shown} missing in:\n{mailboxes}");
    }

    // The chart's monitoring objects, accepted by the Prometheus Operator's own CRDs, name only
    // metrics the pods export.
    let crds = workspace_root().join("target/tools/crds");
    for kind in ["podmonitors", "servicemonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{kind}.yaml"));
        assert!(
            file.is_file(),
            "{} is missing: run tools/cluster.sh build",
            file.display()
        );
        run(cluster
            .kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&file))
        .unwrap_or_else(|e| panic!("install the {kind} CRD: {e}"));
        run(cluster.kubectl().args([
            "wait",
            "--for=condition=Established",
            &format!("crd/{kind}.monitoring.coreos.com"),
        ]))
        .unwrap();
    }
    let rendered = run(helm(cluster).args([
        "template",
        "virtmail",
        "charts/virtmail",
        "-n",
        ns.name(),
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--show-only",
        "templates/podmonitor.yaml",
        "--show-only",
        "templates/prometheusrule.yaml",
        "--show-only",
        "templates/servicemonitor.yaml",
    ]))
    .expect("helm template of the monitoring objects");
    apply(&ns, &rendered);
    let exported = eventually("the Postfix queue size exported", MINUTE, || {
        let text = scrape(&format!("{address}:8080"));
        text.contains("virtmail_postfix_queue_messages{queue=\"deferred\"}")
            .then_some(text.clone())
            .ok_or_else(|| format!("no queue size yet:\n{text}"))
    });
    assert!(
        exported.contains("virtmail_agent_build_info{version="),
        "{exported}"
    );
    assert!(
        exported.contains("virtmail_mailboxes_unprovisioned 0"),
        "{exported}"
    );
    let operator_pod = run(cluster.kubectl().args([
        "-n",
        node::OPERATOR_NAMESPACE,
        "get",
        "pods",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]))
    .unwrap();
    let mut names = metric_names(&exported);
    names.extend(metric_names(&scrape(&format!(
        "{}:8080",
        operator_pod.trim()
    ))));
    assert!(names.contains("virtmail_operator_build_info"), "{names:?}");
    let rule = ns.get_json("prometheusrule", "virtmail");
    let exprs: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("virtmail_") {
                let base = word.trim_end_matches("_bucket");
                assert!(
                    names.contains(base) || names.iter().any(|n| n.starts_with(base)),
                    "the alert expression names {word}, which no pod exports:\n{expr}"
                );
            }
        }
    }

    // A renewed certificate is served without a restart, and mail still flows.
    let restarts = |pod: &Value| {
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (
            pod["metadata"]["uid"].clone(),
            statuses
                .iter()
                .map(|c| c["restartCount"].clone())
                .collect::<Vec<_>>(),
        )
    };
    let before = restarts(&ns.get_json("pod", "edge-0"));
    apply(&ns, &tls_secret(&ns, "edge-tls", "second.edge.test"));
    let renewed = eventually("the renewed certificate served", MINUTE * 4, || {
        starttls_subject(&address)
            .and_then(|s| s.contains("second.edge.test").then_some(s.clone()).ok_or(s))
    });
    assert!(renewed.contains("CN = second.edge.test"));
    // A new smtpd may read the new files before the container's check (every 10 s) sees them;
    // the reload then replaces the idle ones that still hold the old certificate.
    eventually(
        "the Postfix container reloads for the renewed certificate",
        MINUTE,
        || {
            let log = node::logs(&ns, "edge-0", "postfix");
            log.contains("TLS certificate changed, reloading Postfix")
                .then_some(())
                .ok_or(log)
        },
    );
    send_proxied("after-renewal");
    eventually("mail after the renewal", MINUTE, || {
        std::fs::read(&mbox)
            .ok()
            .filter(|c| mail::find(c, b"X-Edge-Test: after-renewal").is_some())
            .ok_or("not yet".to_string())
    });
    assert_eq!(
        restarts(&ns.get_json("pod", "edge-0")),
        before,
        "the same pod, no container restarted for the renewal"
    );
}

#[test]
fn a_domain_two_servers_select_is_served_by_the_older_one_until_it_goes() {
    let ns = node::mail_namespace("node-two-servers");
    let server = |name: &str| mail_server(name, "replicas: 0");
    apply(
        &ns,
        &stream([
            mail_domain("shared", "shared.test", "a@shared.test", 5000, ""),
            mailbox("a", "address: a@shared.test"),
        ]),
    );
    apply(&ns, &server("older"));
    wait_condition(
        &ns,
        "mailserver",
        "older",
        "DomainConflict",
        "False",
        "NoConflict",
    );
    // Creation times have one-second resolution; make "younger" younger.
    std::thread::sleep(Duration::from_millis(1100));
    apply(&ns, &server("younger"));

    let message = wait_condition(
        &ns,
        "mailserver",
        "younger",
        "DomainConflict",
        "True",
        "DomainConflict",
    );
    assert!(
        message.contains("shared.test (MailServer/older)"),
        "{message}"
    );
    let younger = ns.get_json("mailserver", "younger");
    assert_eq!(younger["status"]["domains"], 0, "{younger:#}");
    assert!(
        events(&ns, "younger")
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "DomainConflict"),
        "{:?}",
        events(&ns, "younger")
    );
    let on_domain = wait_condition(
        &ns,
        "maildomain",
        "shared",
        "Ready",
        "True",
        "DomainConflict",
    );
    assert!(on_domain.contains("MailServer/younger"), "{on_domain}");
    let domain = ns.get_json("maildomain", "shared");
    assert_eq!(domain["status"]["servers"], serde_json::json!(["older"]));
    assert_eq!(ns.get_json("mailserver", "older")["status"]["domains"], 1);

    // The older server goes: the younger one takes the domain over.
    run(ns
        .kubectl()
        .args(["delete", "mailserver", "older", "--wait"]))
    .unwrap();
    wait_condition(
        &ns,
        "mailserver",
        "younger",
        "DomainConflict",
        "False",
        "NoConflict",
    );
    eventually("the younger server serves the domain", MINUTE, || {
        let younger = ns.get_json("mailserver", "younger");
        (younger["status"]["domains"] == 1)
            .then_some(())
            .ok_or(format!("{:#}", younger["status"]))
    });
    wait_condition(&ns, "maildomain", "shared", "Ready", "True", "Published");
}

/// `kubectl apply` that must be refused at admission; returns the apiserver's message.
#[track_caller]
fn refused(ns: &TestNamespace, yaml: &str) -> String {
    match ns.apply(yaml) {
        Ok(out) => panic!("accepted, but should be refused:\n{yaml}\n{out}"),
        Err(e) => e.stderr,
    }
}

#[test]
fn admission_and_status_refuse_what_cannot_work_and_scale_works() {
    let ns = node::mail_namespace("node-status");
    let server = |name: &str, spec: &str| resource("MailServer", name, &format!("\n{spec}"));
    for (spec, says) in [
        ("  agent: {logFormat: xml}\n", "logFormat is text or json"),
        (
            "  postfix: {parameters: {virtual_transport: virtual}}\n",
            "may not override",
        ),
        (
            "  postfix: {parameters: {mynetworks_style: subnet}}\n",
            "would let other hosts relay",
        ),
        (
            "  postfix: {parameters: {'Bad Key': x}}\n",
            "main.cf parameter names",
        ),
        (
            "  postfix: {parameters: {relayhost: '[smtp.example.net]'}}\n",
            "only when spec.outbound declares",
        ),
        ("  storage: {size: lots}\n", "must be a quantity"),
        (
            "  service: {type: ClusterIP, nodePort: 30025}\n",
            "nodePort needs type NodePort",
        ),
        (
            "  pod: {terminationGracePeriodSeconds: 5}\n",
            "terminationGracePeriodSeconds",
        ),
    ] {
        let message = refused(&ns, &server("bad", spec));
        assert!(message.contains(says), "{spec}: {message}");
    }
    let message = refused(
        &ns,
        "apiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: zero}\nspec: {domain: zero.test, postmaster: a@zero.test, defaults: {uid: 0}}\n",
    );
    assert!(message.contains("uid"), "{message}");

    // What only the operator can judge: a relay setting CEL cannot parse.
    apply(
        &ns,
        &server(
            "relay",
            "  replicas: 0\n  postfix: {parameters: {mynetworks: '0.0.0.0/0'}}\n",
        ),
    );
    let message = wait_condition(
        &ns,
        "mailserver",
        "relay",
        "Ready",
        "False",
        "ParameterRefused",
    );
    assert!(message.contains("mynetworks"), "{message}");
    let profile = ns.get_json("configmap", "relay-postfix");
    assert!(
        !profile["data"]["main.cf"]
            .as_str()
            .unwrap()
            .contains("0.0.0.0/0"),
        "the refused parameter is not applied"
    );

    // A reconcile that fails (a node port another Service holds) shows on the MailServer.
    let port = 30000 + (std::process::id() % 2000) as u16;
    apply(
        &ns,
        &server(
            "first",
            &format!("  replicas: 0\n  service: {{type: NodePort, nodePort: {port}}}\n"),
        ),
    );
    wait_condition(&ns, "mailserver", "first", "Ready", "True", "Reconciled");
    apply(
        &ns,
        &server(
            "second",
            &format!("  replicas: 0\n  service: {{type: NodePort, nodePort: {port}}}\n"),
        ),
    );
    let message = wait_condition(&ns, "mailserver", "second", "Ready", "False", "ApiError");
    assert!(message.contains("already allocated"), "{message}");
    let warnings = events(&ns, "second");
    assert!(
        warnings
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "ApiError"),
        "{warnings:?}"
    );

    // The scale subresource: kubectl scale, and the selector an autoscaler reads.
    wait_condition(
        &ns,
        "mailserver",
        "first",
        "Available",
        "False",
        "ScaledToZero",
    );
    run(ns
        .kubectl()
        .args(["scale", "mailserver", "first", "--replicas=1"]))
    .expect("kubectl scale msrv");
    eventually("the StatefulSet scaled to 1", MINUTE, || {
        let set = ns.get_json("statefulset", "first");
        (set["spec"]["replicas"] == 1)
            .then_some(())
            .ok_or(format!("{:#}", set["spec"]["replicas"]))
    });
    let scale: Value = serde_json::from_str(
        &run(ns.kubectl().args([
            "get",
            "--raw",
            &format!(
                "/apis/virtmail.io/v1alpha1/namespaces/{}/mailservers/first/scale",
                ns.name()
            ),
        ]))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(scale["spec"]["replicas"], 1, "{scale:#}");
    assert!(
        scale["status"]["selector"]
            .as_str()
            .is_some_and(|s| s.contains("app.kubernetes.io/instance=first")),
        "{scale:#}"
    );
    run(ns
        .kubectl()
        .args(["scale", "mailserver", "first", "--replicas=0"]))
    .unwrap();
}
