"""One device check for every command (lnpt.shared.devices.resolve_device): on a machine without
CUDA, every spelling of a CUDA device ends `lnpt teacher train`, `lnpt train` and serving with the
same one-line message, before any data is read or port bound."""
from __future__ import annotations

import pytest
import torch

from lnpt.shared.cli import main
from lnpt.shared.devices import DeviceError, resolve_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so cuda is a valid device")


def no_cuda_message(setting: str, name: str) -> str:
    return f"{setting} = {name!r}, but torch sees no CUDA device here (torch {torch.__version__}); use cpu"


def test_resolve_device_names_the_setting_and_indexes_cuda():
    assert resolve_device("cpu", "x.device") == torch.device("cpu")
    assert resolve_device("", "x.device") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="x.device = 'gpu' is not a device torch knows"):
        resolve_device("gpu", "x.device")
    with pytest.raises(DeviceError, match="x.device = 'mps': lnpt runs on cpu or cuda"):
        resolve_device("mps", "x.device")
    if torch.cuda.is_available():  # bare cuda gets this process's index (torchrun's LOCAL_RANK)
        assert resolve_device("cuda", "x.device", local_rank=0) == torch.device("cuda", 0)
        with pytest.raises(DeviceError, match="means cuda:99, but this machine has"):
            resolve_device("cuda:99", "x.device")


@NO_CUDA
@pytest.mark.parametrize("spelling", [["--device", "cuda"], ["--device", "cuda:0"], ["--set", "teacher.device=cuda"]])
def test_teacher_train_without_cuda_stops_with_one_line(spelling, tmp_path, capsys):
    out = tmp_path / "T.pt"
    code = main(["teacher", "train", "--model", "lenet5", "--epochs", "1", "--out", str(out), *spelling])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert no_cuda_message("teacher.device", spelling[1].split("=")[-1]) in err
    assert not out.exists()


@NO_CUDA
@pytest.mark.parametrize("spelling", [["--device", "cuda:0"], ["--set", "train.device=cuda"]])
def test_train_without_cuda_stops_with_the_same_line(spelling, tmp_path, capsys):
    from support.servers import make_student, make_teacher

    teacher, student = make_teacher(tmp_path / "T.pt"), make_student(tmp_path / "S.pt")
    code = main(["train", "--student", str(student), "--teacher", str(teacher), "--max-steps", "1",
                 "--out", str(tmp_path / "s.pt"), "--no-progress", *spelling])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert no_cuda_message("train.device", spelling[1].split("=")[-1]) in err


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_serving_without_cuda_stops_with_the_same_line_before_binding(device, tmp_path):
    from support.servers import make_teacher

    from lnpt.cloud import serve
    from lnpt.shared.config import load_config

    teacher = make_teacher(tmp_path / "T.pt")
    config = load_config(None, [f"batcher.device={device}"])
    with pytest.raises(DeviceError) as raised:
        serve(teacher, config, port=0, insecure=True, metrics_port=-1, background=True)
    assert no_cuda_message("batcher.device", device) in str(raised.value)
