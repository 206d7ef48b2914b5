"""Labeled sources (ImageFolder, CSV, ELPV) for the cloud and evaluation; the teacher trains and is
evaluated from them; labels never reach the edge's training path; preprocessing is recorded."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from support.servers import make_student, make_teacher

from lnpt.edge.evaluation import labeled_folder
from lnpt.edge.student import load_student
from lnpt.edge.teachers import LocalTeacher
from lnpt.edge.training.image_source import ImageSource
from lnpt.edge.training.target_cache import TargetCache
from lnpt.edge.training.trainer import GuidedTrainer
from lnpt.shared import labeled
from lnpt.shared.cli import main
from lnpt.shared.config import load_config
from lnpt.shared.data import (FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, UnlabeledImageFolder, safe_name,
                              write_image_folder)
from lnpt.shared.elpv import CLASSES as ELPV_CLASSES, prepare_elpv
from lnpt.shared.images import DataError
from lnpt.shared.model_file import load_model
from lnpt.shared.preprocess import Preprocess
from lnpt.shared.teacher_model import Teacher

FM = Preprocess.for_spec(FASHION_MNIST_SPEC)


@pytest.fixture(scope="module")
def fm_folder(tmp_path_factory, fashion_test):
    images, labels = fashion_test
    root = tmp_path_factory.mktemp("fm")
    write_image_folder(images[:300], root / "train", labels[:300].tolist(), FASHION_MNIST_CLASSES)
    write_image_folder(images[300:400], root / "test", labels[300:400].tolist(), FASHION_MNIST_CLASSES)
    return root, images[:400], labels[:400]


def test_image_folder_and_csv_return_the_right_images_and_labels(fm_folder, tmp_path):
    root, images, labels = fm_folder
    source = labeled.image_folder(root / "train", FM, workers=2)
    names = sorted(map(safe_name, FASHION_MNIST_CLASSES))
    assert source.classes == names  # sorted sub-folder names, as torchvision's ImageFolder
    got = {bytes(x.numpy()): source.classes[int(y)] for _, xs, ys in source.in_order(64) for x, y in zip(xs, ys)}
    want = {bytes(x.numpy()): safe_name(FASHION_MNIST_CLASSES[int(y)]) for x, y in zip(images[:300], labels[:300])}
    assert got == want and len(got) > 250  # every image with its own label (a few Fashion-MNIST duplicates)
    rows = [("path", "class")] + [(str(p.relative_to(root / "train")), p.parent.name)
                                  for p in sorted((root / "train").rglob("*.png"))]
    (root / "train" / "labels.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    table = labeled.csv_file(root / "train" / "labels.csv", FM, path_column="path", label_column="class")
    assert table.classes == names and len(table) == 300
    in_csv = {bytes(x.numpy()): table.classes[int(y)] for _, xs, ys in table.in_order(64) for x, y in zip(xs, ys)}
    assert in_csv == got
    with pytest.raises(DataError, match="no column 'label'"):
        labeled.csv_file(root / "train" / "labels.csv", FM)
    true_label = {bytes(x.numpy()): int(y) for x, y in zip(images[:300], labels[:300])}
    _, xs, ys = next(source.relabeled(FASHION_MNIST_CLASSES).in_order(300))  # into a model's class order
    assert [true_label[bytes(x.numpy())] for x in xs] == ys.tolist()


def test_stratified_split_keeps_every_class(fm_folder):
    source = labeled.image_folder(fm_folder[0] / "train", FM)
    rest, held = source.split(0.2, seed=3)
    assert len(rest) + len(held) == 300 and abs(len(held) - 60) <= 5
    assert set(held.labels.tolist()) == set(range(10))
    assert not set(map(bytes, rest.paths)) & set(map(bytes, held.paths))
    again = source.split(0.2, seed=3)[1]
    assert list(map(bytes, again.paths)) == list(map(bytes, held.paths))  # seeded


def test_teacher_trains_from_a_labeled_folder_and_teacher_eval_reports_its_accuracy(fm_folder, tmp_path, capsys):
    root, _, _ = fm_folder
    out = tmp_path / "T.pt"
    assert main(["teacher", "train", "--model", "lenet5", "--epochs", "1", "--batch-size", "32", "--lr", "0.05",
                 "--data", str(root / "train"), "--val-fraction", "0.2", "--workers", "0", "--out", str(out),
                 "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_samples"] == 240 and "20% held out" in summary["evaluated_on"]
    record = load_model(out, kind="teacher")
    assert record.class_names == sorted(map(safe_name, FASHION_MNIST_CLASSES))
    assert record.preprocess.to_dict()["channel_mode"] == "grey"
    assert record.preprocess.mean != FASHION_MNIST_SPEC.mean  # measured on the training folder
    assert main(["teacher", "eval", "--checkpoint", str(out), "--data", str(root / "test"), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 100 and result["bad_files"] == 0 and 0 <= result["test_accuracy"] <= 1
    teacher = Teacher.load(out)
    x, y = labeled_folder(root / "test", record.preprocess, record.class_names)
    expected = float((teacher.targets(x)[1].argmax(1) == y).float().mean())
    assert result["test_accuracy"] == pytest.approx(expected)


def test_elpv_split_is_stratified_and_readable_as_labeled_sources(tmp_path):
    record = prepare_elpv(tmp_path / "elpv", seed=0, limit=200)  # installs elpv-dataset when missing
    assert abs(record["images"] - 200) <= 4 and prepare_elpv(tmp_path / "elpv", seed=0, limit=200) == record
    with pytest.raises(DataError, match="other settings"):
        prepare_elpv(tmp_path / "elpv", seed=1, limit=200)
    cloud = labeled.image_folder(tmp_path / "elpv" / "cloud", Preprocess(1, 64, 64, (0.5,), (0.25,)))
    assert cloud.classes == list(ELPV_CLASSES) and cloud.class_counts() == record["counts"]["cloud"]
    _, images, labels = next(cloud.in_order(8))
    assert images.shape == (8, 1, 64, 64) and float(images.float().std()) > 5  # real 300x300 cells, resized
    edge = UnlabeledImageFolder(tmp_path / "elpv" / "edge", Preprocess(1, 64, 64, (0.5,), (0.25,)))
    assert len(edge) == sum(record["counts"]["edge"].values())
    assert not any(p.is_dir() for p in (tmp_path / "elpv" / "edge").iterdir())  # no class names on the edge
    table = labeled.csv_file(tmp_path / "elpv" / "edge_labels.csv", Preprocess(1, 64, 64, (0.5,), (0.25,)))
    assert len(table) == len(edge)


def test_labels_of_a_labeled_folder_never_reach_edge_training(fm_folder, tmp_path):
    """The same image files with right and with wrong labels (class folders renamed in the same
    sort order, a labels.csv shuffled) train the same student, bit for bit; and the edge's image
    source refuses a labeled source outright."""
    root, _, _ = fm_folder
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    shutil.copytree(root / "train", right)
    for rank, folder in enumerate(sorted(p for p in right.iterdir() if p.is_dir())):
        shutil.copytree(folder, wrong / f"{rank:02d}_{'Sneaker' if rank % 2 else 'Coat'}")
    rows = ["path,label"] + [f"{p.relative_to(right)},{p.parent.name}" for p in sorted(right.rglob("*.png"))]
    (right / "labels.csv").write_text("\n".join(rows) + "\n")
    shuffled = [rows[0]] + [f"{r.split(',')[0]},{FASHION_MNIST_CLASSES[i % 10]}" for i, r in enumerate(rows[1:])]
    (wrong / "labels.csv").write_text("\n".join(shuffled) + "\n")
    teacher = LocalTeacher(Teacher.load(make_teacher(tmp_path / "T.pt")))
    config = load_config(None, ["train.batch_size=32", "train.max_steps=6", "train.checkpoint_every=0"])
    trained = []
    for folder in (right, wrong):
        model, _ = load_student(make_student(tmp_path / f"S-{folder.name}.pt"))
        data = ImageSource.open(str(folder), FASHION_MNIST_SPEC, config=config.data)
        assert data.stats()["other_files"] == 1  # labels.csv is counted, never read
        GuidedTrainer(model, FASHION_MNIST_SPEC, data, teacher, train=config.train, objective=config.objective,
                      teacher_version=teacher.version, progress=False).run()
        trained.append(model.state_dict())
    for key in trained[0]:
        assert torch.equal(trained[0][key], trained[1][key]), key
    with pytest.raises(TypeError, match="labeled data never reaches edge training"):
        ImageSource(labeled.image_folder(right, FM), FASHION_MNIST_SPEC, "labeled")
    _, indices, images = next(ImageSource.open(str(right), FASHION_MNIST_SPEC).stream([[0, 1, 2]]))
    assert images.dtype == torch.uint8 and indices.tolist() == [0, 1, 2]  # pixels and positions, nothing else


def test_target_cache_is_on_disk_and_survives_a_reopen(tmp_path):
    cache = TargetCache(tmp_path, "v1")
    keys = [i.to_bytes(2, "big") * 8 for i in range(300)]
    features, logits = torch.randn(300, 84), torch.randn(300, 10)
    cache.add(keys, features, logits)
    cache.save()
    again = TargetCache(tmp_path, "v1")
    assert len(again) == 300 and again.feature_dim == 84 and keys[7] in again.rows
    f, z = again.lookup(keys[10:20])
    assert torch.equal(f, features[10:20].half().float()) and torch.equal(z, logits[10:20].half().float())
    assert again.lookup([b"x" * 16]) is None and again.missing([keys[0], b"y" * 16, None]) == [1]
    assert (tmp_path / "v1.sqlite").stat().st_size > 300 * (84 + 10) * 2  # the targets are in the file
    (tmp_path / "v2.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match="unreadable.*delete it to rebuild"):
        TargetCache(tmp_path, "v2")


def test_preprocessing_round_trips_through_model_file_and_sidecar(tmp_path):
    from lnpt.edge.onnx.pipeline import input_description
    from lnpt.shared.model_file import save_model
    from lnpt.shared.models import build_model

    preprocess = Preprocess(3, 96, 128, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2), resize=0, fit="pad", interpolation="bicubic")
    spec = preprocess.input_spec
    save_model(tmp_path / "m.pt", build_model("lenet5", 3, spec), kind="teacher", input_spec=spec,
               class_names=["a", "b", "c"], preprocess=preprocess)
    record = load_model(tmp_path / "m.pt")
    assert record.preprocess == preprocess
    described = input_description(spec, record.preprocess)["preprocess"]
    assert Preprocess.from_dict(json.loads(json.dumps(described))) == preprocess
    assert described["fit"] == "pad" and described["interpolation"] == "bicubic" and described["height"] == 96
