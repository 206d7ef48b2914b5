"""`lnpt prune` end to end: local teacher file, a real guidance server on loopback, image folders."""
from __future__ import annotations

import json

import pytest
import torch
from support.servers import make_teacher, running_server

from lnpt.edge.student import load_student, prunable_modules, sparsity
from lnpt.shared.model_file import load_model
from lnpt.shared.cli import main
from lnpt.shared.data import write_image_folder


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", arch="resnet20")


def prune(capsys, *args: str) -> tuple[int, dict | str]:
    code = main(["prune", "--samples", "40", "--batch-size", "16", *args])
    captured = capsys.readouterr()
    if code != 0:
        return code, captured.err
    return code, json.loads(captured.out) if "--format" in args else captured.out


def test_prune_with_local_teacher_writes_student_report_and_chart(capsys, tmp_path, teacher_path):
    out = tmp_path / "student.pt"
    code, report = prune(capsys, "--model", "resnet20", "--score", "lnpt", "--sparsity", "0.95",
                         "--teacher", str(teacher_path), "--out", str(out), "--format", "json")
    assert code == 0
    model, record = load_student(out)
    assert report["sparsity"] == pytest.approx(0.95, abs=1e-5)
    assert report["sparsity"] == pytest.approx(sparsity(model), abs=1e-9)
    assert set(report["density_per_layer"]) == set(prunable_modules(model))
    assert record.extra["teacher_version"] == load_model(teacher_path).version == report["teacher_version"]
    assert record.extra["prune"]["score"] == "lnpt" and record.extra["masks"]
    assert json.loads(out.with_suffix(".prune.json").read_text())["sparsity"] == report["sparsity"]
    assert out.with_suffix(".prune.png").read_bytes()[:4] == b"\x89PNG"


def test_pruning_through_a_real_server_equals_pruning_with_the_local_teacher(capsys, tmp_path, teacher_path):
    students = {}
    with running_server(teacher_path) as server:
        for name, teacher in (("remote", server.address), ("local", str(teacher_path))):
            code, report = prune(capsys, "--model", "lenet5", "--sparsity", "0.95", "--teacher", teacher,
                                 "--insecure", "--set", 'client.target_wire="float32"',
                                 "--out", str(tmp_path / f"{name}.pt"), "--format", "json")
            assert code == 0, report
            students[name] = load_student(tmp_path / f"{name}.pt")
    (remote, remote_record), (local, local_record) = students["remote"], students["local"]
    assert remote_record.extra["teacher_version"] == local_record.extra["teacher_version"] != ""
    for key, value in local.state_dict().items():
        assert torch.equal(remote.state_dict()[key], value), key


def test_prune_an_unlabeled_folder_with_channel_pruning(capsys, tmp_path, teacher_path, fashion_train):
    images, labels = fashion_train
    folder = write_image_folder(images[:30], tmp_path / "photos", labels[:30].tolist())  # class folders
    out = tmp_path / "s.pt"
    code, report = prune(capsys, "--sparsity", "0.8", "--structured", "0.5", "--data", str(folder),
                         "--teacher", str(teacher_path), "--out", str(out), "--format", "json")
    assert code == 0, report
    assert report["samples"] == 30 and report["model"] == "resnet20"  # all 30 images; the teacher's arch
    assert report["structured"]["macs_after"] < report["structured"]["macs_before"]
    model, record = load_student(out)
    assert record.extra["structured"] and model.feature_dim == 64
    assert sparsity(model) == pytest.approx(report["sparsity"])


def test_supervised_baseline_and_data_free_scores_need_no_teacher(capsys, tmp_path):
    code, text = prune(capsys, "--model", "lenet5", "--score", "snip", "--sparsity", "0.9",
                       "--out", str(tmp_path / "snip.pt"))
    assert code == 0 and "score snip" in text and "sparsity 0.9000" in text
    code, report = prune(capsys, "--model", "lenet5", "--score", "synflow", "--synflow-rounds", "3",
                         "--sparsity", "0.9", "--out", str(tmp_path / "syn.pt"), "--format", "json")
    assert code == 0 and report["rounds"] == 3 and report["samples"] == 0


def test_bad_requests_fail_with_one_clear_line(capsys, tmp_path, teacher_path, fashion_train):
    folder = write_image_folder(fashion_train[0][:4], tmp_path / "f")
    code, err = prune(capsys, "--model", "lenet5", "--score", "snip", "--data", str(folder), "--sparsity", "0.9",
                      "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "cross-entropy needs labels" in err
    code, err = prune(capsys, "--score", "lnpt", "--objective", "cross-entropy", "--teacher", str(teacher_path),
                      "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "--score snip" in err
    code, err = prune(capsys, "--sparsity", "1.5", "--teacher", str(teacher_path), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "prune.sparsity" in err
    code, err = prune(capsys, "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "neither an existing teacher file nor a server address" in err
    assert not (tmp_path / "x.pt").exists()


def test_prune_benchmark_prints_the_ratios_as_json(capsys):
    code = main(["bench", "prune", "--model", "lenet5", "--samples", "20", "--repeats", "1",
                 "--synflow-rounds", "2", "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("lnpt_over_snip", "lnpt_score_only_over_snip", "synflow_over_snip"):
        assert result[key] > 0
