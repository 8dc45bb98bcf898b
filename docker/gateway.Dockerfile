# kbase-spark-gateway: one Spark Connect address for every KBase user (README, "Gateway"), as an
# image for linux/amd64 and linux/arm64.
#
# Build from the repository root after the build has made the binaries, build/gateway/<platform>/
# (as root, both platforms: scripts/test.sh --quick or gradle --offline assemble; a host-only
# build makes this machine's only), with BuildKit (Docker's default builder), which builds only
# the stage of the platform asked for:
#   docker build -f docker/gateway.Dockerfile -t kbase-spark-gateway:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/gateway.Dockerfile \
#       -t kbase-spark-gateway:0.1.0 .
# Run it with the Python proxy's environment (a Deployment: docker/k8s/gateway.yaml):
#   docker run --rm -p 127.0.0.1:15002:15002 -p 127.0.0.1:15003:15003 kbase-spark-gateway:0.1.0
#   curl -f http://127.0.0.1:15003/readyz
#
# No Docker engine or cluster exists where this repository is built and tested, so this file is
# never built there: tests/scripts/test_docker_gateway.py checks it against the code instead (the
# files it copies, its variables and their defaults, its ports, its user).

# TARGETARCH (amd64, arm64) is set by BuildKit for the platform being built.
ARG TARGETARCH

# The binary of each platform, in the build's words (scripts/cross/lib.sh: debian_arch).
FROM scratch AS binary-amd64
COPY build/gateway/linux-x86_64/kbase-spark-gateway /kbase-spark-gateway
FROM scratch AS binary-arm64
COPY build/gateway/linux-aarch64/kbase-spark-gateway /kbase-spark-gateway
FROM binary-${TARGETARCH} AS binary

# Debian 12: glibc 2.36 (the binaries need 2.28 or newer) and a small base. CA certificates: the
# gateway refuses to start without a trust store for an https KBASE_AUTH_URL.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin gateway
COPY --from=binary /kbase-spark-gateway /usr/local/bin/kbase-spark-gateway

# The Python proxy's variables with its defaults (KBase production), so the image starts as the
# Python proxy's did; a Deployment's environment overrides them. The gateway's own settings keep
# their defaults (kbase-spark-gateway --help); the admin port is named for EXPOSE.
ENV KBASE_AUTH_URL=https://kbase.us/services/auth/ \
    PROXY_LISTEN_PORT=15002 \
    BACKEND_PORT=15002 \
    BACKEND_NAMESPACE=jupyterhub-prod \
    SERVICE_TEMPLATE="jupyter-{username}.{namespace}.svc.cluster.local" \
    TOKEN_CACHE_TTL=300 \
    TOKEN_CACHE_MAX_SIZE=1000 \
    REQUIRE_MFA=true \
    MFA_EXEMPT_USERS="" \
    MAX_CHANNELS_PER_BACKEND=5 \
    BACKEND_CONNECT_TIMEOUT=5.0 \
    GATEWAY_ADMIN_PORT=15003

# gRPC (h2c, as the ingress hands it over) and the admin port (/healthz, /readyz, /metrics).
EXPOSE 15002 15003

# Numeric, so that Kubernetes' runAsNonRoot can check it. The gateway writes no file: the root
# file system may be read-only.
USER 10001:10001

# No HEALTHCHECK: Kubernetes ignores it and probes /readyz and /healthz itself (the Deployment's
# probes), and the image carries no HTTP client to run one (from the host: curl as above).
HEALTHCHECK NONE

# PID 1 is the gateway itself: it handles SIGTERM (drain, then exit 0) and SIGINT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kbase-spark-gateway"]
