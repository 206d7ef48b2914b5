import pytest
import torch

from lnpt.shared.codec import CodecError, decode, encode
from lnpt.shared.protocol import guidance_pb2 as pb

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 1, 5, 7), (2, 3, 32, 32), (1, 1, 1, 1), (4, 0, 2)])
def test_round_trip_every_dtype_and_odd_shapes(dtype, shape):
    tensor = (torch.rand(shape) * 250).to(dtype)
    message = encode(tensor)
    assert list(message.shape) == list(shape)
    assert len(message.data) == tensor.numel() * tensor.element_size()
    back = decode(message, allow_empty=True)
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_decode_is_writable_and_independent_of_message():
    message = encode(torch.arange(6, dtype=torch.float32))
    tensor = decode(message)
    tensor += 1  # would fail or warn on a read-only buffer
    assert decode(message)[0] == 0


def test_non_contiguous_tensor_is_encoded_in_logical_order():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert torch.equal(decode(encode(tensor)), tensor)


def test_bytes_are_little_endian():
    assert encode(torch.tensor([1.0], dtype=torch.float32)).data == b"\x00\x00\x80\x3f"


@pytest.mark.parametrize(
    "message, fragment",
    [
        (pb.Tensor(shape=[2], dtype=pb.DTYPE_FLOAT32, data=b"\0" * 7), "7 bytes of data, but shape [2] x DTYPE_FLOAT32 (4 B) needs 8"),
        (pb.Tensor(shape=[0, 3], dtype=pb.DTYPE_UINT8, data=b""), "is empty; send at least one sample"),
        (pb.Tensor(shape=[2, -1], dtype=pb.DTYPE_UINT8, data=b"\0\0"), "negative dimension"),
        (pb.Tensor(shape=[], dtype=pb.DTYPE_UINT8, data=b"\0"), "shape is missing"),
        (pb.Tensor(shape=[1], dtype=pb.DTYPE_UNSPECIFIED, data=b"\0"), "DTYPE_UNSPECIFIED is not supported"),
        (pb.Tensor(shape=[1], dtype=42, data=b"\0"), "unknown dtype 42 is not supported"),
        (pb.Tensor(shape=[1] * 9, dtype=pb.DTYPE_UINT8, data=b"\0"), "9 dimensions"),
    ],
)
def test_malformed_messages_are_rejected_with_a_precise_message(message, fragment):
    with pytest.raises(CodecError, match="images: ") as info:
        decode(message, name="images")
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_non_finite_values_rejected_when_asked(bad, dtype):
    message = encode(torch.tensor([1.0, bad, 2.0], dtype=dtype))
    assert not torch.isfinite(decode(message)).all()  # allowed unless asked
    with pytest.raises(CodecError, match="1 of 3 values are NaN or infinite"):
        decode(message, require_finite=True)


def test_unsupported_dtype_refused_on_encode():
    with pytest.raises(CodecError, match="cannot encode dtype torch.int64"):
        encode(torch.zeros(2, dtype=torch.int64))
