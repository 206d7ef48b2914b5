"""`lnpt analyze objective` on the tiny profile (real Fashion-MNIST, a briefly trained real teacher):
every stage runs from the best so far, the validation split is class-balanced and disjoint from the
training images, a re-run trains nothing, and the winners are the best finished candidates."""
from __future__ import annotations

import json

import torch

from lnpt.shared.cli import main


def study(capsys, out, teacher, arms):
    code = main(["analyze", "objective", "--profile", "tiny", "--arms", arms, "--out", str(out),
                 "--teacher", str(teacher), "--threads", "1", "--format", "json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_study_runs_every_stage_from_the_best_and_resumes(tmp_path, tiny_teacher, capsys):
    from lnpt.lab.paper.objective_study import SPARSITIES

    out = tmp_path / "study"
    code, result, err = study(capsys, out, tiny_teacher, "guided,supervised@0.1")
    assert code == 0, err
    runs = result["runs"]
    guided = [r for r in runs if r["arm"] == "guided"]
    assert len({(r["rounds"], json.dumps(r["settings"], sort_keys=True)) for r in guided}) == len(guided)
    terms = {(r["settings"]["objective"]["lambda_gap"], r["settings"]["objective"]["lambda_kd"]) for r in guided}
    assert terms >= {(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)}
    chosen = result["chosen"]
    assert set(chosen) == {"guided", "supervised@0.1"}
    # The gap's kind and projector are studied exactly when the chosen terms keep the gap.
    projectors = {r["settings"]["objective"]["projector"] for r in guided}
    assert projectors == ({"learned", "fixed"} if chosen["guided"]["objective"]["lambda_gap"] else {"learned"})
    for record in runs:
        assert set(record["validation_accuracy"]) == {f"{s:g}" for s in SPARSITIES}
        assert 0.0 <= record["mean"] <= 1.0
    # The last stage (epochs) compares the profile's own epochs (1) with 5 and 10 at the chosen rest;
    # the winner is the best of them.
    last = [r for r in guided if {**r["settings"], "epochs": 0} == {**chosen["guided"], "epochs": 0} and not r["rounds"]
            and r["settings"]["epochs"] in (1, 5, 10)]
    assert {r["settings"]["epochs"] for r in last} == {1, 5, 10}
    assert next(r for r in last if r["settings"] == chosen["guided"])["mean"] == max(r["mean"] for r in last)
    # The progressive score's rounds, at the guided winner, against one-shot LNPT (1 round).
    rounds = {r["rounds"]: r for r in guided if r["rounds"]}
    assert set(rounds) == {3, 10, 30} and all(r["settings"] == chosen["guided"] for r in rounds.values())
    one_shot = next(r for r in guided if r["settings"] == chosen["guided"] and r["rounds"] is None)
    means = {1: one_shot["mean"], **{k: r["mean"] for k, r in rounds.items()}}
    assert means[result["progressive_rounds"]] == max(means.values())
    scarce = [r for r in runs if r["arm"] == "supervised@0.1"]
    assert {r["settings"]["epochs"] for r in scarce} == {1, 5}
    assert "objective" not in chosen["supervised@0.1"]
    table = (out / "study.md").read_text()
    assert "| guided | terms |" in table and "| 30 |" in table and "| supervised@0.1 | length |" in table and "**" in table
    # Resume: a second run trains nothing new and chooses the same.
    code, again, err = study(capsys, out, tiny_teacher, "guided,supervised@0.1")
    assert code == 0 and again["chosen"] == chosen and len(again["runs"]) == len(runs)
    assert "validation" not in err.replace("validation images", "")  # no candidate line: nothing trained


def test_validation_split_is_balanced_and_disjoint():
    from lnpt.lab.paper.experiment import labeled_subset
    from lnpt.shared.data import load_fashion_mnist

    _, labels = load_fashion_mnist(True)
    held_out = labeled_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[held_out], minlength=10)
    assert counts.tolist() == [600] * 10 and len(set(held_out.tolist())) == 6000
    assert torch.equal(held_out, labeled_subset(labels, 0.1, seed=0))
    assert not torch.equal(held_out, labeled_subset(labels, 0.1, seed=1))


def test_bad_arm_is_named(tmp_path, tiny_teacher, capsys):
    code, _, err = study(capsys, tmp_path / "s", tiny_teacher, "guided,oracle")
    assert code == 2 and "oracle" in err


def test_the_product_default_objective_is_the_studys_winner_and_the_study_starts_from_the_old_one():
    """[objective]'s defaults are what the committed study chose for the guided arm; the study itself
    starts from the objective before it, so re-running it retraces the recorded path."""
    from dataclasses import asdict

    from lnpt.lab.paper.objective_study import base_settings
    from lnpt.lab.paper.profiles import ARMS_STANDARD, OBJECTIVE_BEFORE_STUDY, PROFILES
    from lnpt.shared.config import ObjectiveConfig

    assert asdict(ObjectiveConfig()) == ARMS_STANDARD["guided"]["objective"]
    assert base_settings(PROFILES["standard"], "guided")["objective"] == OBJECTIVE_BEFORE_STUDY
    assert "objective" not in base_settings(PROFILES["standard"], "supervised")
