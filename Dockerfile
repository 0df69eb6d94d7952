# syntax=docker/dockerfile:1
#
# Herald's container image: a release build on Debian bookworm, copied onto
# distroless `cc` (glibc, libgcc, CA certificates, /etc/passwd with `nonroot`;
# no shell, no package manager). It runs as UID 65532.
#
#   docker build -t REGISTRY/herald:0.1.0 .
#   docker run --rm -p 8000:8000 -e HERALD_JWT_SECRET="$(openssl rand -hex 32)" \
#     REGISTRY/herald:0.1.0
#
# The runtime layout below (binary path, config path, user, entrypoint) is
# what tests/image/test_image.sh rebuilds FROM scratch and runs; it reads the
# paths from this file, so keep them on the lines it parses: the
# `COPY --from=build` of the binary, the `COPY config/...` of the config,
# USER, ENTRYPOINT and CMD in the final stage.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole context (see .dockerignore): the crate, and any workspace members
# (bench/) that Cargo needs to read the workspace, whether or not it is one.
COPY . .
# Cache mounts keep the registry and target/ between builds, so a source
# change recompiles Herald, not its dependencies. The binary is copied out of
# the cache mount, which is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p herald --bin herald \
 && install -D -m 0755 target/release/herald /out/herald

# glibc-linked, so not `scratch` or `static`: `cc` carries libc, libm and
# libgcc_s (what `ldd herald` lists) and /etc/ssl/certs/ca-certificates.crt,
# which the JWKS client (auth.jwks_url over https) verifies servers against.
FROM gcr.io/distroless/cc-debian12

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Real-time notifications over Server-Sent Events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12"

COPY --from=build /out/herald /usr/local/bin/herald
# A working default: production settings (auth on, JSON logs). It needs only
# HERALD_JWT_SECRET (32 bytes or more). The Helm chart mounts its own
# ConfigMap over /etc/herald.
COPY config/production.toml /etc/herald/herald.toml

# distroless's `nonroot` user; the chart's securityContext uses the same IDs.
USER 65532:65532
# 8000: API, SSE, /healthz, /readyz (and /metrics unless admin_listen is set).
# 9090: the admin listener (/metrics, /healthz, /readyz) once
# telemetry.admin_listen is set, as the chart does by default.
EXPOSE 8000 9090
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve", "--config", "/etc/herald/herald.toml"]
