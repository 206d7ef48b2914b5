"""Shared fixtures. Torch threads are set explicitly: CI machines have 2 cores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fashion_train():
    from lnpt.shared.data import load_fashion_mnist

    return load_fashion_mnist(train=True)


@pytest.fixture(scope="session")
def fashion_test():
    from lnpt.shared.data import load_fashion_mnist

    return load_fashion_mnist(train=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA with server (localhost, 127.0.0.1) and client certificates."""
    from lnpt.cloud.certs import generate_test_pki

    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def real_photo_folder(tmp_path_factory) -> Path:
    """A flat folder of real photographs (scikit-image's samples) as PNG and JPEG files."""
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.png")
    for name in ("camera", "moon"):  # grey photos, saved as JPEG
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A real (briefly trained) LeNet-5 teacher made with the cloud's recipe, for the experiments' tests."""
    from lnpt.cloud.teacher_training import train_teacher
    from lnpt.shared.config import load_config

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    config = load_config(None, ["teacher.model=lenet5", "teacher.epochs=1", "teacher.train_samples=1024",
                                "teacher.test_samples=256"])
    train_teacher(config, str(path), device="cpu")
    return path
