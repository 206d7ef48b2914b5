"""Tensor <-> `lnpt.v1.Tensor` message: raw little-endian bytes with shape and dtype.

Decoding validates everything a remote peer could get wrong and raises `CodecError` with a message
a person can act on; the server turns that into INVALID_ARGUMENT. Decoding copies the bytes once
(protobuf bytes are immutable, torch needs a writable buffer).
"""
from __future__ import annotations

import math
import sys

import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.protocol import guidance_pb2 as pb

WIRE_DTYPES: dict[int, torch.dtype] = {
    pb.DTYPE_UINT8: torch.uint8,
    pb.DTYPE_FLOAT16: torch.float16,
    pb.DTYPE_BFLOAT16: torch.bfloat16,
    pb.DTYPE_FLOAT32: torch.float32,
}
TORCH_TO_WIRE = {v: k for k, v in WIRE_DTYPES.items()}
MAX_DIMS = 8


class CodecError(LnptError, ValueError):
    """A Tensor message (or a tensor to encode) is malformed; the message says how."""


def dtype_name(wire_dtype: int) -> str:
    try:
        return pb.DType.Name(wire_dtype)
    except ValueError:
        return f"unknown dtype {wire_dtype}"


def encode(tensor: torch.Tensor) -> pb.Tensor:
    """Encode a CPU or GPU tensor of a supported dtype as a Tensor message."""
    if tensor.dtype not in TORCH_TO_WIRE:
        supported = ", ".join(str(d) for d in TORCH_TO_WIRE)
        raise CodecError(f"cannot encode dtype {tensor.dtype}; supported: {supported}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise CodecError("big-endian hosts are not supported")
    data = flat.view(torch.uint8).numpy().tobytes()
    return pb.Tensor(shape=list(tensor.shape), dtype=TORCH_TO_WIRE[tensor.dtype], data=data)


def decode(
    message: pb.Tensor,
    *,
    require_finite: bool = False,
    allow_empty: bool = False,
    name: str = "tensor",
) -> torch.Tensor:
    """Decode a Tensor message, validating dtype, shape and byte length.

    `require_finite` rejects NaN/Inf in floating tensors; `allow_empty=False` rejects a zero-sized
    tensor (an empty batch). `name` prefixes every error message.
    """
    if message.dtype not in WIRE_DTYPES:
        known = ", ".join(pb.DType.Name(d) for d in WIRE_DTYPES)
        raise CodecError(f"{name}: {dtype_name(message.dtype)} is not supported; use one of {known}")
    shape = list(message.shape)
    if not shape:
        raise CodecError(f"{name}: shape is missing (a scalar is not a batch)")
    if len(shape) > MAX_DIMS:
        raise CodecError(f"{name}: {len(shape)} dimensions, at most {MAX_DIMS} are allowed")
    if any(d < 0 for d in shape):
        raise CodecError(f"{name}: shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count == 0 and not allow_empty:
        raise CodecError(f"{name}: shape {shape} is empty; send at least one sample")
    dtype = WIRE_DTYPES[message.dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = count * itemsize
    if len(message.data) != expected:
        raise CodecError(
            f"{name}: {len(message.data)} bytes of data, but shape {shape} x "
            f"{pb.DType.Name(message.dtype)} ({itemsize} B) needs {expected} bytes"
        )
    # The single copy: bytearray makes the buffer writable so torch owns safe memory.
    tensor = torch.frombuffer(bytearray(message.data), dtype=dtype) if expected else torch.empty(0, dtype=dtype)
    tensor = tensor.reshape(shape)
    if require_finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise CodecError(f"{name}: {bad} of {count} values are NaN or infinite")
    return tensor
