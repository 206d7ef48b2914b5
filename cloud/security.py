"""TLS credentials and bearer-token authentication for the guidance server.

Tokens arrive as gRPC metadata `authorization: Bearer <token>`; they are compared in constant time
with every configured token and never logged. Health checks stay open so load balancers and
Kubernetes probes work without a token.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import grpc

from lnpt.shared.config import ConfigError, ServerConfig

log = logging.getLogger("lnpt.cloud.security")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
AUTH_HELP = "send metadata 'authorization: Bearer <token>' with a token listed in the server's tokens file"
MIN_TOKEN_LENGTH = 16  # characters; `openssl rand -hex 32` makes 64


def read_pem(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"server.{what} = {path!r}: cannot read it ({exc.strerror})") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"server.{what} = {path!r}: not a PEM file")
    return data


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual when `client_ca` is set) credentials, or None with `insecure`."""
    if config.insecure:
        return None
    if not config.cert or not config.key:
        raise ConfigError("TLS is on by default: set server.cert and server.key (PEM files; "
                          "deploy/gen-certs.sh makes test ones), or pass --insecure for local use")
    key, cert = read_pem(config.key, "key"), read_pem(config.cert, "cert")
    client_ca = read_pem(config.client_ca, "client_ca") if config.client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def load_tokens(path: str) -> list[bytes]:
    """One token per line; blank lines and lines starting with '#' are ignored. A token shorter than
    MIN_TOKEN_LENGTH is refused: it could be guessed."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"server.tokens_file = {path!r}: cannot read it ({exc})") from exc
    tokens = [line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"server.tokens_file = {path!r}: holds no token (one per line)")
    short = [number for number, token in enumerate(tokens, 1) if len(token) < MIN_TOKEN_LENGTH]
    if short:
        raise ConfigError(f"server.tokens_file = {path!r}: token {short[0]} (counting tokens, not lines) has fewer "
                          f"than {MIN_TOKEN_LENGTH} characters and could be guessed; make one with "
                          "`openssl rand -hex 32`")
    return tokens


def token_matches(presented: bytes, tokens: list[bytes]) -> bool:
    """Constant time: compared with every token (no early exit), so timing reveals neither which
    nor how much matched."""
    matches = [hmac.compare_digest(presented, token) for token in tokens]
    return any(matches)


def token_id(metadata, tokens: list[bytes]) -> str | None:
    """A short non-secret name of the valid token in `metadata` (for per-token limits and logs), or None."""
    presented = bearer_token(metadata)
    if presented is None or not token_matches(presented, tokens):
        return None
    return "token-" + hashlib.sha256(presented).hexdigest()[:8]


def bearer_token(metadata) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, token = (value.decode() if isinstance(value, bytes) else value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token with UNAUTHENTICATED (health checks excepted)."""

    def __init__(self, tokens: list[bytes], on_refused=None):
        self.tokens = tokens
        self.on_refused = on_refused  # callback(method) for metrics

    def authorized(self, metadata) -> bool:
        presented = bearer_token(metadata)
        return presented is not None and token_matches(presented, self.tokens)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        log.warning("refused a call to %s: missing or invalid bearer token", method)
        if self.on_refused:
            self.on_refused(method)
        return refusing_handler(handler, "missing or invalid bearer token: " + AUTH_HELP)


def refusing_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with UNAUTHENTICATED."""

    async def refuse(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
