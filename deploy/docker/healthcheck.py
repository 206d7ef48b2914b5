#!/usr/bin/env python3
"""grpc.health.v1 check of `lnpt serve` for Docker HEALTHCHECK and Kubernetes exec probes.

Kubernetes' built-in `grpc:` probe speaks plaintext only, and `lnpt serve` runs TLS on its one
port, so the probes run this instead. Exit status: 0 healthy, 1 answered but not SERVING,
2 unreachable or the TLS handshake failed. Health checks need no bearer token.

    healthcheck.py                        # readiness: SERVING on localhost:50051 (TLS)
    healthcheck.py --live                 # liveness: the server answers at all (also while loading/draining)

Every option also comes from the environment (LNPT_HEALTH_ADDRESS, LNPT_HEALTH_CA,
LNPT_HEALTH_CLIENT_CERT, LNPT_HEALTH_CLIENT_KEY, LNPT_HEALTH_SERVER_NAME, LNPT_HEALTH_INSECURE=1),
so the image's HEALTHCHECK needs no arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=env("LNPT_HEALTH_ADDRESS", "localhost:50051"), help="HOST:PORT")
    p.add_argument("--ca-cert", default=env("LNPT_HEALTH_CA", ""), help="CA of the server certificate "
                   "(default: system roots)")
    p.add_argument("--client-cert", default=env("LNPT_HEALTH_CLIENT_CERT", ""), help="for a mutual-TLS server")
    p.add_argument("--client-key", default=env("LNPT_HEALTH_CLIENT_KEY", ""))
    p.add_argument("--server-name", default=env("LNPT_HEALTH_SERVER_NAME", ""),
                   help="name to verify when the certificate does not name localhost")
    p.add_argument("--insecure", action="store_true", default=env("LNPT_HEALTH_INSECURE", "") == "1",
                   help="plaintext (a server started with --insecure)")
    p.add_argument("--live", action="store_true", help="pass on any answer (SERVING or NOT_SERVING)")
    p.add_argument("--service", default="", help="service name to check (default: the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    return p.parse_args(argv)


def channel(args: argparse.Namespace) -> grpc.Channel:
    if args.insecure:
        return grpc.insecure_channel(args.address)
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(args.ca_cert), read(args.client_key), read(args.client_cert))
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with channel(args) as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, wait_for_ready=False)
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == SERVING or args.live else 1


if __name__ == "__main__":
    sys.exit(main())
