"""One device check for every command: `train.device`, `batcher.device` and `teacher.device` all
go through `resolve_device`, so a device this machine lacks ends in the same one-line message."""
from __future__ import annotations

import torch

from lnpt.shared.errors import LnptError


class DeviceError(LnptError, ValueError):
    """A device setting names a device torch does not know or this machine does not have."""


def resolve_device(name: str, setting: str, local_rank: int = 0) -> torch.device:
    """The device `name` (cpu, cuda, cuda:N; empty = cuda when available, else cpu), checked here.

    `setting` is the config key the value came from (named in the error). A CUDA device always
    comes back with an index — bare `cuda` means `cuda:<local_rank>` (torchrun's LOCAL_RANK), since
    torch.cuda.set_device and DistributedDataParallel need one.
    """
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"{setting} = {name!r} is not a device torch knows ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise DeviceError(f"{setting} = {name!r}: lnpt runs on cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise DeviceError(f"{setting} = {name!r}, but torch sees no CUDA device here (torch {torch.__version__}); "
                          "use cpu, or install a CUDA build of torch (on a Jetson: NVIDIA's JetPack wheel)")
    index = local_rank if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{setting} = {name!r} means cuda:{index}, but this machine has {count} CUDA "
                          f"device(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)
