# syntax=docker/dockerfile:1
# Baton's container image: `docker build -t baton:0.1.0 .` (README.md, "Container image").
#
# Two stages. The first builds the binary with scripts/build-static, the same script scripts/test
# runs (phase `static`), so the binary CI builds and runs through the demo is the one shipped here.
# The second holds that binary and nothing able to run beside it: no shell, no package manager, no
# libc (the binary is static, musl). It runs as a numeric non-root user and writes nothing to its
# root file system: Baton writes its Unix socket to a mounted volume (/var/run/baton in k8s/), its
# logs to stderr and its audit lines to stdout (or, with `audit.sink: file`, to a mounted volume).

# The toolchain the static build was measured with (README.md: Baton needs Rust 1.89 or later).
FROM rust:1.95.0-bookworm AS build
# What scripts/deps installs for the static build: musl's C compiler (for the C in aws-lc-rs, ring
# and mimalloc) and Rust's musl target. musl-tools is not pinned to a version (hadolint's DL3008):
# the pinned bookworm image fixes the release, and a pinned Debian version vanishes with its
# security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# cargo's downloads and target/ are build caches, kept between builds; the binary is copied out of
# them in the same step. scripts/build-static prints its path after checking that it is static and
# that `baton --version` runs.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cp "$(scripts/build-static)" /baton

# distroless/static: CA certificates (Baton verifies its token services' TLS against the system
# roots, /etc/ssl/certs), /etc/passwd with `nonroot` (65532), tzdata; no shell. Pin it by digest
# (`@sha256:...`) where builds must be reproducible.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="baton" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Envoy ext_authz sidecar that exchanges a user's token for one scoped to each destination (RFC 8693)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /baton /usr/local/bin/baton
# Baton's UID and the socket group in k8s/ (runAsUser, runAsGroup, listen.grpc_uds_group).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["run", "--config", "/etc/baton/config/baton.yaml"]
