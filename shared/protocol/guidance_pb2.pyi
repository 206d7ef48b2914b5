from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT32: DType

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetTeacherInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Normalization(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class TeacherInfo(_message.Message):
    __slots__ = ("protocol_version", "teacher_id", "teacher_version", "input_shape", "input_dtype", "normalization", "feature_dim", "num_classes", "class_names", "max_batch_size", "max_message_bytes", "input_dtypes", "target_dtypes", "preferred_batch_size", "max_in_flight")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPES_FIELD_NUMBER: _ClassVar[int]
    TARGET_DTYPES_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    teacher_id: str
    teacher_version: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: DType
    normalization: Normalization
    feature_dim: int
    num_classes: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    max_message_bytes: int
    input_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    target_dtypes: _containers.RepeatedScalarFieldContainer[DType]
    preferred_batch_size: int
    max_in_flight: int
    def __init__(self, protocol_version: _Optional[str] = ..., teacher_id: _Optional[str] = ..., teacher_version: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[_Union[DType, str]] = ..., normalization: _Optional[_Union[Normalization, _Mapping]] = ..., feature_dim: _Optional[int] = ..., num_classes: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., input_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., target_dtypes: _Optional[_Iterable[_Union[DType, str]]] = ..., preferred_batch_size: _Optional[int] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class TargetsRequest(_message.Message):
    __slots__ = ("request_id", "images", "target_dtype", "expected_teacher_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TARGET_DTYPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    images: Tensor
    target_dtype: DType
    expected_teacher_version: str
    def __init__(self, request_id: _Optional[int] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ..., target_dtype: _Optional[_Union[DType, str]] = ..., expected_teacher_version: _Optional[str] = ...) -> None: ...

class TargetsResponse(_message.Message):
    __slots__ = ("request_id", "features", "logits", "teacher_id", "teacher_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_ID_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    features: Tensor
    logits: Tensor
    teacher_id: str
    teacher_version: str
    def __init__(self, request_id: _Optional[int] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., teacher_id: _Optional[str] = ..., teacher_version: _Optional[str] = ...) -> None: ...
