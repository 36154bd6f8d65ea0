# syntax=docker/dockerfile:1
# omsgate container image: build with the Rust image, run on Debian slim as a non-root user.
#
#   docker build -t omsgate .
#   docker run -d --name omsgate -p 8080:8080 \
#     -v "$PWD/config.toml:/etc/omsgate/config.toml:ro" -v omsgate-spool:/var/lib/omsgate \
#     --stop-timeout 45 omsgate
#
# The admin listener (metrics, /health, /ready) stays on 127.0.0.1:9091 by default: the
# HEALTHCHECK runs inside the container and reaches it there. To scrape /metrics from outside
# the container, set `[admin] listen = "0.0.0.0:9091"` and publish 9091 on a private network only.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# === build ===
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is built from source by rdkafka-sys (configure/make; cmake for its cmake builds),
# with TLS from the system's OpenSSL (libssl-dev).
# Packages are not pinned (DL3008): the release's current security updates are what we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin omsgate \
    && install -m 0755 target/release/omsgate /usr/local/bin/omsgate

# === runtime ===
FROM debian:${DEBIAN_RELEASE}-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 omsgate \
    && useradd --system --uid 10001 --gid omsgate --home-dir /var/lib/omsgate \
       --shell /usr/sbin/nologin omsgate \
    && install -d -o omsgate -g omsgate -m 0700 /var/lib/omsgate \
    && install -d -m 0755 /etc/omsgate
COPY --from=build /usr/local/bin/omsgate /usr/local/bin/omsgate
COPY config.toml /etc/omsgate/config.toml

USER 10001:10001
# The audit spool (audit.spool_dir is relative to the working directory) lives on the volume.
WORKDIR /var/lib/omsgate
VOLUME ["/var/lib/omsgate"]
# 8080: the public listener (server.listen); 9091: the admin listener (admin.listen).
EXPOSE 8080 9091
# Liveness from inside the container: the port must match admin.listen (127.0.0.1 works, since
# the check runs in the container's own network namespace).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "2", "-o", "/dev/null", "http://127.0.0.1:9091/health"]
# SIGTERM drains in-flight requests for up to server.shutdown_grace (30s): stop with
# `docker stop -t 45` (compose: stop_grace_period: 45s). SIGHUP reloads the config:
# `docker kill -s HUP omsgate`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/omsgate"]
CMD ["run", "--config", "/etc/omsgate/config.toml"]
