#!/bin/sh
# Apply the virtmail profile (main.cf parameters, then master.cf `postconf -F` settings) and run
# Postfix in the foreground with its log on stdout. A setting Postfix refuses or warns about
# stops the container with the line that failed: a profile is never run half-applied.
set -eu
profile=/etc/virtmail/postfix

# `postfix-entrypoint drain SECONDS` (the container's preStop): hand the queue to the agent, wait
# up to SECONDS for it to empty, then stop. What is still queued stays on the queue's volume.
if [ "${1:-}" = drain ]; then
  limit="${2:-20}" waited=0
  postqueue -f || true
  while [ "$waited" -lt "$limit" ] && [ -n "$(postqueue -j 2>/dev/null | head -c1)" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  exec postfix stop
fi

for file in main.cf master.cf; do
  if [ ! -r "$profile/$file" ]; then
    echo "postfix-entrypoint: $profile/$file is missing (mount the <server>-postfix ConfigMap there)" >&2
    exit 1
  fi
done

# Debian's package, installed without configuration, ships no main.cf: start from current
# defaults (no local aliases on a virtual-only server), which the profile then extends.
[ -f /etc/postfix/main.cf ] || printf 'compatibility_level = 3.6\nalias_maps =\nalias_database =\n' >/etc/postfix/main.cf
[ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf

# apply_settings FLAG FILE: one `postconf FLAG LINE` per non-comment line; any message is fatal
# (postconf -F only warns about a service master.cf does not have).
apply_settings() {
  grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$2" | while IFS= read -r line; do
    if ! out="$(postconf "$1" "$line" 2>&1)" || [ -n "$out" ]; then
      echo "postfix-entrypoint: postconf $1 '$line' failed: $out" >&2
      exit 1
    fi
  done
}
apply_settings -e "$profile/main.cf"
apply_settings -F "$profile/master.cf"
# Services the profile adds (the PROXY-protocol listener); older ConfigMaps have none.
[ ! -r "$profile/master-services.cf" ] || apply_settings -M "$profile/master-services.cf"
postconf -e maillog_file=/dev/stdout
# Copies what chrooted services need into the queue directory.
/usr/lib/postfix/configure-instance.sh -

# Every $interval seconds: write the queue's size where the agent exports it (the file the
# operator names in VIRTMAIL_QUEUE_STATS, in the directory both containers share), and reload
# Postfix when the kubelet has swapped in a renewed TLS Secret (smtpd reads the certificate
# when it starts; a reload replaces idle smtpd processes, sessions in progress finish first).
watch_queue_and_certificate() {
  interval="${VIRTMAIL_WATCH_INTERVAL:-10}" stats="${VIRTMAIL_QUEUE_STATS:-}"
  tls_cert="$(postconf -h smtpd_tls_cert_file)" tls_key="$(postconf -h smtpd_tls_key_file)"
  fingerprint() { [ -z "$tls_cert" ] || cat "$tls_cert" "$tls_key" 2>/dev/null | cksum; }
  loaded="$(fingerprint)"
  while sleep "$interval"; do
    if [ -n "$stats" ]; then
      for queue in maildrop incoming active deferred hold; do
        echo "$queue $(find "/var/spool/postfix/$queue" -type f 2>/dev/null | wc -l)"
      done >"$stats.tmp" && mv "$stats.tmp" "$stats"
    fi
    current="$(fingerprint)"
    if [ "$current" != "$loaded" ]; then
      echo "postfix-entrypoint: TLS certificate changed, reloading Postfix" >&2
      postfix reload && loaded="$current"
    fi
  done
}
watch_queue_and_certificate &
exec postfix start-fg
