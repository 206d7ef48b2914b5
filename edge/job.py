"""`run_edge_job()`: one edge device's whole LNPT job, safe to start again after any stop.

    1. prune once    -> WORK/student.pt           (kept when it exists)
    2. train         -> WORK/student-trained.pt   (resumed from WORK/train.ckpt when a run was cut short;
                                                   kept when training finished)
    3. export once   -> WORK/student.onnx         (kept when it exists; then only verified)

Every file is written atomically, so a crash or power cut at any moment leaves either the previous
state or the next one; running the job again continues from there. A finished job run again only
verifies its files. `lnpt edge run`, the systemd unit, the containers and `lnpt demo` all run this.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lnpt.edge.onnx.pipeline import ExportResult, export, sidecar_path
from lnpt.edge.pruning.prune import PruneResult, prune
from lnpt.edge.student import Student
from lnpt.edge.teachers import TargetSource, opened_teacher
from lnpt.edge.training.train import train
from lnpt.edge.training.trainer import TrainResult
from lnpt.shared.config import Config
from lnpt.shared.errors import LnptError


class EdgeJobError(LnptError, RuntimeError):
    """A file the job left behind is not what the job would have written."""


@dataclass
class EdgeJobResult:
    """What the job did: each stage is "done" (ran now), "resumed", "kept" (from an earlier run) or
    "skipped" (export off); the stage results are None for stages that did not run now."""

    work: Path
    student: Path
    trained: Path
    onnx: Path | None
    stages: dict[str, str] = field(default_factory=dict)
    prune: PruneResult | None = None
    train: TrainResult | None = None
    export: ExportResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"work": str(self.work), "student": str(self.student), "trained": str(self.trained),
                "onnx": str(self.onnx) if self.onnx else None, "stages": self.stages,
                "sparsity": self.prune.sparsity if self.prune else None,
                "train": self.train.to_dict() if self.train else None,
                "export": {k: v for k, v in self.export.details.items() if k in ("output", "sizes", "max_abs_diff")}
                if self.export else None}


def job_paths(work: Path) -> dict[str, Path]:
    return {"student": work / "student.pt", "trained": work / "student-trained.pt",
            "checkpoint": work / "train.ckpt", "onnx": work / "student.onnx"}


def run_edge_job(config: Config | None = None, *, work: str | os.PathLike | None = None,
                 teacher: TargetSource | str | None = None, data: str | os.PathLike | None = None,
                 export_onnx: bool | None = None, progress: bool = False,
                 log: Callable[[str], None] = lambda line: None,
                 train_log: Callable[[dict], None] | None = None) -> EdgeJobResult:
    """Prune once, train (resuming a cut-short run), export once; idempotent.

    `config` gives [job] (work folder, data, teacher, export) and every stage's settings; the keyword
    arguments override [job]. `teacher` may also be an open target source shared by all stages.
    `log` receives one line per stage decision.

        >>> from lnpt.edge import run_edge_job
        >>> result = run_edge_job(work="job/", teacher="10.0.0.5:50051", data="photos/")  # doctest: +SKIP
        >>> result.stages                                                                  # doctest: +SKIP
        {'prune': 'done', 'train': 'done', 'export': 'done'}
    """
    config = config or Config()
    job = config.job
    work = Path(work if work is not None else job.work)
    data = data if data is not None else (job.data or None)
    teacher = teacher if teacher is not None else (job.teacher or None)
    export_onnx = job.export if export_onnx is None else export_onnx
    paths = job_paths(work)
    work.mkdir(parents=True, exist_ok=True)
    result = EdgeJobResult(work, paths["student"], paths["trained"], paths["onnx"] if export_onnx else None)

    needs_network = not (paths["student"].exists() and paths["trained"].exists())
    with opened_teacher(teacher if needs_network else False, config.client) as source:
        if paths["student"].exists():
            result.stages["prune"] = "kept"
            log(f"prune: keeping {paths['student']}")
        else:
            log(f"prune: {config.prune.score} score to sparsity {config.prune.sparsity}")
            result.prune = prune(None, source, data, config=config, out=paths["student"], progress=progress)
            result.stages["prune"] = "done"
        if paths["trained"].exists():
            result.stages["train"] = "kept"
            log(f"train: keeping {paths['trained']} (training finished earlier)")
        else:
            resume = paths["checkpoint"].exists()
            log(f"train: {'resuming from ' + str(paths['checkpoint']) if resume else 'starting'}")
            result.train = train(paths["student"], source, data, config=config, out=paths["trained"],
                                 checkpoint=paths["checkpoint"], resume=resume, progress=progress, log=train_log)
            result.stages["train"] = "resumed" if resume else "done"
    if not export_onnx:
        result.stages["export"] = "skipped"
    elif paths["onnx"].exists():
        verify_export(paths["onnx"], paths["trained"])
        result.stages["export"] = "kept"
        log(f"export: {paths['onnx']} exists and verifies")
    else:
        log(f"export: {paths['onnx']}")
        options = {"samples": str(data)} if data and not config.export.samples else {}
        result.export = export(paths["trained"], paths["onnx"], config=config, progress=log, **options)
        result.stages["export"] = "done"
    return result


def verify_export(onnx_path: Path, trained: Path) -> None:
    """An ONNX file from an earlier run must load in ONNX Runtime and come from this trained student."""
    import json

    import onnxruntime

    sidecar = sidecar_path(onnx_path)
    if not sidecar.exists():
        raise EdgeJobError(f"{onnx_path} has no sidecar {sidecar}: not written by this job; move it away")
    recorded = json.loads(sidecar.read_text()).get("student_version")
    version = Student.load(trained).version
    if recorded != version:
        raise EdgeJobError(f"{onnx_path} was exported from student version {recorded}, but {trained} is "
                           f"version {version}; delete {onnx_path} to export again")
    try:
        onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise EdgeJobError(f"{onnx_path} does not load in ONNX Runtime ({exc}); delete it to export again") from exc
