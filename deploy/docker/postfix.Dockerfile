# Unmodified Debian Postfix that applies the operator's <server>-postfix ConfigMap (mounted at
# /etc/virtmail/postfix) at start and logs to stdout.
# Build from the repository root: docker build -f deploy/docker/postfix.Dockerfile -t virtmail/postfix .
FROM debian:bookworm-slim
RUN echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
 && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/docker/postfix-entrypoint.sh /usr/local/bin/postfix-entrypoint
ENTRYPOINT ["/usr/local/bin/postfix-entrypoint"]
