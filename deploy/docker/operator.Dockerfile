# virtmail-operator: a static binary on a distroless base, non-root (restricted PSS).
# Build from the repository root: docker build -f deploy/docker/operator.Dockerfile -t virtmail/operator .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y musl-tools
WORKDIR /src
COPY . .
# Copied out of target/, so the build works whether target/ is part of the layer or a cache
# mount (tools/images.sh mounts a persistent one).
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin virtmail-operator \
 && cp target/x86_64-unknown-linux-musl/release/virtmail-operator /usr/local/bin/

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /usr/local/bin/virtmail-operator /virtmail-operator
USER 65532:65532
ENTRYPOINT ["/virtmail-operator"]
CMD ["run"]
