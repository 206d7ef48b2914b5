# syntax=docker/dockerfile:1.7
# lnpt-cloud with one teacher model file baked in, so every replica serves the same teacher version
# (clients refuse a teacher that changes version mid-run). The context is the folder holding teacher.pt:
#   docker build -f deploy/docker/teacher.Dockerfile --build-arg BASE=lnpt-cloud:cpu -t lnpt-guidance:v1 models/
ARG BASE=lnpt-cloud:cpu
FROM ${BASE}
COPY --chown=10001:10001 teacher.pt /models/teacher.pt
