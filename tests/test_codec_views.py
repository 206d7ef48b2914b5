"""`decode_view` (zero-copy, read-only) and `encode_array`: the server's copy-free decode path."""
import numpy as np
import pytest
import torch

from lnpt.shared.codec import CodecError, decode, decode_view, encode, encode_array
from lnpt.shared.protocol import guidance_pb2 as pb


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32])
def test_view_equals_decode_without_copying_the_bytes(dtype):
    tensor = (torch.rand(3, 1, 5, 7) * 250).to(dtype)
    message = encode(tensor)
    view = decode_view(message)
    # a view over the bytes protobuf hands out (reading a bytes field copies once; this adds no second copy)
    assert view.shape == (3, 1, 5, 7) and not view.flags.writeable and not view.flags.owndata
    assert torch.equal(torch.from_numpy(view.copy()), decode(message))
    assert encode_array(view).data == message.data


def test_view_validates_like_decode():
    with pytest.raises(CodecError, match="images: 7 bytes of data, but shape \\[2\\]"):
        decode_view(pb.Tensor(shape=[2], dtype=pb.DTYPE_FLOAT32, data=b"\0" * 7), name="images")
    nan = encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(CodecError, match="1 of 2 values are NaN or infinite"):
        decode_view(nan, require_finite=True)
    with pytest.raises(CodecError, match="cannot be viewed without a copy"):
        decode_view(encode(torch.zeros(2, dtype=torch.bfloat16)))


def test_encode_array_writes_c_order_for_any_layout():
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    assert np.array_equal(decode(encode_array(array)).numpy(), array)
    with pytest.raises(CodecError, match="cannot encode numpy dtype int64"):
        encode_array(np.zeros(2, dtype=np.int64))
