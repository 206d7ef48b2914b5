"""Sparse storage: initializers as ONNX `sparse_initializer`s where that is smaller, and sparsity
read back from any ONNX model (dense or sparse initializers).

The ONNX spec wants int64 indices, linear over the flattened tensor ([NNZ] form). That costs 8
bytes per kept weight on top of its value, so sparse storage only wins below about 1/3 density
for float32 weights (1/9 for int8). ONNX Runtime densifies sparse initializers when it loads a
model: this shrinks files, it does not make inference faster.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SparseEncoding:
    """What `to_sparse` changed: which initializers moved and the bytes before and after."""

    encoded: list[str]
    dense_bytes: int  # serialized size of the initializers that moved, as dense tensors
    sparse_bytes: int  # ... and as sparse tensors


def sparse_tensor(array: np.ndarray, name: str):
    """`array` as a spec-valid SparseTensorProto: values [NNZ] and int64 linear indices [NNZ]."""
    from onnx import helper, numpy_helper

    flat = array.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[indices], name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(indices, f"{name}__indices"), list(array.shape))


def to_sparse(proto):
    """A copy of `proto` with every initializer stored sparse where that is smaller.

    Call this last: ONNX Runtime's quantizer cannot read sparse initializers.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    keep, encoded, dense_bytes, sparse_bytes = [], [], 0, 0
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        candidate = sparse_tensor(array, init.name) if array.size > 1 else None
        if candidate is not None and candidate.ByteSize() < init.ByteSize():
            graph.sparse_initializer.append(candidate)
            encoded.append(init.name)
            dense_bytes += init.ByteSize()
            sparse_bytes += candidate.ByteSize()
        else:
            keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model, SparseEncoding(encoded, dense_bytes, sparse_bytes)


def densify(sparse) -> np.ndarray:
    """A SparseTensorProto back to a dense numpy array (linear or coordinate indices)."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices)
    shape = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    if indices.ndim == 2:  # [NNZ, rank] coordinates
        indices = np.ravel_multi_index(indices.T, shape)
    dense[indices] = values
    return dense.reshape(shape)


def initializer_arrays(proto) -> dict[str, np.ndarray]:
    """Every initializer of the main graph by name, dense or sparse, as a dense array."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    arrays.update({sp.values.name: densify(sp) for sp in proto.graph.sparse_initializer})
    return arrays


# Names ONNX Runtime's quantizer gives a quantized copy of initializer `name`.
QUANTIZED_SUFFIXES = ("", "_quantized")


def layer_weights(proto, weight_names: list[str]) -> dict[str, np.ndarray]:
    """The exported tensor for each student weight (`body.0.weight`), float or quantized.

    Raises KeyError naming the weights the graph does not hold under a known name.
    """
    arrays = initializer_arrays(proto)
    found, missing = {}, []
    for name in weight_names:
        match = next((name + s for s in QUANTIZED_SUFFIXES if name + s in arrays), None)
        if match is None:
            missing.append(name)
        else:
            found[name] = arrays[match]
    if missing:
        raise KeyError(f"exported graph has no initializer for {missing[:5]}")
    return found


def sparsity_report(weights: dict[str, np.ndarray]) -> dict:
    """{"overall": zero fraction over all weights, "per_layer": {name: zero fraction}, counts}."""
    per_layer, zeros, total = {}, 0, 0
    for name, array in weights.items():
        layer_zeros = int(array.size - np.count_nonzero(array))
        per_layer[name] = layer_zeros / max(array.size, 1)
        zeros += layer_zeros
        total += array.size
    return {"overall": zeros / max(total, 1), "zeros": zeros, "weights": total, "per_layer": per_layer}
