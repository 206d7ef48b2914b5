"""The teacher's forward pass: uint8 or float images in, penultimate features and logits out.

The cloud server serves exactly this; offline experiments and tests call it directly, so the
targets a client gets over gRPC and the ones computed locally come from one code path.
"""
from __future__ import annotations

import os

import torch

from lnpt.shared.model_file import ModelFile, load_model
from lnpt.shared.data import normalize
from lnpt.shared.protocol import guidance_pb2 as pb

PROTOCOL_VERSION = "lnpt.v1"
# Wire formats `targets` accepts for images and can return targets in.
INPUT_DTYPES = (pb.DTYPE_UINT8, pb.DTYPE_FLOAT16, pb.DTYPE_FLOAT32)
TARGET_DTYPES = {pb.DTYPE_FLOAT32: torch.float32, pb.DTYPE_FLOAT16: torch.float16}


class Teacher:
    """A loaded teacher model file, in eval mode, answering `targets(images)`."""

    def __init__(self, record: ModelFile, device: str = "cpu"):
        self.record = record
        self.device = torch.device(device)
        self.model = record.build().eval().to(self.device)
        self.input_spec = record.input_spec

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "Teacher":
        return cls(load_model(path, kind="teacher"), device)

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
        """(features, logits) as float32 on CPU. uint8 images are normalised with the teacher's
        own mean/std; float images are taken as already normalised model input."""
        images = images.to(self.device)
        x = normalize(images, self.input_spec) if images.dtype == torch.uint8 else images.float()
        features, logits = self.model.features_and_logits(x)
        return features.float().cpu(), logits.float().cpu()
