# syntax=docker/dockerfile:1.7
# An lnpt edge device: prune, train (label-free, guided by the cloud teacher) and export, with
# `pip install .[edge]` only (no server extras). Builds for linux/arm64 (Jetson, Raspberry Pi 4/5
# with a 64-bit OS) and linux/amd64 from the repository root:
#   docker buildx build --platform linux/arm64,linux/amd64 -f deploy/docker/edge.Dockerfile -t lnpt-edge .
# On a Jetson, prefer the systemd path (deploy/README.md): NVIDIA's JetPack torch wheel is built
# against the device's CUDA, this image's CPU wheels are not.
# The base of both stages: any Debian-based image with Python 3.11, `python` on PATH and the venv
# module (deploy/verify.sh builds on a local Debian base made with mmdebstrap).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyTorch's CPU wheel index has both x86_64 and aarch64 wheels and no CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
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
COPY requirements.lock ./
RUN /opt/lnpt/bin/pip install -c requirements.lock --index-url "$TORCH_INDEX" torch torchvision
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY cloud ./cloud
COPY edge ./edge
COPY lab ./lab
RUN /opt/lnpt/bin/pip install -c requirements.lock ".[edge]"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 lnpt \
 && useradd --system --uid 10001 --gid lnpt --home-dir /var/lib/lnpt --create-home --shell /usr/sbin/nologin lnpt \
 && mkdir -p /work /data /etc/lnpt \
 && chown lnpt:lnpt /work
COPY --from=build /opt/lnpt /opt/lnpt
COPY deploy/bin/lnpt-edge-job /opt/lnpt/bin/lnpt-edge-job
ENV PATH=/opt/lnpt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LNPT_WORK=/work \
    LNPT_DATA=/data
USER 10001:10001
WORKDIR /work
# A batch job, not a server: nothing to health-check. Mount /data (unlabeled images, read-only)
# and /work (student, checkpoints, exports; a named volume inherits the lnpt owner from /work).
ENTRYPOINT ["lnpt-edge-job"]
