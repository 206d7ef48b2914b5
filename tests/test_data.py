import pytest
import torch

from lnpt.shared.data import (FASHION_MNIST_SPEC, DataError, UnlabeledImageFolder, adapt, normalize,
                              write_image_folder)
from lnpt.shared.models import InputSpec


def test_fashion_mnist_is_real_and_complete(fashion_train, fashion_test):
    (x_train, y_train), (x_test, y_test) = fashion_train, fashion_test
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == torch.uint8 and set(y_train.unique().tolist()) == set(range(10))
    assert torch.bincount(y_test).tolist() == [1000] * 10  # the real test set is balanced
    # real images, not noise: mean pixel matches the published statistic (0.2860 * 255)
    assert abs(x_train.float().mean().item() / 255 - 0.2860) < 0.001


def test_folder_reads_real_photos_flat(real_photo_folder):
    spec = InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3)
    dataset = UnlabeledImageFolder(real_photo_folder, spec)
    assert len(dataset) == 6
    images = dataset.take(range(len(dataset)))
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert images.float().std() > 20  # real pictures have contrast
    grey = UnlabeledImageFolder(real_photo_folder, FASHION_MNIST_SPEC)[0]
    assert grey.shape == (1, 28, 28)


def test_folder_with_class_subfolders_round_trips_pixels_and_returns_no_labels(tmp_path, fashion_test):
    images, labels = fashion_test
    write_image_folder(images[:20], tmp_path, labels[:20].tolist(), [f"c{i}" for i in range(10)])
    assert len({p.parent.name for p in tmp_path.rglob("*.png")}) > 1
    dataset = UnlabeledImageFolder(tmp_path, FASHION_MNIST_SPEC)
    sample = dataset[0]
    assert isinstance(sample, torch.Tensor)  # pixels only, never (image, label)
    assert sorted(map(bytes, dataset.take(range(len(dataset))).numpy())) == sorted(map(bytes, images[:20].numpy()))


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        UnlabeledImageFolder(tmp_path / "nope", FASHION_MNIST_SPEC)
    with pytest.raises(DataError, match="no images found under"):
        UnlabeledImageFolder(tmp_path, FASHION_MNIST_SPEC)


def test_adapt_and_normalize():
    grey = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    rgb = adapt(grey, InputSpec(3, 32, (0.5,) * 3, (0.5,) * 3))
    assert rgb.shape == (2, 3, 32, 32) and int(rgb.min()) == 255
    back = adapt(rgb, FASHION_MNIST_SPEC)
    assert back.shape == (2, 1, 28, 28) and int(back.min()) == 255
    x = normalize(grey, InputSpec(1, 28, (0.5,), (0.25,)))
    assert torch.allclose(x, torch.full_like(x, 2.0))
