#!/bin/sh
# Postfix pipe(8) transport for tests: store the message from stdin as one file in DIR ($1),
# named after the recipient ($2) and a unique suffix. Runs as the pipe's `user=` (nobody).
set -eu
dir=$1
rcpt=$2
tmp="$dir/.tmp.$$"
cat > "$tmp"
mv "$tmp" "$dir/$rcpt.$(date +%s%N).$$"
