"""The committed stubs must be exactly what `make protos` generates from the .proto."""
from lnpt.shared.protocol import generate


def test_committed_stubs_are_fresh(repo_root, tmp_path):
    generate.generate(repo_root, tmp_path)
    committed = repo_root / "shared" / "protocol"
    stale = [name for name in generate.GENERATED
             if (tmp_path / name).read_bytes() != (committed / name).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit the result"


def test_service_shape():
    from lnpt.shared.protocol import guidance_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Guidance"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"GetTeacherInfo", "StreamTargets"}
    stream = methods["StreamTargets"]
    assert stream.client_streaming and stream.server_streaming
    assert pb.DESCRIPTOR.package == "lnpt.v1"
    assert set(pb.DType.keys()) >= {"DTYPE_UINT8", "DTYPE_FLOAT16", "DTYPE_BFLOAT16", "DTYPE_FLOAT32"}
