"""Test certificates on the fly: a CA, a server certificate (SAN localhost, 127.0.0.1) and a client
certificate for mutual TLS. For tests and demos only; production certificates come from your PKI.

Uses the `openssl` command (the `cryptography` package is not a dependency); deploy/gen-certs.sh
makes the same files from a shell.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lnpt.shared.errors import LnptError


class CertError(LnptError, RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class TestPki:
    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    __test__ = False  # not a pytest test class despite the name


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise CertError("the openssl command is needed to make test certificates; install openssl")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CertError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def issue(name: str, subject: str, extensions: str, folder: Path, days: int) -> None:
    """A P-256 key and a certificate for it signed by the CA in `folder`."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", str(days), "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)
    (folder / f"{name}.csr").unlink()
    (folder / f"{name}.ext").unlink()


def generate_test_pki(folder: str | os.PathLike, days: int = 30) -> TestPki:
    """Write ca.pem/ca.key, server.pem/server.key, client.pem/client.key into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-subj", "/CN=lnpt test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder)
    issue("server", "/CN=localhost",
          "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n", folder, days)
    issue("client", "/CN=lnpt test client",
          "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=clientAuth\n", folder, days)
    for key in ("ca.key", "server.key", "client.key"):
        (folder / key).chmod(0o600)
    return TestPki(folder, folder / "ca.pem", folder / "server.pem", folder / "server.key",
                   folder / "client.pem", folder / "client.key")


if __name__ == "__main__":  # python -m lnpt.cloud.certs FOLDER
    import sys

    pki = generate_test_pki(sys.argv[1] if len(sys.argv) > 1 else "certs")
    print(f"wrote test CA, server and client certificates to {pki.folder}")
