"""Unlabeled image folders streamed from disk: real files of every mode, workers, preprocessing and
each kind of bad file under both policies (lnpt.shared.images, lnpt.shared.data, lnpt.shared.preprocess)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lnpt.shared.data import UnlabeledImageFolder, adapt
from lnpt.shared.images import DataError, decode_file
from lnpt.shared.preprocess import Preprocess
from lnpt.shared.models import InputSpec

RGB64 = InputSpec(3, 64, (0.5,) * 3, (0.25,) * 3)
GREY64 = InputSpec(1, 64, (0.5,), (0.25,))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, real_photo_folder):
    """Real photos saved in every mode a camera roll or a dataset hands over, nested."""
    folder = tmp_path_factory.mktemp("mixed")
    photo = Image.open(real_photo_folder / "astronaut.png").convert("RGB").resize((256, 256))
    (folder / "a" / "b").mkdir(parents=True)
    photo.convert("L").save(folder / "grey.png")
    rgba = photo.copy()
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    photo.convert("P", palette=Image.ADAPTIVE).save(folder / "a" / "palette.png")
    wide = np.asarray(photo.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    Image.fromarray(wide).save(folder / "a" / "grey16.png")
    photo.convert("CMYK").save(folder / "a" / "b" / "cmyk.jpg", quality=92)
    photo.resize((300, 300)).save(folder / "a" / "b" / "big300.jpg", quality=92)
    photo.crop((0, 0, 256, 128)).save(folder / "wide.webp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._grey.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    return folder


def test_every_mode_comes_out_in_the_models_shape(mixed_folder):
    for spec in (RGB64, GREY64):
        folder = UnlabeledImageFolder(mixed_folder, spec)
        assert len(folder) == 7
        images = folder.take(range(len(folder)))
        assert images.shape == (7, spec.channels, 64, 64) and images.dtype == torch.uint8
        assert all(float(image.float().std()) > 10 for image in images)  # real content survived every mode
        stats = folder.stats()
        assert stats["other_files"] == 1 and stats["metadata_files"] == 1 and stats["bad_files"] == 0
        assert stats["scaled_16bit"] == 1


def test_16_bit_images_are_scaled_not_clipped(mixed_folder):
    grey16, _ = decode_file(mixed_folder / "a" / "grey16.png", Preprocess.for_spec(InputSpec(1, 256, (0.5,), (0.25,))))
    grey8, _ = decode_file(mixed_folder / "grey.png", Preprocess.for_spec(InputSpec(1, 256, (0.5,), (0.25,))))
    assert torch.equal(grey16, grey8)  # x * 257 scaled back is x exactly; clipping would give 255 everywhere


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255  # white left half of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    image, _ = decode_file(tmp_path / "rotated.jpg", Preprocess(3, 80, 40, (0.5,) * 3, (0.5,) * 3))
    assert image.shape == (3, 80, 40)  # displayed as portrait
    assert image[:, :40].float().mean() > 200 and image[:, 40:].float().mean() < 50  # white on top


def test_two_workers_return_the_same_pixels_as_zero(mixed_folder):
    batches = [[6, 0, 3], [1, 5], [2, 4]]
    serial = list(UnlabeledImageFolder(mixed_folder, RGB64, workers=0).batches(batches))
    parallel = list(UnlabeledImageFolder(mixed_folder, RGB64, workers=2).batches(batches))
    assert len(serial) == len(parallel) == 3
    for (p0, i0, x0), (p1, i1, x1) in zip(serial, parallel):
        assert p0 == p1 and torch.equal(i0, i1) and torch.equal(x0, x1)


def test_crop_and_pad_fit_a_300_pixel_image_into_64():
    image = torch.zeros(1, 300, 200, dtype=torch.uint8)
    image[:, :, 90:110] = 255  # a vertical bar in the middle
    crop = Preprocess(1, 64, 64, (0.5,), (0.5,)).apply(image)
    pad = Preprocess(1, 64, 64, (0.5,), (0.5,), fit="pad").apply(image)
    assert crop.shape == pad.shape == (1, 64, 64)
    assert int(pad[0, :, :8].max()) == 0 and int(pad[0, :, -8:].max()) == 0  # zero borders left and right
    assert int(crop[0, :, :8].max()) == 0 and crop[0, 32, 32] == 255  # the bar stays centred
    resized = Preprocess(1, 64, 64, (0.5,), (0.5,), resize=73).apply(image)  # shorter side 73, then crop
    assert resized.shape == (1, 64, 64)
    assert torch.equal(adapt(image.unsqueeze(0), Preprocess(1, 64, 64, (0.5,), (0.5,)))[0], crop)


@pytest.fixture()
def bad_folder(tmp_path, real_photo_folder):
    Image.open(real_photo_folder / "coffee.png").convert("RGB").save(tmp_path / "good.png")
    jpeg = (real_photo_folder / "camera.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is a text file with an image extension")
    Image.new("RGB", (32, 32)).save(tmp_path / "bitmap.png", format="BMP")  # wrong extension, unsupported format
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).convert("P") for _ in range(3)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])  # unsupported mode
    Image.new("L", (1500, 1000)).save(tmp_path / "bomb.png")  # 1.5 MP, over the 1 MP limit below
    return tmp_path


REASONS = {"truncated.jpg": "corrupt or truncated: JPEG", "corrupt.png": "corrupt or truncated: header",
           "empty.png": "empty file", "text.jpg": "not an image", "bitmap.png": "unsupported format: a BMP file",
           "animated.gif": "animated: a GIF with 3 frames", "bomb.png": "over data.max_pixels: 1500 x 1000"}


def test_bad_files_are_skipped_counted_and_named(bad_folder, caplog):
    folder = UnlabeledImageFolder(bad_folder, RGB64, max_pixels=1_000_000)
    with caplog.at_level(logging.WARNING, logger="lnpt.data"):
        images = folder.take(range(len(folder)))
        again = folder.take(range(len(folder)))  # a second epoch counts nothing twice
    assert images.shape == again.shape == (1, 3, 64, 64)
    stats = folder.stats()
    assert stats["bad_files"] == 7 and stats["images"] == 8
    named = " ".join(r.getMessage() for r in caplog.records)
    assert named.count("skipped bad image") == 5  # the first five are named, the rest counted
    assert stats["bad_reasons"] == {"corrupt or truncated": 2, "empty file": 1, "not an image": 1,
                                    "unsupported format": 1, "animated": 1, "over data.max_pixels": 1}
    by_file = {path.rsplit("/", 1)[-1]: reason for path, reason in folder.report.bad.values()}
    for name, expected in REASONS.items():
        assert by_file[name].startswith(expected), (name, by_file[name])


@pytest.mark.parametrize("name", sorted(REASONS))
def test_fail_policy_stops_at_the_first_bad_file_with_path_and_reason(bad_folder, name):
    for other in bad_folder.iterdir():
        if other.name not in (name, "good.png"):
            other.unlink()
    with pytest.raises(DataError, match=rf"{name}: {REASONS[name]}.*on_bad_file = 'fail'"):
        folder = UnlabeledImageFolder(bad_folder, RGB64, on_bad_file="fail", max_pixels=1_000_000)
        folder.take(range(len(folder)))  # files sorted after good.png fail here, the others at the start


def test_empty_or_unreadable_folders_fail_at_start_with_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        UnlabeledImageFolder(tmp_path / "missing", RGB64)
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=rf"no images found under {tmp_path} \(1 other files"):
        UnlabeledImageFolder(tmp_path, RGB64)
    (tmp_path / "broken.png").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 10)
    with pytest.raises(DataError, match=rf"no readable image in {tmp_path}: all 2 image files are bad"):
        UnlabeledImageFolder(tmp_path, RGB64)
