"""`lnpt.cloud.serve` from Python: a background server that serves real targets and drains on exit."""
import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lnpt.cloud import serve
from lnpt.edge import open_teacher
from lnpt.edge.teachers import LocalTeacher
from lnpt.shared.config import ClientConfig
from support.servers import make_teacher


def test_serve_as_a_context_manager_serves_then_shuts_down(tmp_path):
    teacher = make_teacher(tmp_path / "teacher.pt")
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with serve(teacher, port=0, insecure=True, metrics_port=-1, grace_seconds=1, background=True) as address:
        with open_teacher(address, ClientConfig(insecure=True)) as remote:
            features, logits = remote.targets(images)
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    expected_features, expected_logits = LocalTeacher.load(teacher).targets(images)
    assert torch.allclose(features, expected_features, atol=1e-2) and logits.shape == expected_logits.shape
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as gone:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE  # the port is closed after the block


def test_serve_checks_its_settings_like_a_config_file(tmp_path):
    from lnpt.shared.config import ConfigError

    with pytest.raises(ConfigError, match="serve\\(\\): server.port = -5"):
        serve(make_teacher(tmp_path / "teacher.pt"), port=-5, background=True)
