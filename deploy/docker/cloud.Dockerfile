# syntax=docker/dockerfile:1.7
# The lnpt guidance server: `lnpt serve` as a non-root user, with a gRPC health check.
# Build from the repository root (the context is the repository, see cloud.Dockerfile.dockerignore):
#   docker build -f deploy/docker/cloud.Dockerfile -t lnpt-cloud:cpu .
#   docker build -f deploy/docker/cloud.Dockerfile --build-arg VARIANT=cuda -t lnpt-cloud:cuda .
# The teacher model file is mounted at /models/teacher.pt, or baked in with teacher.Dockerfile.
# The base of both stages: any Debian-based image with Python 3.11, `python` on PATH and the venv
# module (deploy/verify.sh builds on a local Debian base made with mmdebstrap).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: PyTorch's CPU-only wheels (about 10x smaller); cuda: PyPI's default build, which bundles the
# CUDA runtime as pip packages (the host needs only the NVIDIA driver and container toolkit).
ARG VARIANT=cpu
# Set to pick another wheel index for torch, e.g. https://download.pytorch.org/whl/cu130.
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Optional pip settings for this stage, e.g. a local wheel mirror mounted into the build
# and its TLS CA bundle (deploy/verify.sh passes the host's own); unset, pip uses PyPI. The final
# stage keeps none.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN python -m venv /opt/lnpt
WORKDIR /src
# torch first, in its own layer: it is large and changes less often than lnpt's sources.
COPY requirements.lock ./
RUN case "$VARIANT" in \
      cpu) index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX:-https://pypi.org/simple}" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && /opt/lnpt/bin/pip install -c requirements.lock --index-url "$index" torch torchvision
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY cloud ./cloud
COPY edge ./edge
COPY lab ./lab
# Exact versions from requirements.lock (as constraints: only what .[cloud] needs is installed).
RUN /opt/lnpt/bin/pip install -c requirements.lock ".[cloud]"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 lnpt \
 && useradd --system --uid 10001 --gid lnpt --home-dir /var/lib/lnpt --create-home --shell /usr/sbin/nologin lnpt \
 && mkdir -p /models /etc/lnpt
COPY --from=build /opt/lnpt /opt/lnpt
COPY deploy/docker/healthcheck.py /opt/lnpt/healthcheck.py
COPY deploy/config/cloud.toml /etc/lnpt/lnpt.toml
ENV PATH=/opt/lnpt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LNPT_HEALTH_ADDRESS=localhost:50051 \
    LNPT_HEALTH_CA=/etc/lnpt/tls/ca.pem
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/lnpt
# gRPC (lnpt.v1.Guidance, health, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
# Readiness-style: SERVING only; the start period covers loading the teacher.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/lnpt/healthcheck.py"]
# SIGTERM drains (health NOT_SERVING, open streams finish) within server.grace_seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lnpt", "serve"]
CMD ["--config", "/etc/lnpt/lnpt.toml", "--checkpoint", "/models/teacher.pt"]
