"""The teacher's forward pass: uint8 or float images in, penultimate features and logits out.

The cloud server serves exactly this; offline experiments and tests call it directly, so the
targets a client gets over gRPC and the ones computed locally come from one code path.
A teacher is a model file (any model spec) run by PyTorch, or an ONNX file run by ONNX Runtime
(`lnpt.shared.onnx_teacher`); both answer the same `targets`.

Resolution rule: the TEACHER resizes. A uint8 batch of another size or channel count than the
teacher's input spec is adapted to it here (the same resize/crop as the data pipeline), so a
student at 96 px can learn from a teacher at 224 px without the device doing the teacher's
preprocessing. Float batches are already normalised model input and must match exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lnpt.shared.model_file import ModelFile, load_model
from lnpt.shared.data import adapt, normalize
from lnpt.shared.onnx_teacher import OnnxNet, OnnxTeacherFile, read_onnx_teacher
from lnpt.shared.protocol import guidance_pb2 as pb

PROTOCOL_VERSION = "lnpt.v1"
# Wire formats `targets` accepts for images and can return targets in.
INPUT_DTYPES = (pb.DTYPE_UINT8, pb.DTYPE_FLOAT16, pb.DTYPE_FLOAT32)
TARGET_DTYPES = {pb.DTYPE_FLOAT32: torch.float32, pb.DTYPE_FLOAT16: torch.float16}


def read_teacher(path: str | os.PathLike, config=None) -> ModelFile | OnnxTeacherFile:
    """Read and check a teacher file: an `.onnx` file (with `config`, the [teacher] section, naming
    its outputs) or an lnpt teacher model file. Cheap enough to run before binding a port."""
    if Path(path).suffix.lower() == ".onnx":
        return read_onnx_teacher(path, config)
    return load_model(path, kind="teacher")


class Teacher:
    """A loaded teacher (model file or ONNX file), in eval mode, answering `targets(images)`.

        >>> teacher = Teacher.load("teacher.onnx")          # doctest: +SKIP
        >>> features, logits = teacher.targets(uint8_images)  # doctest: +SKIP
    """

    def __init__(self, record: ModelFile | OnnxTeacherFile, device: str = "cpu"):
        self.record = record
        self.device = torch.device(device)
        if isinstance(record, OnnxTeacherFile):
            self.model = OnnxNet(record, device)
        else:
            self.model = record.build().eval().to(self.device)
        self.input_spec = record.input_spec

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", config=None) -> "Teacher":
        """`Teacher(read_teacher(path, config), device)`."""
        return cls(read_teacher(path, config), device)

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def arch(self) -> str:
        return self.record.arch

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def info(self, max_batch_size: int = 0, max_message_bytes: int = 0) -> pb.TeacherInfo:
        """What a client needs to know about this teacher (GetTeacherInfo); limits 0 = none."""
        spec = self.input_spec
        return pb.TeacherInfo(
            protocol_version=PROTOCOL_VERSION, teacher_id=self.arch, teacher_version=self.version,
            input_shape=list(spec.shape), input_dtype=pb.DTYPE_FLOAT32,
            normalization=pb.Normalization(mean=list(spec.mean), std=list(spec.std)),
            feature_dim=self.feature_dim, num_classes=self.num_classes, class_names=self.record.class_names,
            max_batch_size=max_batch_size, max_message_bytes=max_message_bytes,
            input_dtypes=list(INPUT_DTYPES), target_dtypes=list(TARGET_DTYPES),
        )

    @torch.inference_mode()
    def targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) as float32 on CPU. uint8 images are resized to the teacher's input spec
        when they differ (the resolution rule above) and normalised with its own mean/std; float
        images are taken as already normalised model input of exactly the teacher's shape."""
        spec = self.input_spec
        if images.dtype == torch.uint8:
            if tuple(images.shape[1:]) != spec.shape:
                images = adapt(images, spec)
            x = normalize(images.to(self.device), spec)
        else:
            if tuple(images.shape[1:]) != spec.shape:
                raise ValueError(f"float images must be normalised input of shape N x {' x '.join(map(str, spec.shape))}, "
                                 f"got {tuple(images.shape)}; send uint8 pixels to have them resized")
            x = images.to(self.device).float()
        features, logits = self.model.features_and_logits(x)
        return features.float().cpu(), logits.float().cpu()
