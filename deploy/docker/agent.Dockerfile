# virtmail-agent: a static binary on a distroless base. It runs as root with only SETUID, SETGID
# and CHOWN (set by the StatefulSet the operator builds) because it writes as each mailbox's owner.
# Build from the repository root: docker build -f deploy/docker/agent.Dockerfile -t virtmail/agent .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y musl-tools
WORKDIR /src
COPY . .
# Copied out of target/, so the build works whether target/ is part of the layer or a cache
# mount (tools/images.sh mounts a persistent one).
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin virtmail-agent \
 && cp target/x86_64-unknown-linux-musl/release/virtmail-agent /usr/local/bin/

FROM gcr.io/distroless/static-debian12
COPY --from=build /usr/local/bin/virtmail-agent /virtmail-agent
ENTRYPOINT ["/virtmail-agent"]
