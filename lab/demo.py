"""`lnpt demo`: the whole LNPT job end to end on real Fashion-MNIST, on one machine.

Stages (each shows progress; a finished stage is reused on the next run unless --fresh):
  1. teacher   train a mature teacher with labels (the cloud's job)
  2. tls       make a test CA, server/client certificates and a bearer token
  3. images    write the training images as an unlabeled folder of PNG files (the edge's data)
  4. job       start `lnpt serve` as a separate process on loopback with TLS and the token, then the
               edge job exactly as a device runs it (`lnpt.edge.run_edge_job`, `lnpt edge run`): a fresh
               student pruned with the LNPT score through the server (90% sparsity), label-free guided
               training against the streamed targets, a sparse ONNX file verified in ONNX Runtime
  5. evaluate  accuracy on the real test set (labels read only here), learning gap before/after
  6. shutdown  SIGTERM to the server: it drains and must exit with code 0
  7. export    the dense ONNX file beside the sparse one; accuracy and latency of both measured
  8. report    print the summary, write report.md with the training curves and density chart
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

from lnpt.shared.cli import add_format_option
from lnpt.shared.errors import LnptError

STAGES = ("teacher", "tls", "images", "job", "evaluate", "shutdown", "export", "report")
MARKER = ".lnpt-demo"  # only a folder holding this marker is ever deleted by --fresh


@dataclass
class DemoSettings:
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

    def key(self) -> dict[str, Any]:
        """What the stages' results depend on; a change invalidates reused results."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "threads")}


def register(sub: argparse._SubParsersAction) -> None:
    defaults = DemoSettings()
    parser = sub.add_parser(
        "demo", help="run the whole LNPT job end to end on real Fashion-MNIST (no flags needed)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"output folder (default {defaults.out})")
    parser.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing earlier stages")
    parser.add_argument("--teacher-model", default=defaults.teacher_model, help="teacher architecture")
    parser.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs, help="teacher training epochs")
    parser.add_argument("--teacher-images", type=int, default=defaults.teacher_images,
                        help="labeled training images for the teacher (0 = all 60000)")
    parser.add_argument("--student-model", default=defaults.student_model, help="student architecture")
    parser.add_argument("--sparsity", type=float, default=defaults.sparsity, help="fraction of weights pruned")
    parser.add_argument("--train-images", type=int, default=defaults.train_images,
                        help="training images written to the unlabeled folder (0 = all 60000)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="guided training epochs")
    parser.add_argument("--test-images", type=int, default=defaults.test_images,
                        help="test images for evaluation (0 = all 10000)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads on the edge side")
    add_format_option(parser)
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    settings = DemoSettings(args.out, args.teacher_model, args.teacher_epochs, args.teacher_images,
                            args.student_model, args.sparsity, args.train_images, args.epochs, args.test_images,
                            args.threads)
    summary = Demo(settings, fresh=args.fresh).run()
    if args.format == "json":
        print(json.dumps(summary))
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

        number = STAGES.index(name) + 1
        record_path = self.path(f"stages/{name}.json")
        if self.stage_done(name):
            self.results[name] = json.loads(record_path.read_text())["result"]
            self.log(f"[{number}/{len(STAGES)}] {name}: reusing the result in {record_path}")
            yield None  # type: ignore[misc]
            return
        self.log(f"[{number}/{len(STAGES)}] {name} ...")
        started = time.perf_counter()
        result: dict[str, Any] = {}
        yield result
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.results[name] = result
        text = json.dumps({"settings": self.s.key(), "result": result}, indent=2, default=str)
        atomic_write(record_path, lambda f: f.write(text.encode()))
        self.log(f"[{number}/{len(STAGES)}] {name} done in {result['seconds']} s")

    # --- the job -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import torch

        from lnpt.shared.data import prepare_fashion_mnist

        torch.set_num_threads(self.s.threads)
        prepare_fashion_mnist()
        started = time.perf_counter()
        self.train_teacher()
        self.make_tls()
        self.write_images()
        try:
            self.edge_job()
            self.evaluate()
        finally:
            self.stop_server()
        self.export()
        summary = self.report(time.perf_counter() - started)
        return summary

    def train_teacher(self) -> None:
        with self.stage("teacher") as result:
            if result is None:
                return
            from lnpt.cloud import train_teacher
            from lnpt.shared.config import Config, updated

            config = updated(Config(), "teacher", model=self.s.teacher_model, epochs=self.s.teacher_epochs,
                             train_samples=self.s.teacher_images)
            # The stage record decides what is redone: an unrecorded teacher file is a leftover.
            trained = train_teacher(config, str(self.path("teacher.pt")), device="cpu", overwrite=True)
            result.update(path=trained["path"], arch=trained["arch"], version=trained["version"],
                          test_accuracy=trained["test_accuracy"], history=trained["history"])

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

            def record(event: dict) -> None:
                if event["event"] == "step":
                    for key in curve:
                        curve[key].append(event[key])

            job = run_edge_job(config, progress=sys.stderr.isatty(), train_log=record,
                               log=lambda line: self.log(f"  {line}"))
            before = evaluate(job.student, limit=self.s.test_images, teacher=address, config=config)
            prune, train = job.prune.report, job.train
            result.update(stages=job.stages, student=str(job.student), trained=str(job.trained), onnx=str(job.onnx),
                          sparsity=prune["sparsity"], chart=prune["chart"], density_per_layer=prune["density_per_layer"],
                          score_seconds=prune.get("score_seconds"), before=before.to_dict(), steps=train.steps,
                          seconds_training=train.seconds, target_wait_seconds=train.target_wait_seconds,
                          target_wait_fraction=train.target_wait_fraction, final_loss=train.final_loss, curve=curve)

    def evaluate(self) -> None:
        """Accuracy on the real test set (labels read here only), agreement and learning gap vs the teacher."""
        with self.stage("evaluate") as result:
            if result is None:
                return
            from lnpt.edge import evaluate

            address = self.start_server()
            after = evaluate(self.results["job"]["trained"], limit=self.s.test_images, teacher=address,
                             config=self.edge_config(address))
            result.update(after.to_dict())

    def export(self) -> None:
        with self.stage("export") as result:
            if result is None:
                return
            from lnpt.edge import export

            for storage in ("dense", "sparse"):  # the job's own file is sparse; both here, with accuracy
                out = self.path(f"student-{storage}.onnx")
                exported = export(self.results["job"]["trained"], out, storage=storage, overwrite=True,
                                  eval_fashion_mnist=self.s.test_images,
                                  progress=lambda line: self.log(f"  {storage}: {line}"))
                result[storage] = {"path": str(out), "bytes": exported.bytes, "gzip_bytes": exported.gzip_bytes,
                                   "max_abs_diff": exported.max_abs_diff, "accuracy": exported.accuracy,
                                   "latency_ms_b1": onnx_latency_ms(out)}

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
        self.log("")
        print(format_summary(result["rows"]))
        self.log(f"\nreport: {result['report']} (total {seconds:.0f} s this run)")
        return {"rows": result["rows"], "report": result["report"], "stages": self.results}


class DemoError(LnptError, RuntimeError):
    """A stage of the demo failed; the message names it and where its log is."""


def onnx_latency_ms(path: Path, runs: int = 200) -> float:
    """Median single-image latency in ONNX Runtime (1 thread, CPU), after a warm-up."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((1, *feed.shape[1:])).astype(np.float32)
    for _ in range(20):
        session.run(None, {feed.name: x})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {feed.name: x})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def summary_rows(results: dict[str, Any]) -> dict[str, Any]:
    job, before, after = results["job"], results["job"]["before"], results["evaluate"]
    dense, sparse = results["export"]["dense"], results["export"]["sparse"]
    rows = [
        ("teacher test accuracy", f"{results['teacher']['test_accuracy']:.4f}"),
        ("student test accuracy (label-free, pruned)", f"{after['accuracy']:.4f}"),
        ("student accuracy before training", f"{before['accuracy']:.4f}"),
        ("student agreement with teacher", f"{after['teacher_agreement']:.4f}"),
        ("student sparsity", f"{after['sparsity']:.4f}"),
        ("learning gap before -> after training", f"{before['learning_gap']:.4f} -> {after['learning_gap']:.4f}"),
        ("dense ONNX size (gzip)", f"{dense['bytes'] / 1024:.1f} KiB ({dense['gzip_bytes'] / 1024:.1f} KiB)"),
        ("sparse ONNX size (gzip)", f"{sparse['bytes'] / 1024:.1f} KiB ({sparse['gzip_bytes'] / 1024:.1f} KiB)"),
        ("ONNX Runtime test accuracy (dense / sparse)",
         f"{dense['accuracy']['onnx']:.4f} / {sparse['accuracy']['onnx']:.4f}"),
        ("ONNX Runtime latency, batch 1 (dense / sparse)",
         f"{dense['latency_ms_b1']:.3f} ms / {sparse['latency_ms_b1']:.3f} ms"),
        ("ONNX vs PyTorch max abs diff (dense / sparse)", f"{dense['max_abs_diff']:.2e} / {sparse['max_abs_diff']:.2e}"),
        ("guided training steps (waited for targets)",
         f"{job['steps']} in {job['seconds_training']:.0f} s ({job['target_wait_seconds']:.1f} s, "
         f"{job['target_wait_fraction']:.1%})"),
    ]
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

    teacher = results["teacher"]
    lines = [
        "# LNPT demo report", "",
        f"Teacher `{teacher['arch']}` (version {teacher['version']}) trained {settings.teacher_epochs} epochs "
        f"with labels; student `{settings.student_model}` pruned to {settings.sparsity:.0%} with the LNPT score "
        f"through the guidance server (TLS + token) by the edge job (`lnpt edge run`), trained {settings.epochs} epochs on "
        f"{results['images']['count']} unlabeled images with streamed targets; evaluated on "
        f"{results['evaluate']['samples']} real test images.", "",
        "| measure | value |", "|---|---|",
        *[f"| {name} | {value} |" for name, value in report["rows"]], "",
        "## Guided training", "", f"![training curves]({rel(report['training_curve'])})", "",
        "## Density per layer after pruning", "", f"![density per layer]({rel(results['job']['chart'])})", "",
        "| layer | kept fraction |", "|---|---|",
        *[f"| {name} | {density:.4f} |" for name, density in results["job"]["density_per_layer"].items()], "",
        "## Teacher training", "", "| epoch | train loss | test accuracy |", "|---|---|---|",
        *[f"| {h['epoch']} | {h['train_loss']:.4f} | {h['test_accuracy']:.4f} |" for h in teacher["history"]], "",
        "## Stage times", "", "| stage | seconds |", "|---|---|",
        *[f"| {name} | {results[name]['seconds']} |" for name in STAGES if name in results and name != "report"], "",
        "Files: " + ", ".join(f"`{rel(results['export'][k]['path'])}`" for k in ("dense", "sparse"))
        + f", `{rel(results['job']['trained'])}`, and the edge job's folder `{rel(str(path.parent / 'job'))}`.", "",
    ]
    atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
