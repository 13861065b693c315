#!/bin/sh
# Apply the virtmail profile (main.cf parameters, then master.cf `postconf -F` settings) and run
# Postfix in the foreground with its log on stdout.
set -eu
profile=/etc/virtmail/postfix
grep -v '^#' "$profile/main.cf" | while IFS= read -r line; do
  [ -n "$line" ] && postconf -e "$line"
done
grep -v '^#' "$profile/master.cf" | while IFS= read -r line; do
  [ -n "$line" ] && postconf -F "$line" || true
done
postconf -e maillog_file=/dev/stdout
/usr/lib/postfix/configure-instance.sh - || true
exec postfix start-fg
