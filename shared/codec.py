"""Tensor <-> `lnpt.v1.Tensor` message: raw little-endian bytes with shape and dtype.

Decoding validates everything a remote peer could get wrong and raises `CodecError` with a message
a person can act on; the server turns that into INVALID_ARGUMENT. `decode` copies the bytes once
(protobuf bytes are immutable, torch needs a writable buffer); `decode_view` adds no copy to the
one protobuf makes when its bytes field is read, and returns a read-only numpy view for callers
that only read (the server's batcher concatenates the views of several requests into one batch).
"""
from __future__ import annotations

import math
import sys

import numpy as np

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
# numpy has no bfloat16: those tensors take the torch path.
NUMPY_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_UINT8: np.dtype("<u1"), pb.DTYPE_FLOAT16: np.dtype("<f2"), pb.DTYPE_FLOAT32: np.dtype("<f4"),
}
MAX_DIMS = 8
ITEM_SIZES = {wire: torch.empty((), dtype=dtype).element_size() for wire, dtype in WIRE_DTYPES.items()}


class CodecError(LnptError, ValueError):
    """A Tensor message (or a tensor to encode) is malformed; the message says how."""


def dtype_name(wire_dtype: int) -> str:
    try:
        return pb.DType.Name(wire_dtype)
    except ValueError:
        return f"unknown dtype {wire_dtype}"


def encode(tensor: torch.Tensor) -> pb.Tensor:
    """Encode a CPU or GPU tensor of a supported dtype as a Tensor message (one copy into the bytes)."""
    if tensor.dtype not in TORCH_TO_WIRE:
        supported = ", ".join(str(d) for d in TORCH_TO_WIRE)
        raise CodecError(f"cannot encode dtype {tensor.dtype}; supported: {supported}")
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise CodecError("big-endian hosts are not supported")
    wire = TORCH_TO_WIRE[tensor.dtype]
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if wire in NUMPY_DTYPES:  # numpy's tobytes writes C order for any layout: no torch copy first
        data = tensor.numpy().tobytes()
    else:
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return pb.Tensor(shape=tensor.shape, dtype=wire, data=data)


def encode_array(array: np.ndarray) -> pb.Tensor:
    """Encode a numpy array of uint8, float16 or float32 (any layout) as a Tensor message."""
    for wire, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return pb.Tensor(shape=array.shape, dtype=wire, data=array.tobytes())
    raise CodecError(f"cannot encode numpy dtype {array.dtype}; supported: uint8, float16, float32")


def checked_shape(message: pb.Tensor, *, allow_empty: bool, name: str) -> list[int]:
    """The message's shape after checking dtype, dimensions and byte length; raises CodecError."""
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
    itemsize = ITEM_SIZES[message.dtype]
    expected = count * itemsize
    if len(message.data) != expected:
        raise CodecError(
            f"{name}: {len(message.data)} bytes of data, but shape {shape} x "
            f"{pb.DType.Name(message.dtype)} ({itemsize} B) needs {expected} bytes"
        )
    return shape


def check_finite(values, name: str) -> None:
    """CodecError when a float tensor or array holds NaN or Inf."""
    finite = np.isfinite(values) if isinstance(values, np.ndarray) else torch.isfinite(values)
    if not bool(finite.all()):
        raise CodecError(f"{name}: {int((~finite).sum())} of {math.prod(values.shape)} values are NaN or infinite")


def decode(
    message: pb.Tensor,
    *,
    require_finite: bool = False,
    allow_empty: bool = False,
    name: str = "tensor",
) -> torch.Tensor:
    """Decode a Tensor message into a writable tensor, validating dtype, shape and byte length.

    `require_finite` rejects NaN/Inf in floating tensors; `allow_empty=False` rejects a zero-sized
    tensor (an empty batch). `name` prefixes every error message.
    """
    shape = checked_shape(message, allow_empty=allow_empty, name=name)
    dtype = WIRE_DTYPES[message.dtype]
    # The single copy: bytearray makes the buffer writable so torch owns safe memory.
    tensor = torch.frombuffer(bytearray(message.data), dtype=dtype) if message.data else torch.empty(0, dtype=dtype)
    tensor = tensor.reshape(shape)
    if require_finite and tensor.is_floating_point():
        check_finite(tensor, name)
    return tensor


def decode_view(
    message: pb.Tensor,
    *,
    require_finite: bool = False,
    allow_empty: bool = False,
    name: str = "tensor",
) -> np.ndarray:
    """Like `decode`, but a read-only numpy view of the message's bytes: no copy of its own.

    For uint8, float16 and float32 (numpy has no bfloat16). The view keeps the bytes alive.
    """
    shape = checked_shape(message, allow_empty=allow_empty, name=name)
    if message.dtype not in NUMPY_DTYPES:
        raise CodecError(f"{name}: {dtype_name(message.dtype)} cannot be viewed without a copy; use decode")
    array = np.frombuffer(message.data, dtype=NUMPY_DTYPES[message.dtype]).reshape(shape)
    if require_finite and message.dtype != pb.DTYPE_UINT8:
        check_finite(array, name)
    return array
