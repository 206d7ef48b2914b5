"""`lnpt bench train`: guided training against a live local server vs supervised training with labels.

One run, same student, data, batch size, augmentation and optimizer (train.optimizer). The server
(`lnpt serve`, 1 torch thread) is pinned to one core and the trainer to another; the supervised
baseline runs on the trainer's core alone and is the physical floor (no teacher at all). Prefetching should hide the
network and the teacher, so guided steps/s approach supervised steps/s. Also reported: the
fraction of time the trainer waited for targets and the trainer's peak RSS.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from lnpt.shared.cli import add_format_option, emit


ROUND_SECONDS = 2.0  # a fixed 60 steps made a LeNet-5 round last 0.3 s, shorter than the machine's jitter
MIN_STEPS = 60


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="guided training steps/s vs supervised steps/s (same core)",
                           description=__doc__)
    p.add_argument("--model", default="resnet20", help="student and teacher architecture (default resnet20)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--steps", type=int, default=0,
                   help=f"measured steps per mode and round (default 0: enough for rounds of about "
                        f"{ROUND_SECONDS:g} s of supervised training, at least {MIN_STEPS})")
    p.add_argument("--rounds", type=int, default=3, help="alternating supervised/guided rounds (default 3)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured steps first (default 10)")
    p.add_argument("--prefetch", type=int, default=0, help="batches requested ahead (client.prefetch; default 0: "
                   "sized from round trip and step time)")
    add_format_option(p)
    p.set_defaults(handler=run)


def cores() -> tuple[int, int]:
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) > 1 else (available[0], available[0])


def supervised_steps_per_s(model, spec, images, labels, batch_size: int, steps: int, warmup: int,
                           train_cfg) -> tuple[float, float]:
    """Plain cross-entropy training with labels through the same data path (order, augmentation);
    returns (steps per second, CPU seconds of this process per step)."""
    import torch
    import torch.nn.functional as F

    from lnpt.edge.training.augment import batch_generator
    from lnpt.edge.training.trainer import epoch_order
    from lnpt.shared.data import normalize, random_crop_flip
    from lnpt.shared.optim import make_optimizer

    # The guided trainer's optimizer and schedule (train.optimizer, default Adam): only the loss differs.
    optimizer, scheduler = make_optimizer(model.parameters(), train_cfg.optimizer, lr=train_cfg.lr,
                                          momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay,
                                          schedule=train_cfg.schedule, total_steps=warmup + steps)
    order = epoch_order(0, 0, len(images))
    model.train()
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started, cpu_started = time.perf_counter(), time.process_time()
        indices = order[step * batch_size:(step + 1) * batch_size]
        batch = random_crop_flip(images.batch(indices), batch_generator(0, 0, step))
        loss = F.cross_entropy(model(normalize(batch, spec)), labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return steps / (time.perf_counter() - started), (time.process_time() - cpu_started) / steps


def guided(student_path, images, address: str, steps: int, batch_size: int, prefetch: int):
    from lnpt.edge.teachers.remote import GuidanceClient
    from lnpt.edge.student import load_student
    from lnpt.edge.training.trainer import GuidedTrainer
    from lnpt.shared.config import load_config

    config = load_config(None, [f"train.max_steps={steps}", f"train.batch_size={batch_size}",
                                "train.checkpoint_every=0", f"client.prefetch={prefetch}", "client.insecure=true"])
    model, record = load_student(student_path)
    with GuidanceClient.from_config(config.client, address) as client:
        trainer = GuidedTrainer(model, record.input_spec, images, client, train=config.train,
                                objective=config.objective, teacher_version=client.version, progress=False)
        cpu_started = time.process_time()
        result = trainer.run()
        return result, dict(client.stats, cpu_per_step=(time.process_time() - cpu_started) / max(1, result.steps))


def run(args: argparse.Namespace) -> int:
    result = train_benchmark(args.model, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                             rounds=args.rounds, prefetch=args.prefetch)
    emit(args, result, format_result(result))
    return 0


def train_benchmark(model_name: str, *, batch_size: int, steps: int, warmup: int, rounds: int, prefetch: int) -> dict:
    """Guided steps/s through a live server vs supervised steps/s, alternated over `rounds`, server and
    trainer pinned to different cores; also the target wait and peak RSS. `steps` 0: as many per round as
    ROUND_SECONDS of supervised training take here (at least MIN_STEPS)."""
    import torch

    from lnpt.cloud.process import ServerProcess
    from lnpt.edge.student import load_student, save_student
    from lnpt.edge.training.image_source import ImageSource
    from lnpt.shared.model_file import save_model
    from lnpt.shared.config import load_config
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, load_fashion_mnist
    from lnpt.shared.models import build_model

    server_core, trainer_core = cores()
    os.sched_setaffinity(0, {trainer_core})
    torch.set_num_threads(1)
    all_images, all_labels = load_fashion_mnist(train=True)
    classes = list(FASHION_MNIST_CLASSES)
    if steps == 0:  # as many steps as ROUND_SECONDS of supervised training take on this core
        torch.manual_seed(0)
        probe = (warmup + 20) * batch_size
        rate, _ = supervised_steps_per_s(build_model(model_name, 10, FASHION_MNIST_SPEC), FASHION_MNIST_SPEC,
                                         ImageSource(all_images[:probe], FASHION_MNIST_SPEC, "fashion-mnist:train"),
                                         all_labels[:probe], batch_size, 20, warmup, load_config().train)
        steps = max(MIN_STEPS, math.ceil(ROUND_SECONDS * rate))
    needed = (warmup + max(steps, warmup)) * batch_size
    images = ImageSource(all_images[:needed], FASHION_MNIST_SPEC, "fashion-mnist:train")
    labels = all_labels[:needed]
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch + data, before any training
    with tempfile.TemporaryDirectory(prefix="lnpt-bench-train-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        save_model(tmp / "T.pt", build_model(model_name, 10, FASHION_MNIST_SPEC), kind="teacher",
                   input_spec=FASHION_MNIST_SPEC, class_names=classes)
        save_student(tmp / "S.pt", build_model(model_name, 10, FASHION_MNIST_SPEC), input_spec=FASHION_MNIST_SPEC,
                     class_names=classes)
        server = ServerProcess(tmp / "T.pt", core=server_core, log_path=tmp / "server.log").start(timeout=120)
        model, _ = load_student(tmp / "S.pt")
        supervised = lambda: supervised_steps_per_s(  # noqa: E731
            model, FASHION_MNIST_SPEC, images, labels, batch_size, steps, warmup, load_config().train)
        try:
            address = server.address
            guided(tmp / "S.pt", images, address, warmup, batch_size, prefetch)  # warm both sides
            # Alternate short rounds (supervised, guided, ...): drift in machine load hits both sides alike.
            sup_runs, guided_runs, waits, reconnects, cpu_ratios, cpu_ms, per_step = [], [], [], 0, [], [], []
            for _ in range(rounds):
                rate, sup_cpu = supervised()
                sup_runs.append(rate)
                result, stats = guided(tmp / "S.pt", images, address, steps, batch_size, prefetch)
                guided_runs.append(result.steps / result.seconds)
                cpu_ratios.append(sup_cpu / stats["cpu_per_step"])
                cpu_ms.append((1000 * sup_cpu, 1000 * stats["cpu_per_step"]))
                per_step.append(stats["requests"] / max(1, result.steps))
                waits.append((stats["wait_seconds"] / result.seconds, result.target_wait_seconds / result.seconds))
                reconnects += stats["reconnects"]
        finally:
            server.terminate()
    ratios = sorted(g / u for g, u in zip(guided_runs, sup_runs))
    sup, guided_rate = statistics.median(sup_runs), statistics.median(guided_runs)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "model": model_name, "batch_size": batch_size, "steps": steps, "prefetch": prefetch,
        "server_core": server_core, "trainer_core": trainer_core,
        "guided_steps_per_s": guided_rate, "supervised_steps_per_s": sup,
        "guided_over_supervised": statistics.median(ratios), "ratio_per_round": ratios,
        # The trainer process's CPU per step, supervised / guided (gRPC client threads included): what the
        # guided step costs the device itself, whatever else runs on a shared machine.
        "cpu_guided_over_supervised": statistics.median(cpu_ratios),
        "supervised_cpu_ms_per_step": statistics.median(c[0] for c in cpu_ms),
        "guided_cpu_ms_per_step": statistics.median(c[1] for c in cpu_ms),
        # Requests per training step: below 1 when the client merges batches up to the server's preferred batch.
        "requests_per_step": statistics.median(per_step),
        "target_wait_fraction": statistics.median(w[0] for w in waits),
        "loop_wait_fraction": statistics.median(w[1] for w in waits), "rounds": rounds, "reconnects": reconnects,
        "peak_rss_mb": peak_rss_mb, "rss_before_training_mb": rss_before_mb,
    }
    return out


def format_result(out: dict) -> str:
    sup, guided_rate, ratios = out["supervised_steps_per_s"], out["guided_steps_per_s"], out["ratio_per_round"]
    peak_rss_mb, rss_before_mb = out["peak_rss_mb"], out["rss_before_training_mb"]
    return "\n".join([
        f"lnpt bench train: {out['model']}, batch {out['batch_size']}, {out['rounds']} rounds of {out['steps']} "
        f"steps per mode, server on core {out['server_core']}, trainer on core {out['trainer_core']}",
        f"{'mode':<28}{'steps/s':>10}{'ratio':>8}",
        f"{'supervised (labels)':<28}{sup:>10.2f}{1.0:>8.2f}",
        f"{'guided (live server)':<28}{guided_rate:>10.2f}{out['guided_over_supervised']:>8.2f}",
        f"guided/supervised per round: {', '.join(f'{r:.2f}' for r in ratios)} (median above); "
        f"trainer CPU per step, supervised/guided: {out['cpu_guided_over_supervised']:.2f} "
        f"({out['supervised_cpu_ms_per_step']:.2f} / {out['guided_cpu_ms_per_step']:.2f} ms); "
        f"requests per step {out['requests_per_step']:.2f}",
        f"waited for targets: {out['target_wait_fraction']:.1%} of guided time "
        f"(training loop blocked: {out['loop_wait_fraction']:.1%})",
        f"peak RSS {peak_rss_mb:.0f} MB ({rss_before_mb:.0f} MB already after importing torch and loading "
        f"Fashion-MNIST; training adds {peak_rss_mb - rss_before_mb:.0f} MB)",
    ])
