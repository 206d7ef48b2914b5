"""Regenerate the gRPC stubs in this folder from protos/lnpt/v1/guidance.proto.

Run from the repository root:  python -m lnpt.shared.protocol.generate  (or `make protos`).

The .proto is staged under lnpt/shared/protocol/ so that protoc writes package-qualified imports
(`from lnpt.shared.protocol import guidance_pb2`) that work in both editable and wheel installs.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

PROTO_SOURCE = Path("protos/lnpt/v1/guidance.proto")
STAGED_PATH = Path("lnpt/shared/protocol/guidance.proto")
GENERATED = ("guidance_pb2.py", "guidance_pb2.pyi", "guidance_pb2_grpc.py")


def generate(repo_root: Path, out_dir: Path) -> list[Path]:
    """Run protoc on the repository's .proto and write the stubs into out_dir."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / STAGED_PATH
        staged.parent.mkdir(parents=True)
        shutil.copyfile(repo_root / PROTO_SOURCE, staged)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = [f"-I{protoc_include()}", f"-I{Path(tmp) / 'src'}"]
        args = ["protoc", *include, f"--python_out={gen}", f"--pyi_out={gen}",
                f"--grpc_python_out={gen}", str(STAGED_PATH)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_SOURCE}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            shutil.copyfile(gen / STAGED_PATH.parent / name, out_dir / name)
            written.append(out_dir / name)
        return written


def protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument("--out", type=Path, default=Path("shared/protocol"), help="output folder")
    args = parser.parse_args()
    for path in generate(args.root, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
