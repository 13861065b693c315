#!/usr/bin/env bash
# tools/demo.sh — virtmail end to end on this machine, as users install it: a Kubernetes cluster
# with a real node (tools/cluster.sh up --node), the images built here (tools/images.sh), the
# chart installed with helm, an example applied with kubectl, mail sent over SMTP to the
# MailServer's Service, and Dovecot (IMAP) on the host reading the pod's volume.
#
#   tools/demo.sh up              install what is missing, build, start everything, apply an
#                                 example, send mail, show where it landed and what IMAP shows
#   tools/demo.sh up --processes  the same with the operator, agent and Postfix as host
#                                 processes beside a plane without a node (no images)
#   tools/demo.sh status          what runs
#   tools/demo.sh down            stop everything the demo started (state under target/demo)
#
# Knobs: VIRTMAIL_DEMO_EXAMPLE (default 1-virtual-for-all-mail; any folder of examples/).
# Addresses are loopback and the node's own; mail domains are .test; nothing leaves the machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="$ROOT/target/demo"
NS=virtmail-demo
EXAMPLE="${VIRTMAIL_DEMO_EXAMPLE:-1-virtual-for-all-mail}"
MODE_FILE="$D/mode"
export PATH="$PATH:/usr/local/go/bin"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {
  local file="$1" name="$2"
  if alive "$file"; then
    kill -TERM "$(cat "$file")" 2>/dev/null || true
    for _ in $(seq 50); do alive "$file" || break; sleep 0.2; done
    alive "$file" && kill -KILL "$(cat "$file")" 2>/dev/null || true
    echo "stopped $name" >&2
  fi
  rm -f "$file"
}

down() {
  if [[ "$(cat "$MODE_FILE" 2>/dev/null)" == node ]]; then
    stop_dovecot
    "$ROOT/tools/cluster.sh" down --node >/dev/null 2>&1 && echo "stopped the cluster and its node" >&2 || true
    rm -rf "$D"
    return
  fi
  export VIRTMAIL_CLUSTER_DIR="$D/cluster"
  stop_pid "$D/agent.pid" agent
  stop_pid "$D/operator.pid" operator
  if [[ -f "$D/postfix/main.cf" ]]; then postfix -c "$D/postfix" stop >/dev/null 2>&1 && echo "stopped postfix" >&2 || true; fi
  stop_dovecot
  if [[ -d "$D/cluster" ]]; then "$ROOT/tools/cluster.sh" down >/dev/null 2>&1 && echo "stopped the control plane" >&2 || true; fi
  rm -rf "$D"
}

stop_dovecot() {
  if [[ -f "$D/dovecot/run/master.pid" ]]; then
    kill -TERM "$(cat "$D/dovecot/run/master.pid")" 2>/dev/null && echo "stopped dovecot" >&2 || true
  fi
}

status() {
  if [[ "$(cat "$MODE_FILE" 2>/dev/null)" == node ]]; then
    "$ROOT/tools/cluster.sh" status --node || true
    "$ROOT/target/tools/bin/kubectl" --kubeconfig "$ROOT/target/cluster-node/kubeconfig/admin.kubeconfig" \
      get pods -A -o wide 2>/dev/null || true
    return
  fi
  export VIRTMAIL_CLUSTER_DIR="$D/cluster"
  for p in operator agent; do
    if alive "$D/$p.pid"; then echo "$p: running (pid $(cat "$D/$p.pid"), log $D/$p.log)"; else echo "$p: stopped"; fi
  done
  if [[ -f "$D/postfix/main.cf" ]] && postfix -c "$D/postfix" status >/dev/null 2>&1; then
    echo "postfix: running (SMTP 127.0.0.1:$(cat "$D/smtp.port"), log $D/postfix.log)"
  else echo "postfix: stopped"; fi
  if [[ -f "$D/dovecot/run/master.pid" ]] && kill -0 "$(cat "$D/dovecot/run/master.pid")" 2>/dev/null; then
    echo "dovecot: running (IMAP 127.0.0.1:$(cat "$D/imap.port"))"
  else echo "dovecot: stopped"; fi
  "$ROOT/tools/cluster.sh" status 2>/dev/null | head -3 || echo "control plane: stopped"
}

wait_until() {
  local what="$1" tries="$2"; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "timed out waiting for $what"
}

start_postfix() {
  local etc="$D/postfix" port; port="$(free_port)"
  mkdir -p "$etc" "$D/spool" "$D/data"
  chown postfix "$D/data"
  local master=/etc/postfix/master.cf
  [[ -f "$master" ]] || master=/usr/share/postfix/master.cf.dist
  [[ -f "$master" ]] || die "Postfix's master.cf not found: apt-get install postfix"
  cp "$master" "$etc/master.cf"
  {
    "$ROOT/target/debug/virtmail-operator" postfix-profile --only main \
      --lmtp-socket "$D/run/lmtp.sock" --socketmap-socket "$D/run/socketmap.sock"
    cat <<EOF
# demo instance (private directories, loopback only)
queue_directory = $D/spool
data_directory = $D/data
myhostname = demo.virtmail.test
mydomain = virtmail.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = $D/postfix.log
maillog_file_prefixes = $D
mail_owner = postfix
setgid_group = postdrop
EOF
  } >"$etc/main.cf"
  # smtpd on a free loopback port instead of :25.
  postconf -c "$etc" -M# smtp/inet >/dev/null 2>&1 || true
  postconf -c "$etc" -M "127.0.0.1:$port/inet=127.0.0.1:$port inet n - n - - smtpd"
  postconf -c "$etc" -M "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd" 2>/dev/null || true
  "$ROOT/target/debug/virtmail-operator" postfix-profile --only master | grep -v '^#' | while read -r line; do
    postconf -c "$etc" -F "$line" 2>/dev/null || true
  done
  echo "$port" >"$D/smtp.port"
  postfix -c "$etc" check >/dev/null 2>&1 || true
  postfix -c "$etc" start >/dev/null 2>&1 || die "postfix did not start; see $D/postfix.log"
}

start_dovecot() {
  local port; port="$(free_port)"
  mkdir -p "$D/dovecot/run" "$D/dovecot/state" "$D/dovecot/index"
  chmod 755 "$D/dovecot" "$D/dovecot/index"
  # One userdb line per mailbox of the directory: uid/gid and mail location from the Mailbox.
  "$KUBECTL" -n "$NS" get mailboxes -o json | python3 -c '
import json, os, sys
base, index, server_base = sys.argv[1], sys.argv[2], sys.argv[3]
for m in json.load(sys.stdin)["items"]:
    s = m["spec"]; st = m.get("status", {})
    if "uid" not in s or "path" not in st: continue
    # status.path is inside the pod (the MailServer base); on the host the volume is elsewhere.
    path = base + st["path"][len(server_base):]
    uid, gid = s["uid"], s.get("gid", s["uid"])
    idx = os.path.join(index, s["address"])
    os.makedirs(idx, exist_ok=True); os.chown(idx, uid, gid)
    if path.endswith("/"):
        loc = "maildir:%s:INDEX=%s" % (path.rstrip("/"), idx)
    else:
        loc = "mbox:%s:INBOX=%s:INDEX=%s" % (idx, path, idx)
    print("%s::%d:%d::%s::userdb_mail=%s" % (s["address"], uid, gid, idx, loc))
' "$VHOSTS" "$D/dovecot/index" \
    "$("$KUBECTL" -n "$NS" get mailserver mail -o jsonpath='{.spec.mailboxBase}')" >"$D/dovecot/users"
  cat >"$D/dovecot/dovecot.conf" <<EOF
base_dir = $D/dovecot/run
state_dir = $D/dovecot/state
log_path = $D/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 100
mbox_read_locks = fcntl
mbox_write_locks = fcntl
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = passwd-file
  args = $D/dovecot/users
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
EOF
  echo "$port" >"$D/imap.port"
  dovecot -c "$D/dovecot/dovecot.conf" || die "dovecot did not start; see $D/dovecot.log"
}

# send_mail HOST PORT ADDRESS...
send_mail() {
  python3 - "$@" <<'EOF'
import smtplib, sys
host, port, recipients = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for n, rcpt in enumerate(recipients, 1):
    msg = ("From: demo@example.test\r\nTo: %s\r\nSubject: virtmail demo message %d\r\n\r\n"
           "Hello %s, this came through Postfix and the virtmail agent.\r\n" % (rcpt, n, rcpt))
    with smtplib.SMTP(host, port, timeout=30) as s:
        try:
            s.sendmail("demo@example.test", [rcpt], msg)
            print("  %-28s accepted by Postfix" % rcpt)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = e.recipients[rcpt]
            print("  %-28s refused at RCPT: %d %s" % (rcpt, code, text.decode()))
EOF
}

show_imap() {
  python3 - "$(cat "$D/imap.port")" "$@" <<'EOF'
import imaplib, sys
port, users = int(sys.argv[1]), sys.argv[2:]
for user in users:
    try:
        m = imaplib.IMAP4("127.0.0.1", port)
        m.login(user, "demo")
        typ, data = m.select("INBOX", readonly=True)
        count = int(data[0])
        subjects = []
        if count:
            typ, items = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT DELIVERED-TO)])")
            subjects = [p[1].decode().strip().replace("\r\n", "; ") for p in items if isinstance(p, tuple)]
        print("  %-28s %d message(s) over IMAP" % (user, count))
        for s in subjects:
            print("      " + s)
        m.logout()
    except Exception as e:
        print("  %-28s IMAP error: %s" % (user, e))
EOF
}

up_node() {
  [[ $(id -u) -eq 0 ]] || die "run as root: the node needs it"
  [[ -d "$ROOT/examples/$EXAMPLE" ]] || die "no example $EXAMPLE in examples/"
  mkdir -p "$D"
  echo node >"$MODE_FILE"
  step "Installing what is missing (Debian packages, the cluster's tools, the images; the first build takes long)"
  "$ROOT/scripts/install-deps.sh"
  step "Starting the cluster with its node (tools/cluster.sh up --node)"
  local exports
  exports="$("$ROOT/tools/cluster.sh" up --node)" || die "the cluster with its node did not start (output above)"
  eval "$exports"
  KUBECTL="$VIRTMAIL_KUBECTL"
  step "Building the images from this checkout and loading them into the node (tools/images.sh)"
  "$ROOT/tools/images.sh" build pause operator agent postfix
  step "Installing the chart into virtmail-system (restricted Pod Security)"
  "$KUBECTL" create namespace virtmail-system --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  "$KUBECTL" label --overwrite namespace virtmail-system pod-security.kubernetes.io/enforce=restricted >/dev/null
  "$VIRTMAIL_HELM" upgrade --install virtmail "$ROOT/charts/virtmail" -n virtmail-system --take-ownership --force-conflicts --wait --timeout 5m \
    | sed -n '1,6s/^/  /p'
  step "Applying examples/$EXAMPLE to namespace $NS"
  "$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  "$KUBECTL" label --overwrite namespace "$NS" pod-security.kubernetes.io/enforce=baseline >/dev/null
  "$KUBECTL" -n "$NS" apply -f "$ROOT/examples/$EXAMPLE" | sed 's/^/  /'
  local server
  server="$("$KUBECTL" -n "$NS" get mailservers -o jsonpath='{.items[0].metadata.name}')"
  [[ "$server" == mail ]] || die "the demo expects a MailServer named mail (found $server)"
  step "Waiting for the StatefulSet's pod mail-0 (postfix + agent) and the mailboxes"
  wait_until "the operator to create the StatefulSet" 240 "$KUBECTL" -n "$NS" get statefulset mail
  "$KUBECTL" -n "$NS" rollout status statefulset/mail --timeout=300s | sed 's/^/  /'
  "$KUBECTL" -n "$NS" wait --for=condition=Provisioned mailbox --all --timeout=120s | sed 's/^/  /'
  "$KUBECTL" -n "$NS" get pods,svc,pvc -o wide | sed 's/^/  /'
  "$KUBECTL" -n "$NS" get mailservers,maildomains,mailboxes,mailaliases | sed 's/^/  /'

  local address addresses
  address="$("$KUBECTL" -n "$NS" get service mail -o jsonpath='{.spec.clusterIP}')"
  addresses="$("$KUBECTL" -n "$NS" get mailboxes -o jsonpath='{range .items[*]}{.spec.address}{"\n"}{end}')"
  local first_domain="${addresses%%$'\n'*}"; first_domain="${first_domain#*@}"
  step "Sending mail over SMTP to the Service mail at $address:25 (kube-proxy forwards it to the pod)"
  # shellcheck disable=SC2086
  send_mail "$address" 25 $addresses "postmaster@$first_domain" "nobody@$first_domain"
  for _ in $(seq 60); do
    [[ -z "$("$KUBECTL" -n "$NS" exec mail-0 -c postfix -- postqueue -j 2>/dev/null)" ]] && break
    sleep 0.5
  done
  local pv
  pv="$("$KUBECTL" -n "$NS" get pvc mailboxes-mail-0 -o jsonpath='{.spec.volumeName}')"
  VHOSTS="$("$KUBECTL" get pv "$pv" -o jsonpath='{.spec.hostPath.path}')"
  step "Where it landed: the pod's volume $pv, on the host at $VHOSTS (owners are the mailboxes' uids)"
  (cd "$VHOSTS" && find . -type f -printf '  %M %u:%g %6s %p\n' | sort)
  step "What IMAP shows (Dovecot on the host reading the volume)"
  [[ -f "$D/dovecot/run/master.pid" ]] && kill -0 "$(cat "$D/dovecot/run/master.pid")" 2>/dev/null || start_dovecot
  # shellcheck disable=SC2086
  show_imap $addresses

  cat <<EOF

==> The demo runs on the node. Poke at it:
  eval "\$(tools/cluster.sh env --node)"
  kubectl -n $NS get mbx,pods                   # printer columns: Ready, Provisioned
  kubectl -n $NS logs mail-0 -c agent           # the agent; -c postfix for Postfix
  kubectl -n virtmail-system logs deploy/virtmail
  SMTP to $address:25 (the Service), IMAP on 127.0.0.1:$(cat "$D/imap.port") (any password)
  tools/demo.sh status | tools/demo.sh down
EOF
}

up() {
  [[ $(id -u) -eq 0 ]] || die "run as root: the agent delivers as each mailbox's uid"
  [[ -d "$ROOT/examples/$EXAMPLE" ]] || die "no example $EXAMPLE in examples/"
  export VIRTMAIL_CLUSTER_DIR="$D/cluster"
  # The agent runs as the ServiceAccount the operator creates for the server (`<server>-agent`),
  # with a token of that identity, as it would in a pod.
  export VIRTMAIL_CLUSTER_IDENTITIES="demo-agent=system:serviceaccount:$NS:mail-agent"
  mkdir -p "$D"
  echo processes >"$MODE_FILE"
  VHOSTS="$D/vhosts"
  step "Installing what is missing (Debian packages, control-plane tools; the first build takes minutes)"
  "$ROOT/scripts/install-deps.sh"
  step "Building virtmail"
  (cd "$ROOT" && cargo build --quiet --bin virtmail-operator --bin virtmail-agent)
  mkdir -p "$D/run" "$D/vhosts"
  chmod 755 "$ROOT/target" "$D" "$D/run"
  # The mailbox base, as an administrator prepares the volume: VIRTUAL_README's Example 1 puts mbox
  # files directly in it, and their dotlocks beside them, so it is sticky and writable (/var/mail).
  chmod 1777 "$D/vhosts"

  step "Starting the Kubernetes control plane"
  eval "$("$ROOT/tools/cluster.sh" up)"
  KUBECTL="$VIRTMAIL_KUBECTL"
  "$KUBECTL" apply --server-side -f "$ROOT/crds/" >/dev/null
  "$KUBECTL" wait --for=condition=Established --timeout=60s crd --all >/dev/null
  "$KUBECTL" create namespace virtmail-system --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  "$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
  "$ROOT/target/debug/virtmail-operator" rbac | "$KUBECTL" apply -f - >/dev/null

  step "Starting the operator (identity system:serviceaccount:virtmail-system:virtmail-operator)"
  if ! alive "$D/operator.pid"; then
    KUBECONFIG="$VIRTMAIL_KUBECONFIG_OPERATOR" nohup "$ROOT/target/debug/virtmail-operator" run \
      --namespace "$NS" --http 127.0.0.1:0 >"$D/operator.log" 2>&1 &
    echo $! >"$D/operator.pid"
  fi

  step "Applying examples/$EXAMPLE"
  "$KUBECTL" -n "$NS" apply -f "$ROOT/examples/$EXAMPLE" | sed 's/^/  /'
  local server
  server="$("$KUBECTL" -n "$NS" get mailservers -o jsonpath='{.items[0].metadata.name}')"
  [[ "$server" == mail ]] || die "the demo expects a MailServer named mail (found $server)"
  wait_until "the operator to publish the directory" 120 "$KUBECTL" -n "$NS" get configmap mail-directory

  step "Starting the agent (identity system:serviceaccount:$NS:mail-agent)"
  if ! alive "$D/agent.pid"; then
    KUBECONFIG="$VIRTMAIL_KUBECONFIG_DEMO_AGENT" nohup "$ROOT/target/debug/virtmail-agent" serve \
      --namespace "$NS" --server mail --mailbox-base "$D/vhosts" \
      --lmtp "unix:$D/run/lmtp.sock" --socketmap "unix:$D/run/socketmap.sock" \
      --http 127.0.0.1:0 >"$D/agent.log" 2>&1 &
    echo $! >"$D/agent.pid"
  fi
  wait_until "the agent's sockets" 120 test -S "$D/run/socketmap.sock"
  wait_until "mailboxes to be provisioned" 120 bash -c \
    "'$KUBECTL' -n $NS get mailboxes -o jsonpath='{.items[*].status.conditions[?(@.type==\"Provisioned\")].status}' | grep -q True"

  step "Starting Postfix (private instance, profile from virtmail-operator postfix-profile)"
  postfix -c "$D/postfix" status >/dev/null 2>&1 || start_postfix
  step "Starting Dovecot (IMAP on the same mailboxes)"
  [[ -f "$D/dovecot/run/master.pid" ]] && kill -0 "$(cat "$D/dovecot/run/master.pid")" 2>/dev/null || start_dovecot

  "$KUBECTL" -n "$NS" get mailservers,maildomains,mailboxes,mailaliases | sed 's/^/  /'

  local addresses
  addresses="$("$KUBECTL" -n "$NS" get mailboxes -o jsonpath='{range .items[*]}{.spec.address}{"\n"}{end}')"
  local first_domain="${addresses%%$'\n'*}"; first_domain="${first_domain#*@}"
  step "Sending mail through Postfix's SMTP port 127.0.0.1:$(cat "$D/smtp.port")"
  # shellcheck disable=SC2086
  send_mail 127.0.0.1 "$(cat "$D/smtp.port")" $addresses "postmaster@$first_domain" "nobody@$first_domain"
  # Deliveries are asynchronous behind Postfix's queue: wait until the queue is empty.
  for _ in $(seq 40); do
    [[ -z "$(find "$D/spool/active" "$D/spool/incoming" "$D/spool/deferred" -type f 2>/dev/null)" ]] && break
    sleep 0.5
  done
  step "Where it landed (owners are the mailboxes' uids)"
  (cd "$D/vhosts" && find . -type f ! -name 'dovecot*' -printf '  %M %u:%g %6s %p\n' | sort)
  step "What IMAP shows (Dovecot reading the same files)"
  # shellcheck disable=SC2086
  show_imap $addresses

  cat <<EOF

==> The demo runs. Poke at it:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL -n $NS get mbx                       # printer columns: Ready, Provisioned
  $KUBECTL -n $NS describe mailbox <name>       # conditions and events
  swaks/smtplib to 127.0.0.1:$(cat "$D/smtp.port")          # Postfix's SMTP port
  IMAP on 127.0.0.1:$(cat "$D/imap.port")                   # any password
  logs: $D/operator.log $D/agent.log $D/postfix.log $D/dovecot.log
  tools/demo.sh status | tools/demo.sh down
EOF
}

case "${1:-}" in
  up) if [[ "${2:-}" == --processes ]]; then up; else up_node; fi ;;
  down) down ;;
  status) status ;;
  *) echo "usage: tools/demo.sh up [--processes]|status|down" >&2; exit 2 ;;
esac
