"""`lnpt demo`: the whole LNPT job end to end on one machine, on real Fashion-MNIST (the default) or
on the ELPV solar-cell images (`--dataset elpv`).

Stages (each shows progress; a finished stage is reused on the next run unless --fresh):
  1. teacher   train a mature teacher with labels (the cloud's job)
  2. tls       make a test CA, server/client certificates and a bearer token
  3. images    write the training images as an unlabeled folder of PNG files (the edge's data)
  4. job       start `lnpt serve` as a separate process on loopback with TLS and the token, then the
               edge job exactly as a device runs it (`lnpt.edge.run_edge_job`, `lnpt edge run`): a fresh
               student pruned with the LNPT score through the server, label-free guided training
               against the streamed targets, a sparse ONNX file verified in ONNX Runtime
  5. evaluate  accuracy on the real test set (labels read only here), learning gap before/after
  6. shutdown  SIGTERM to the server: it drains and must exit with code 0
  7. export    the dense ONNX file beside the sparse one; accuracy and latency of both measured
  8. report    print the summary, write report.md with the training curves and density chart

With --dataset elpv (2,624 real 300 x 300 grey electroluminescence images of solar cells, four
defect classes; installed from PyPI with `pip install --no-deps elpv-dataset`, CC BY-NC-SA 4.0):
  images (first) the seeded stratified split: labeled cloud set, unlabeled edge set, held-out test
                 set (lnpt.shared.elpv.prepare_elpv, as `lnpt data prepare elpv`)
  teacher        torchvision:resnet18 trained with the cloud set's labels, 15 % of it held out for
                 validation; its accuracy on the held-out test set is measured too
  job, evaluate  as above, on the unlabeled edge folder; evaluated on the held-out test folder
  supervised     the same pruned student trained with the edge set's labels, for comparison
                 (lnpt.lab.supervised.train_supervised, as docs/recipes/elpv.sh does)
  export         verified on edge images (no labels); sizes and latency
The ELPV defaults finish in about half an hour on 2 CPU cores (docs/RESULTS.md, section ELPV).
Every number in the summary and report comes from the library calls of this run.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from lnpt.shared.cli import add_format_option, emit
from lnpt.shared.errors import LnptError

STAGES = ("teacher", "tls", "images", "job", "evaluate", "shutdown", "export", "report")
ELPV_STAGES = ("images", "teacher", "tls", "job", "evaluate", "shutdown", "supervised", "export", "report")
DATASETS = ("fashion-mnist", "elpv")
MARKER = ".lnpt-demo"  # only a folder holding this marker is ever deleted by --fresh
FASHION_FIELDS = ("teacher_images", "train_images", "test_images")  # counts of Fashion-MNIST images
ELPV_FIELDS = ("dataset", "size", "elpv_images")  # not in Fashion-MNIST's key, so its earlier runs are reused
# ELPV's teacher recipe (docs/recipes/elpv.sh): SGD 0.02 in batches of 64 suits a resnet18 from random
# initialisation on ~900 images; 15 % of the cloud set, stratified, is the validation split.
ELPV_TEACHER = {"batch_size": 64, "lr": 0.02}
ELPV_VAL_FRACTION = 0.15


@dataclass
class DemoSettings:
    """What one demo run does. `for_dataset` gives each data set's defaults; fields that do not apply
    to the chosen data set (FASHION_FIELDS, ELPV_FIELDS) must keep their defaults."""

    out: Path = Path("runs/demo")
    teacher_model: str = "lenet5"
    teacher_epochs: int = 15
    teacher_images: int = 0
    student_model: str = "lenet5"
    sparsity: float = 0.9
    train_images: int = 60000
    epochs: int = 8
    test_images: int = 10000
    threads: int = 2
    dataset: str = "fashion-mnist"  # or "elpv"
    size: int = 0  # ELPV: input side in pixels (the images are 300 x 300)
    elpv_images: int = 0  # ELPV: a seeded stratified subset of this many images before the split; 0 = all 2,624

    @classmethod
    def for_dataset(cls, dataset: str = "fashion-mnist", **overrides: Any) -> "DemoSettings":
        """The defaults of `dataset` with `overrides` (field name -> value; None = the default)."""
        if dataset not in DATASETS:
            raise DemoError(f"unknown demo dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        # ELPV, measured on the shared 2-core machine (load ~4): a resnet18 epoch on the 892 training
        # images took 43-60 s at 64 px and 125 s at 96 px. At 64 px, 10 epochs reached 65.0 % on the
        # validation split (its majority class: 57.3 %) and leave room for the student in ~30 minutes;
        # 96 px would spend ~21 of them on the teacher alone.
        defaults = {} if dataset == "fashion-mnist" else dict(
            out=Path("runs/demo-elpv"), teacher_model="torchvision:resnet18", teacher_epochs=10,
            student_model="torchvision:mobilenet_v3_small", sparsity=0.5, epochs=6,
            train_images=0, test_images=0, size=64)
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**defaults, **given, "dataset": dataset})

    def __post_init__(self) -> None:
        default = DemoSettings.__dataclass_fields__
        if self.dataset not in DATASETS:
            raise DemoError(f"unknown demo dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.dataset == "fashion-mnist":
            unused = [k for k in ELPV_FIELDS if getattr(self, k) != default[k].default]
        else:
            unused = [k for k in FASHION_FIELDS if getattr(self, k) != 0]
            if self.size < 8:
                raise DemoError(f"--size {self.size}: the ELPV demo needs an input side of at least 8 px")
        if unused:
            flag = "--" + unused[0].replace("_", "-")
            raise DemoError(f"{flag} does not apply to --dataset {self.dataset}: it would be ignored")

    def key(self) -> dict[str, Any]:
        """What the stages' results depend on; a change invalidates reused results."""
        unused = ("out", "threads") + (ELPV_FIELDS if self.dataset == "fashion-mnist" else ())
        return {k: v for k, v in asdict(self).items() if k not in unused}


def register(sub: argparse._SubParsersAction) -> None:
    defaults, elpv = DemoSettings(), DemoSettings.for_dataset("elpv")

    def both(field: str) -> str:
        return f"(default {getattr(defaults, field)}; ELPV {getattr(elpv, field)})"

    parser = sub.add_parser(
        "demo", help="run the whole LNPT job end to end on real Fashion-MNIST or ELPV images (no flags needed)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                        help="fashion-mnist (default) or elpv: solar-cell images, installed with pip --no-deps")
    parser.add_argument("--out", type=Path, help=f"output folder {both('out')}")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing earlier stages")
    parser.add_argument("--teacher-model", help=f"teacher architecture {both('teacher_model')}")
    parser.add_argument("--teacher-epochs", type=int, help=f"teacher training epochs {both('teacher_epochs')}")
    parser.add_argument("--teacher-images", type=int,
                        help="Fashion-MNIST: labeled training images for the teacher (default 0 = all 60000)")
    parser.add_argument("--student-model", help=f"student architecture {both('student_model')}")
    parser.add_argument("--sparsity", type=float, help=f"fraction of weights pruned {both('sparsity')}")
    parser.add_argument("--train-images", type=int,
                        help=f"Fashion-MNIST: training images written to the unlabeled folder "
                             f"(default {defaults.train_images}; 0 = all 60000)")
    parser.add_argument("--epochs", type=int, help=f"guided training epochs {both('epochs')}")
    parser.add_argument("--test-images", type=int,
                        help=f"Fashion-MNIST: test images for evaluation (default {defaults.test_images}; 0 = all)")
    parser.add_argument("--size", type=int, help=f"ELPV: input side in pixels (default {elpv.size})")
    parser.add_argument("--elpv-images", type=int,
                        help="ELPV: a seeded stratified subset of this many images before the split (default 0 = all)")
    parser.add_argument("--threads", type=int, help=f"torch threads on the edge side (default {defaults.threads})")
    add_format_option(parser)
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    fields = [f for f in DemoSettings.__dataclass_fields__ if f != "dataset"]
    settings = DemoSettings.for_dataset(args.dataset, **{f: getattr(args, f) for f in fields})
    summary = Demo(settings, fresh=args.fresh).run()
    emit(args, summary, format_summary(summary["rows"]))
    return 0


class Demo:
    def __init__(self, settings: DemoSettings, fresh: bool = False, log: Callable[[str], None] | None = None):
        self.s = settings
        self.out = Path(settings.out)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        if fresh and (self.out / MARKER).exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).touch()
        self.results: dict[str, Any] = {}
        self.server = None
        self.elpv = settings.dataset == "elpv"
        self.stages = ELPV_STAGES if self.elpv else STAGES

    # --- paths -------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.out / name

    # --- stage bookkeeping -------------------------------------------------------------------

    def stage_done(self, name: str) -> bool:
        """True when an earlier run finished this stage with the same settings."""
        record_path = self.path(f"stages/{name}.json")
        return record_path.exists() and json.loads(record_path.read_text()).get("settings") == self.s.key()

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Run a stage once; its result dict is saved (atomically) and reused next time."""
        from lnpt.shared.files import atomic_write

        number = self.stages.index(name) + 1
        record_path = self.path(f"stages/{name}.json")
        if self.stage_done(name):
            self.results[name] = json.loads(record_path.read_text())["result"]
            self.log(f"[{number}/{len(self.stages)}] {name}: reusing the result in {record_path}")
            yield None  # type: ignore[misc]
            return
        self.log(f"[{number}/{len(self.stages)}] {name} ...")
        started = time.perf_counter()
        result: dict[str, Any] = {}
        yield result
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.results[name] = result
        text = json.dumps({"settings": self.s.key(), "result": result}, indent=2, default=str)
        atomic_write(record_path, lambda f: f.write(text.encode()))
        self.log(f"[{number}/{len(self.stages)}] {name} done in {result['seconds']} s")

    # --- the job -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import torch

        from lnpt.shared.data import prepare_fashion_mnist

        torch.set_num_threads(self.s.threads)
        started = time.perf_counter()
        if self.elpv:
            self.split_elpv()  # the teacher trains on the split's labeled cloud set
        else:
            prepare_fashion_mnist()
        self.train_teacher()
        self.make_tls()
        if not self.elpv:
            self.write_images()
        try:
            self.edge_job()
            self.evaluate()
        finally:
            self.stop_server()
        if self.elpv:
            self.train_supervised()
        self.export()
        summary = self.report(time.perf_counter() - started)
        return summary

    def train_teacher(self) -> None:
        with self.stage("teacher") as result:
            if result is None:
                return
            from lnpt.cloud import evaluate_checkpoint, train_teacher
            from lnpt.shared.config import Config, updated

            config = updated(Config(), "teacher", model=self.s.teacher_model, epochs=self.s.teacher_epochs,
                             train_samples=self.s.teacher_images)
            labeled = {}
            if self.elpv:
                config = updated(config, "teacher", **ELPV_TEACHER)
                config = updated(config, "data", channels=1, size=self.s.size)
                labeled = {"data": self.results["images"]["cloud"], "val_fraction": ELPV_VAL_FRACTION}
            # The stage record decides what is redone: an unrecorded teacher file is a leftover.
            trained = train_teacher(config, str(self.path("teacher.pt")), device="cpu", overwrite=True, **labeled)
            result.update(path=trained["path"], arch=trained["arch"], version=trained["version"],
                          test_accuracy=trained["test_accuracy"], history=trained["history"])
            if self.elpv:  # validated on the held-out part of the cloud set; the test folder is measured once, here
                tested = evaluate_checkpoint(trained["path"], data=self.results["images"]["test"], config=config.data)
                val = trained["val_data"]
                result.update(val_accuracy=trained["test_accuracy"], val_samples=val["images"],
                              train_samples=trained["train_samples"], test_accuracy=tested["test_accuracy"],
                              test_samples=tested["samples"], preprocess=trained["preprocess"],
                              bad_files=trained["data"]["bad_files"] + val["bad_files"] + tested["bad_files"])

    def make_tls(self) -> None:
        with self.stage("tls") as result:
            if result is None:
                return
            from lnpt.cloud.certs import generate_test_pki
            from lnpt.shared.files import atomic_write

            pki = generate_test_pki(self.path("tls"))
            token = secrets.token_urlsafe(32)
            tokens = self.path("tls/tokens.txt")
            atomic_write(tokens, lambda f: f.write(f"{token}\n".encode()))
            atomic_write(self.path("tls/token"), lambda f: f.write(token.encode()))
            for secret in (tokens, self.path("tls/token")):
                secret.chmod(0o600)
            result.update(ca=str(pki.ca_cert), cert=str(pki.server_cert), key=str(pki.server_key),
                          tokens_file=str(tokens), token_file=str(self.path("tls/token")))

    def write_images(self) -> None:
        with self.stage("images") as result:
            if result is None:
                return
            from lnpt.shared.data import load_fashion_mnist, write_image_folder

            folder = self.path("unlabeled")
            shutil.rmtree(folder, ignore_errors=True)
            images, _ = load_fashion_mnist(train=True)  # the labels stay here: the edge gets pixels only
            images = images[: self.s.train_images or len(images)]
            write_image_folder(images, folder, progress=True)
            result.update(folder=str(folder), count=len(images))

    def split_elpv(self) -> None:
        with self.stage("images") as result:
            if result is None:
                return
            from lnpt.shared.elpv import prepare_elpv

            split = prepare_elpv(self.path("elpv"), seed=0, limit=self.s.elpv_images)  # installs ELPV when missing
            edge = self.path("elpv/edge")
            result.update(folder=str(edge), count=sum(split["counts"]["edge"].values()), counts=split["counts"],
                          cloud=str(self.path("elpv/cloud")), test=str(self.path("elpv/test")),
                          edge_labels=str(self.path("elpv/edge_labels.csv")), licence=split["licence"])

    def start_server(self) -> str:
        """Start the TLS + token server once, as a separate `lnpt serve` process; returns its address."""
        if self.server is None:
            from lnpt.cloud.process import ServerProcess

            tls = self.results["tls"]
            self.log("  starting `lnpt serve` with TLS and a bearer token on loopback")
            self.server = ServerProcess(self.results["teacher"]["path"], cert=tls["cert"], key=tls["key"],
                                        ca_cert=tls["ca"], tokens_file=tls["tokens_file"],
                                        log_path=self.path("server.log")).start()
            self.log(f"  server SERVING at {self.server.address} (log: {self.path('server.log')})")
        return self.server.address

    def edge_config(self, address: str):
        """The device's settings: TLS + token to the server, and the job, as one validated Config."""
        from lnpt.shared.config import Config, updated

        tls = self.results["tls"]
        config = updated(Config(), "client", addresses=[address], ca_cert=tls["ca"], token_file=tls["token_file"])
        config = updated(config, "model", spec=self.s.student_model)
        config = updated(config, "prune", score="lnpt", sparsity=self.s.sparsity)
        config = updated(config, "train", epochs=self.s.epochs, threads=self.s.threads)
        config = updated(config, "export", format="sparse")
        return updated(config, "job", work=str(self.path("job")), data=self.results["images"]["folder"],
                       teacher=address)

    def stop_server(self) -> None:
        if self.server is None:
            return
        with self.stage("shutdown") as result:
            code = self.server.terminate(timeout=60)
            if result is not None:
                result.update(address=self.server.address, exit_code=code, log=str(self.path("server.log")))
            if code != 0:
                raise DemoError(f"the server did not shut down cleanly (exit code {code}); see {self.path('server.log')}")
        self.server = None

    def edge_job(self) -> None:
        with self.stage("job") as result:
            if result is None:
                return
            from lnpt.edge import evaluate, run_edge_job

            address = self.start_server()
            config = self.edge_config(address)
            curve: dict[str, list] = {"step": [], "loss": [], "gap": []}

            bar = sys.stderr.isatty()  # a progress bar on a terminal, one line per epoch in a log

            def record(event: dict) -> None:
                if event["event"] == "step":
                    for key in curve:
                        curve[key].append(event[key])
                elif event["event"] == "epoch" and not bar:
                    self.log(f"  train: epoch {event['epoch'] + 1}/{self.s.epochs}: loss {event['loss']:.4f} "
                             f"({event['seconds']:.0f} s)")

            job = run_edge_job(config, progress=bar, train_log=record,
                               log=lambda line: self.log(f"  {line}"))
            before = evaluate(job.student, self.test_images(), limit=self.s.test_images, teacher=address,
                              config=config)
            prune, train = job.prune.report, job.train
            result.update(stages=job.stages, student=str(job.student), trained=str(job.trained), onnx=str(job.onnx),
                          sparsity=prune["sparsity"], chart=prune["chart"], density_per_layer=prune["density_per_layer"],
                          score_seconds=prune.get("score_seconds"), before=before.to_dict(), steps=train.steps,
                          seconds_training=train.seconds, target_wait_seconds=train.target_wait_seconds,
                          target_wait_fraction=train.target_wait_fraction, final_loss=train.final_loss,
                          data_stats=train.data_stats, curve=curve)

    def evaluate(self) -> None:
        """Accuracy on the real test set (labels read here only), agreement and learning gap vs the teacher."""
        with self.stage("evaluate") as result:
            if result is None:
                return
            from lnpt.edge import evaluate

            address = self.start_server()
            after = evaluate(self.results["job"]["trained"], self.test_images(), limit=self.s.test_images,
                             teacher=address, config=self.edge_config(address))
            result.update(after.to_dict())

    def test_images(self) -> str | None:
        """The labeled test set: ELPV's held-out test folder, or None for Fashion-MNIST's test set."""
        return self.results["images"]["test"] if self.elpv else None

    def train_supervised(self) -> None:
        """The same pruned student trained with the edge set's labels, for comparison (ELPV)."""
        with self.stage("supervised") as result:
            if result is None:
                return
            from lnpt.lab.supervised import train_supervised
            from lnpt.shared.config import Config

            images = self.results["images"]  # the [train] recipe of the label-free run, with labels instead
            result.update(train_supervised(self.results["job"]["student"], images["edge_labels"], images["test"],
                                           epochs=self.s.epochs, config=Config()))

    def export(self) -> None:
        with self.stage("export") as result:
            if result is None:
                return
            from lnpt.edge import Student, export
            from lnpt.edge.onnx.latency import LatencySettings, side_by_side

            # Fashion-MNIST: accuracy of both files on its test set; ELPV: verified on edge images only
            check = ({"samples": self.results["images"]["folder"]} if self.elpv
                     else {"eval_fashion_mnist": self.s.test_images})
            for storage in ("dense", "sparse"):  # the job's own file is sparse; both here
                out = self.path(f"student-{storage}.onnx")
                exported = export(self.results["job"]["trained"], out, storage=storage, overwrite=True,
                                  progress=lambda line: self.log(f"  {storage}: {line}"), **check)
                result[storage] = {"path": str(out), "bytes": exported.bytes, "gzip_bytes": exported.gzip_bytes,
                                   "max_abs_diff": exported.max_abs_diff, "accuracy": exported.accuracy}
            # Batch 1, one ONNX Runtime thread, both files in interleaved rounds (lnpt.edge.onnx.latency)
            shape = Student.load(self.results["job"]["trained"]).input_spec.shape
            timed = side_by_side({k: result[k]["path"] for k in ("dense", "sparse")}, shape,
                                 LatencySettings(runs=200), rounds=3)
            for storage, latency in timed.items():
                result[storage]["latency_ms_b1"] = latency["median_ms"]

    # --- summary and report ------------------------------------------------------------------

    def report(self, seconds: float) -> dict[str, Any]:
        with self.stage("report") as result:
            if result is None:
                result = self.results["report"]
            else:
                result.update(summary_rows(self.results), training_curve=str(self.path("training.png")))
                plot_training(self.results["job"]["curve"], self.path("training.png"))
                write_report(self.path("report.md"), self.results, result, self.s)
                result["report"] = str(self.path("report.md"))
        self.log(f"report: {result['report']} (total {seconds:.0f} s this run)\n")
        return {"rows": result["rows"], "report": result["report"], "stages": self.results}


class DemoError(LnptError, RuntimeError):
    """A stage of the demo failed; the message names it and where its log is."""


def summary_rows(results: dict[str, Any]) -> dict[str, Any]:
    job, before, after = results["job"], results["job"]["before"], results["evaluate"]
    dense, sparse = results["export"]["dense"], results["export"]["sparse"]
    teacher, supervised = results["teacher"], results.get("supervised")  # supervised: ELPV only
    if supervised is None:
        rows = [("teacher test accuracy", f"{teacher['test_accuracy']:.4f}")]
    else:
        rows = [("teacher validation accuracy (cloud split)", f"{teacher['val_accuracy']:.4f} ({teacher['val_samples']} images)"),
                ("teacher test accuracy (held out)", f"{teacher['test_accuracy']:.4f} ({teacher['test_samples']} images)"),
                ("majority-class share of the test set", f"{supervised['majority_class_share']:.4f}")]
    rows += [("student test accuracy (label-free, pruned)", f"{after['accuracy']:.4f}")]
    if supervised is not None:
        rows += [("same pruned student, supervised on the edge labels", f"{supervised['accuracy']:.4f}")]
    rows += [
        ("student accuracy before training", f"{before['accuracy']:.4f}"),
        ("student agreement with teacher", f"{after['teacher_agreement']:.4f}"),
        ("student sparsity", f"{after['sparsity']:.4f}"),
    ]
    if "learning_gap" in after:  # measured only where student and teacher features have the same size
        rows += [("learning gap before -> after training", f"{before['learning_gap']:.4f} -> {after['learning_gap']:.4f}")]
    rows += [
        ("dense ONNX size (gzip)", f"{dense['bytes'] / 1024:.1f} KiB ({dense['gzip_bytes'] / 1024:.1f} KiB)"),
        ("sparse ONNX size (gzip)", f"{sparse['bytes'] / 1024:.1f} KiB ({sparse['gzip_bytes'] / 1024:.1f} KiB)"),
    ]
    if supervised is None:
        rows += [("ONNX Runtime test accuracy (dense / sparse)",
                  f"{dense['accuracy']['onnx']:.4f} / {sparse['accuracy']['onnx']:.4f}")]
    rows += [
        ("ONNX Runtime latency, batch 1 (dense / sparse)",
         f"{dense['latency_ms_b1']:.3f} ms / {sparse['latency_ms_b1']:.3f} ms"),
        ("ONNX vs PyTorch max abs diff (dense / sparse)", f"{dense['max_abs_diff']:.2e} / {sparse['max_abs_diff']:.2e}"),
        ("guided training steps (waited for targets)",
         f"{job['steps']} in {job['seconds_training']:.0f} s ({job['target_wait_seconds']:.1f} s, "
         f"{job['target_wait_fraction']:.1%})"),
    ]
    if supervised is not None:
        rows += [("bad image files skipped (edge / cloud and test)",
                  f"{job['data_stats']['bad_files']} / {teacher['bad_files']}")]
    return {"rows": [list(row) for row in rows]}  # lists: the same after a JSON round trip


def format_summary(rows: list) -> str:
    width = max(len(name) for name, _ in rows)
    lines = ["LNPT demo summary", "=" * (width + 30)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def plot_training(curve: dict[str, list], out: Path) -> None:
    """Loss and learning gap per step of guided training, as the trainer reported them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, title in ((axes[0], "loss", "training loss (LG + KD)"), (axes[1], "gap", "learning gap (batch)")):
        ax.plot(curve["step"], curve[key], linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_report(path: Path, results: dict[str, Any], report: dict[str, Any], settings: DemoSettings) -> None:
    from lnpt.shared.files import atomic_write

    def rel(p: str) -> str:
        return Path(p).resolve().relative_to(path.parent.resolve()).as_posix()

    teacher, elpv = results["teacher"], settings.dataset == "elpv"
    data = (f"ELPV solar cells at {settings.size} x {settings.size} px, grey (split: "
            + ", ".join(f"{name} {sum(c.values())}" for name, c in results["images"]["counts"].items())
            + f"; {results['images']['licence']})" if elpv else "Fashion-MNIST")
    checked = "validation accuracy" if elpv else "test accuracy"
    supervised = results.get("supervised")
    comparison = ([f"The same pruned student trained {supervised['epochs']} epochs with the edge set's labels "
                   f"({supervised['recipe']['optimizer']}, lr {supervised['recipe']['lr']}, batch "
                   f"{supervised['recipe']['batch_size']}, cosine, no augmentation) reached "
                   f"{supervised['accuracy']:.4f} on the test set.", ""] if supervised else [])
    lines = [
        "# LNPT demo report", "",
        f"Data: {data}.", "",
        f"Teacher `{teacher['arch']}` (version {teacher['version']}) trained {settings.teacher_epochs} epochs "
        f"with labels; student `{settings.student_model}` pruned to {settings.sparsity:.0%} with the LNPT score "
        f"through the guidance server (TLS + token) by the edge job (`lnpt edge run`), trained {settings.epochs} epochs on "
        f"{results['images']['count']} unlabeled images with streamed targets; evaluated on "
        f"{results['evaluate']['samples']} real test images.", "",
        "| measure | value |", "|---|---|",
        *[f"| {name} | {value} |" for name, value in report["rows"]], "",
        *comparison,
        "## Guided training", "", f"![training curves]({rel(report['training_curve'])})", "",
        "## Density per layer after pruning", "", f"![density per layer]({rel(results['job']['chart'])})", "",
        "| layer | kept fraction |", "|---|---|",
        *[f"| {name} | {density:.4f} |" for name, density in results["job"]["density_per_layer"].items()], "",
        "## Teacher training", "", f"| epoch | train loss | {checked} |", "|---|---|---|",
        *[f"| {h['epoch']} | {h['train_loss']:.4f} | {h['test_accuracy']:.4f} |" for h in teacher["history"]], "",
        "## Stage times", "", "| stage | seconds |", "|---|---|",
        *[f"| {name} | {results[name]['seconds']} |" for name in (ELPV_STAGES if elpv else STAGES) if name in results and name != "report"], "",
        "Files: " + ", ".join(f"`{rel(results['export'][k]['path'])}`" for k in ("dense", "sparse"))
        + f", `{rel(results['job']['trained'])}`, and the edge job's folder `{rel(str(path.parent / 'job'))}`.", "",
    ]
    atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
