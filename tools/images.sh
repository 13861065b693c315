#!/usr/bin/env bash
# tools/images.sh — build every image virtmail's node runs, here, without a registry.
#
#   tools/images.sh build [IMAGE...]   build images (default: all) and load them into the node's
#                                      containerd if a node is running
#   tools/images.sh load [IMAGE...]    import built images into the running node's containerd
#   tools/images.sh list               the images, their tags and archives
#
# IMAGE is one of: pause debian rust distroless operator agent postfix (the first four are the
# base images the Dockerfiles name, made from Debian packages and the host's Rust toolchain).
# The project's images are built from deploy/docker/*.Dockerfile with buildah, unchanged from
# what a user with a registry builds. Archives (OCI) go to target/images/, buildah's storage to
# target/images/storage. See tools/README.md ("Images").
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
IMAGES_DIR="${VIRTMAIL_IMAGES_DIR:-$ROOT/target/images}"
SUITE="bookworm"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

APP_VERSION="$(awk -F'"' '/^appVersion:/ {print $2}' "$ROOT/charts/virtmail/Chart.yaml")"
[[ -n "$APP_VERSION" ]] || die "no appVersion in charts/virtmail/Chart.yaml"

# Names exactly as the Dockerfiles, the chart and the operator's defaults use them (containerd
# and kubelet spell Docker Hub names in full).
declare -A TAG=(
  [pause]="localhost/virtmail/pause:1.0"
  [debian]="docker.io/library/debian:$SUITE-slim"
  [rust]=""   # from the Dockerfiles' FROM line, see rust_tag
  [distroless]="gcr.io/distroless/static-debian12:latest"
  [distroless-nonroot]="gcr.io/distroless/static-debian12:nonroot"
  [operator]="docker.io/virtmail/operator:$APP_VERSION"
  [agent]="docker.io/virtmail/agent:$APP_VERSION"
  [postfix]="docker.io/virtmail/postfix:$APP_VERSION"
)
ALL=(pause debian rust distroless operator agent postfix)
# What the node imports: the sandbox and the project's images (base images stay in buildah).
NODE_IMAGES=(pause operator agent postfix)

rust_tag() {
  local from
  from="$(awk '/^FROM rust:/ {print $2; exit}' "$ROOT/deploy/docker/operator.Dockerfile")"
  [[ -n "$from" ]] || die "deploy/docker/operator.Dockerfile has no 'FROM rust:...' builder stage"
  echo "docker.io/library/$from"
}
TAG[rust]="$(rust_tag)"

STORAGE=(--root "$IMAGES_DIR/storage" --runroot "$IMAGES_DIR/run" --storage-driver overlay)
bah() { buildah "${STORAGE[@]}" "$@"; }

preflight() {
  [[ "$(id -u)" == 0 ]] || die "run as root (buildah's rootful storage, mmdebstrap as root)"
  local missing=()
  command -v buildah >/dev/null || missing+=("buildah (apt-get install buildah)")
  command -v mmdebstrap >/dev/null || missing+=("mmdebstrap (apt-get install mmdebstrap)")
  command -v gcc >/dev/null || missing+=("gcc (apt-get install gcc libc6-dev)")
  grep -qw overlay /proc/filesystems || missing+=("the overlay file system in this kernel")
  ((${#missing[@]} == 0)) || die "cannot build images here; missing: ${missing[*]}"
  mkdir -p "$IMAGES_DIR"
}

have() { bah inspect --type image "$1" >/dev/null 2>&1; }

# stamp NAME: a hash of what the image is made from; an image is rebuilt when it changes.
stamp_file() { echo "$IMAGES_DIR/.$1.stamp"; }
fresh() { [[ -f "$(stamp_file "$1")" && "$(cat "$(stamp_file "$1")")" == "$2" ]] && have "${TAG[$1]}"; }

# rootfs_image TAG TARBALL [buildah config args...]: an image whose only layer is TARBALL.
rootfs_image() {
  local tag="$1" tarball="$2"; shift 2
  local ctr; ctr="$(bah from --quiet scratch)"
  bah add --quiet "$ctr" "$tarball" / >/dev/null
  if (($#)); then bah config "$@" "$ctr"; fi
  bah commit --quiet --rm "$ctr" "$tag" >/dev/null
}

build_pause() {
  local key; key="$(sha256sum "$SCRIPT_DIR/images/pause.c" | cut -c1-16)"
  if fresh pause "$key"; then log "pause: up to date"; return; fi
  local work; work="$(mktemp -d)"
  gcc -static -Os -s -o "$work/pause" "$SCRIPT_DIR/images/pause.c"
  tar -C "$work" -cf "$work/rootfs.tar" pause
  rootfs_image "${TAG[pause]}" "$work/rootfs.tar" --entrypoint '["/pause"]' --user 65535:65535
  rm -rf "$work"
  echo "$key" >"$(stamp_file pause)"
  log "pause: built ${TAG[pause]}"
}

# debootstrap_tar OUT ARGS...: a Debian root file system as a tarball (progress on stderr).
debootstrap_tar() {
  local out="$1"; shift
  mmdebstrap --quiet "$@" "$SUITE" "$out" \
    "deb http://deb.debian.org/debian $SUITE main" \
    "deb http://deb.debian.org/debian $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main" \
    || die "mmdebstrap failed (it needs the Debian mirror)"
}

SLIM_OPTS=(--variant=minbase --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
  # The tarball's root entry is mmdebstrap's temporary directory (0700): non-root processes
  # of the image could not even load libc.
  --customize-hook='chmod 0755 "$1"')

build_debian() {
  local key="$SUITE-slim-2"
  if fresh debian "$key"; then log "debian: up to date"; return; fi
  local work; work="$(mktemp -d)"
  log "debian: mmdebstrap $SUITE (minbase), about 30 s"
  debootstrap_tar "$work/rootfs.tar" "${SLIM_OPTS[@]}"
  rootfs_image "${TAG[debian]}" "$work/rootfs.tar" --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  rm -rf "$work"
  echo "$key" >"$(stamp_file debian)"
  log "debian: built ${TAG[debian]}"
}

# The Rust builder: Debian with a C toolchain and the host's Rust toolchain (its version must be
# the one the Dockerfiles name), laid out as the official image is (RUSTUP_HOME, CARGO_HOME).
build_rust() {
  local want; want="${TAG[rust]#*rust:}"; want="${want%%-*}"
  local sysroot rustc_version
  command -v rustc >/dev/null || die "rust: rustc not found on the host (install Rust with rustup)"
  sysroot="$(rustc --print sysroot)"
  rustc_version="$(rustc --version | awk '{print $2}')"
  [[ "$rustc_version" == "$want" || "$rustc_version" == "$want".* ]] \
    || die "rust: the Dockerfiles build with Rust $want but the host has $rustc_version (rustup toolchain install $want)"
  if [[ ! -d "$sysroot/lib/rustlib/x86_64-unknown-linux-musl" ]]; then
    log "rust: adding the musl target to the host toolchain"
    rustup target add x86_64-unknown-linux-musl >&2 || die "rust: rustup target add x86_64-unknown-linux-musl failed"
  fi
  local key; key="$(printf '%s\n' "$rustc_version" "$(ls "$sysroot/lib/rustlib")" "rust-2" | sha256sum | cut -c1-16)"
  if fresh rust "$key"; then
    trust_host_cas rust
    log "rust: up to date"
    return
  fi
  local work toolchain; work="$(mktemp -d)"
  toolchain="$rustc_version-x86_64-unknown-linux-gnu"
  log "rust: mmdebstrap $SUITE with gcc, libc6-dev, make, the host's Rust $rustc_version; about a minute"
  mkdir -p "$work/add/usr/local/rustup/toolchains/$toolchain" "$work/add/usr/local/cargo/bin"
  # The toolchain without its documentation (rust-docs is most of its size).
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$work/add/usr/local/rustup/toolchains/$toolchain" -xf -
  cp "$(command -v rustup)" "$work/add/usr/local/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
    ln -s rustup "$work/add/usr/local/cargo/bin/$proxy"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
    >"$work/add/usr/local/rustup/settings.toml"
  tar -C "$work/add" -cf "$work/toolchain.tar" .
  debootstrap_tar "$work/rootfs.tar" "${SLIM_OPTS[@]}" \
    --include=ca-certificates,gcc,libc6-dev,make,pkg-config,git \
    --customize-hook="tar -C \"\$1\" -xf $work/toolchain.tar"
  rootfs_image "${TAG[rust]}" "$work/rootfs.tar" --cmd '["bash"]' \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  rm -rf "$work"
  echo "$key" >"$(stamp_file rust)"
  rm -f "$(stamp_file rust-trust)"
  trust_host_cas rust
  log "rust: built ${TAG[rust]}"
}

# The certificate authorities this machine adds to Debian's (/usr/local/share/ca-certificates,
# e.g. a proxy's in front of crates.io) are trusted by the builder too, or its `cargo build`
# cannot fetch crates where the host can. A layer on top, redone when they change.
trust_host_cas() {
  local name="$1" dir=/usr/local/share/ca-certificates
  local key; key="$( (cd "$dir" 2>/dev/null && find . -name '*.crt' -type f -exec sha256sum {} + | sort) | sha256sum | cut -c1-16)"
  if [[ -f "$(stamp_file "$name-trust")" && "$(cat "$(stamp_file "$name-trust")")" == "$key" ]]; then return; fi
  if [[ -n "$(find "$dir" -name '*.crt' -type f 2>/dev/null)" ]]; then
    log "$name: trusting this machine's certificate authorities from $dir"
    local ctr; ctr="$(bah from --quiet --pull=false "${TAG[$name]}")"
    bah copy --quiet "$ctr" "$dir/" "$dir/" >/dev/null
    bah run --network host "$ctr" update-ca-certificates >/dev/null
    bah commit --quiet --rm "$ctr" "${TAG[$name]}" >/dev/null
  fi
  echo "$key" >"$(stamp_file "$name-trust")"
}

# distroless/static: no shell, no package manager; CA certificates, time zones, /etc/passwd with
# root, nonroot (65532) and nobody, /tmp. The :nonroot tag runs as 65532 by default.
build_distroless() {
  local key="static-$SUITE-1"
  if fresh distroless "$key" && have "${TAG[distroless-nonroot]}"; then log "distroless: up to date"; return; fi
  local work; work="$(mktemp -d)"
  log "distroless: base-files, netbase, tzdata from Debian (extracted, no dpkg)"
  debootstrap_tar "$work/extract.tar" --variant=extract --include=base-files,netbase,tzdata,ca-certificates
  mkdir -p "$work/root"
  tar -C "$work/root" -xf "$work/extract.tar"
  rm -rf "$work/root"/usr/share/{doc,man,lintian,base-files} "$work/root"/usr/sbin "$work/root"/etc/{update-motd.d,profile.d}
  mkdir -p "$work/root/etc/ssl/certs" "$work/root/tmp" "$work/root/home/nonroot" "$work/root/root"
  # The bundle ca-certificates' maintainer script would generate, from the same certificates.
  find "$work/root/usr/share/ca-certificates" -name '*.crt' -exec cat {} + >"$work/root/etc/ssl/certs/ca-certificates.crt"
  chmod 1777 "$work/root/tmp"
  chown 65532:65532 "$work/root/home/nonroot"
  chmod 700 "$work/root/root"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n' >"$work/root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$work/root/etc/nsswitch.conf"
  tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
  rootfs_image "${TAG[distroless]}" "$work/rootfs.tar" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  rootfs_image "${TAG[distroless-nonroot]}" "$work/rootfs.tar" --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  rm -rf "$work"
  echo "$key" >"$(stamp_file distroless)"
  log "distroless: built ${TAG[distroless]} and ${TAG[distroless-nonroot]}"
}

# The project's images, from the Dockerfiles as a user builds them. The builder stage's cargo
# target directory and crate downloads are bind-mounted from target/images/ (buildah bud -v), so
# the operator and agent builds share one compilation and a rebuild compiles only what changed.
build_project() {
  local name="$1" file="$ROOT/deploy/docker/$1.Dockerfile"
  [[ -f "$file" ]] || die "$file not found"
  case "$name" in
    operator|agent) need_bases rust distroless ;;
    postfix) need_bases debian ;;
  esac
  mkdir -p "$IMAGES_DIR/cargo-target" "$IMAGES_DIR/cargo-registry"
  # cargo decides what to recompile by mtime: a file edited after the previous build copied the
  # sources but before it compiled them would look older than its compiled output and never be
  # rebuilt. Every file changed since the previous build started is made newer than that.
  local started="$IMAGES_DIR/.$name.build-started"
  if [[ -f "$started" ]]; then
    (cd "$ROOT" && find Cargo.toml Cargo.lock .cargo crds operator agent tests -newer "$started" -type f \
      -not -path '*/target/*' -exec touch {} +)
  fi
  touch "$started"
  local t0=$SECONDS
  log "$name: buildah bud -f deploy/docker/$name.Dockerfile -t ${TAG[$name]}"
  (cd "$ROOT" && bah bud --quiet --pull=false --network host --layers \
      -v "$IMAGES_DIR/cargo-target:/src/target" \
      -v "$IMAGES_DIR/cargo-registry:/usr/local/cargo/registry" \
      -f "deploy/docker/$name.Dockerfile" -t "${TAG[$name]}" . >&2) \
    || die "$name: buildah bud failed (output above)"
  log "$name: built ${TAG[$name]} in $((SECONDS - t0)) s"
}

need_bases() {
  local b
  for b in "$@"; do
    case "$b" in
      rust) build_rust ;;
      debian) build_debian ;;
      distroless) build_distroless ;;
    esac
  done
}

archive() { echo "$IMAGES_DIR/$1.oci.tar"; }

# Write an OCI archive for the node (kept so a new node imports without rebuilding).
save() {
  local name="$1" out; out="$(archive "$1")"
  local id; id="$(bah inspect --type image --format '{{.FromImageID}}' "${TAG[$name]}")"
  if [[ -f "$out" && -f "$out.id" && "$(cat "$out.id")" == "$id" ]]; then return; fi
  rm -f "$out"
  bah push --quiet "${TAG[$name]}" "oci-archive:$out:${TAG[$name]}" >/dev/null \
    || die "$name: buildah push to $out failed"
  echo "$id" >"$out.id"
}

# The running node's containerd (tools/cluster.sh up --node writes where it is).
node_ctr() {
  local dir="${VIRTMAIL_CLUSTER_DIR:-$ROOT/target/cluster-node}"
  local sock="$dir/node/run/containerd.sock"
  [[ -S "$sock" ]] || return 1
  echo "$ROOT/target/tools/bin/ctr --address $sock --namespace k8s.io"
}

# ctr's stderr without containerd's notice that cgroup v1 is deprecated (this host has v1).
quiet_ctr() { grep -v 'support for cgroup v1 is deprecated' >&2 || true; }

cmd_load() {
  local ctr; ctr="$(node_ctr)" || die "no running node (tools/cluster.sh up --node; VIRTMAIL_CLUSTER_DIR names its plane)"
  local name
  for name in "$@"; do
    local out; out="$(archive "$name")"
    [[ -f "$out" ]] || die "$name: no archive $out (tools/images.sh build $name)"
    $ctr images import --all-platforms "$out" >/dev/null 2> >(quiet_ctr) \
      || die "$name: ctr images import $out failed"
    log "$name: loaded into the node as ${TAG[$name]}"
  done
}

cmd_build() {
  preflight
  local want=("$@") t0=$SECONDS name
  ((${#want[@]})) || want=("${ALL[@]}")
  for name in "${want[@]}"; do
    case "$name" in
      pause) build_pause ;;
      debian) build_debian ;;
      rust) build_rust ;;
      distroless) build_distroless ;;
      operator|agent|postfix) build_project "$name" ;;
      *) die "unknown image '$name' (one of: ${ALL[*]})" ;;
    esac
  done
  local node=()
  for name in "${want[@]}"; do
    if [[ " ${NODE_IMAGES[*]} " == *" $name "* ]]; then save "$name"; node+=("$name"); fi
  done
  if ((${#node[@]})) && node_ctr >/dev/null; then cmd_load "${node[@]}"; fi
  log "build: done in $((SECONDS - t0)) s"
}

cmd_list() {
  local name
  for name in "${ALL[@]}"; do
    local state="not built"
    if have "${TAG[$name]}" 2>/dev/null; then state="built"; fi
    printf '%-11s %-50s %s\n' "$name" "${TAG[$name]}" "$state"
  done
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  load) shift; if (($#)); then cmd_load "$@"; else cmd_load "${NODE_IMAGES[@]}"; fi ;;
  list) cmd_list ;;
  tag) echo "${TAG[${2:?image name}]}" ;;
  *) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
