#!/usr/bin/env bash
# Install everything virtmail's tests need on a fresh Debian machine (idempotent, run as root).
# Each step says what it does; nothing is downloaded outside the package registries.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

# Debian packages: Postfix and Dovecot (end-to-end mail tests),
# openssl and curl (control-plane certificates and health checks), python3 (LMTP conformance client), util-linux (mount),
# gcc, libc6-dev and make (the linker, and the build of the operator's allocator, jemalloc);
# for the node (tools/cluster.sh up --node): runc, the CNI plugins, iptables, conntrack and
# iproute2; for the images (tools/images.sh): buildah and mmdebstrap; strace (a crash test kills
# a delivery at an exact system call).
APT_PACKAGES=(postfix dovecot-imapd dovecot-lmtpd openssl curl python3 util-linux procps tzdata gcc libc6-dev make
  runc containernetworking-plugins iptables conntrack iproute2 buildah mmdebstrap strace)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks questions at install time; answer them up front. Its service is not started
  # (no init system); tests run private instances.
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string virtmail.test" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is missing: install Rust (rustup) first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    log "adding rustup component $component"
    rustup component add "$component"
  fi
done

if [ -x "$(dirname "$0")/../tools/cluster.sh" ]; then
  if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
    echo "error: Go is missing: it builds etcd, kube-apiserver, kube-controller-manager and helm (tools/)" >&2
    exit 1
  fi
  log "building control-plane and node tools (cached under target/tools; first build takes minutes)"
  PATH="$PATH:/usr/local/go/bin" "$(dirname "$0")/../tools/cluster.sh" build
fi

if [ -x "$(dirname "$0")/../tools/images.sh" ]; then
  # The node's images: base images from Debian packages and the host's Rust toolchain, then the
  # project's from deploy/docker (a first build compiles the workspace for musl: minutes).
  log "building the node's images (tools/images.sh build; cached under target/images)"
  "$(dirname "$0")/../tools/images.sh" build
fi
