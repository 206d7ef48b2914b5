"""A model's outputs over a whole set of images, in batches, and top-1 accuracy.

Evaluation on the device, teacher training, the experiments and export checks all measure with
these two functions. Images are uint8 pixels; each model normalises them with its own input spec.
"""
from __future__ import annotations

import torch

from lnpt.shared.data import adapt, normalize
from lnpt.shared.models import InputSpec


@torch.inference_mode()
def outputs(model: torch.nn.Module, images: torch.Tensor, spec: InputSpec, batch_size: int = 256
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits), float32 on the CPU, of `model` in eval mode for uint8 `images`."""
    model.eval()
    device = next(model.parameters()).device
    features, logits = [], []
    for chunk in adapt(images, spec).split(batch_size):
        f, z = model.features_and_logits(normalize(chunk, spec).to(device))
        features.append(f.float().cpu())
        logits.append(z.float().cpu())
    return torch.cat(features), torch.cat(logits)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose highest logit is the label (or the other network's top class)."""
    if labels.dim() == 2:  # another network's logits: agreement
        labels = labels.argmax(1)
    return float((logits.argmax(1) == labels.to(logits.device)).float().mean()) if len(labels) else 0.0
