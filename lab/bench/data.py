"""`lnpt bench data`: the image pipeline against the student's appetite, and its memory.

One run, side by side, on real photographs (scikit-image's samples, cut into 300 x 300 JPEG crops):
- loader images/s at the model's input size with 0, 1 and 2 DataLoader workers (`data.workers`);
- the student's training steps/s (forward, backward, Adam; one torch thread) on batches already in
  memory, then the same steps fed by the loader with 2 workers: the share of the time the trainer
  waits for the loader (target <= 5 % at 128 px);
- peak RSS of a fresh process while streaming 2,000 vs 20,000 tiny files (target ratio <= 1.1).
Ratios matter, not absolute times; say when the machine was shared.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

from lnpt.shared.cli import add_format_option, emit


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("data", help="loader images/s (0/1/2 workers) vs student steps/s; memory vs file count",
                           description=__doc__)
    p.add_argument("--model", default="torchvision:mobilenet_v3_small", help="student model spec")
    p.add_argument("--size", type=int, default=128, help="model input side (default 128)")
    p.add_argument("--images", type=int, default=384, help="JPEG files for the throughput part (default 384)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--steps", type=int, default=24, help="measured training steps per mode (default 24)")
    p.add_argument("--memory-counts", default="2000,20000", help="file counts for the memory part")
    add_format_option(p)
    p.set_defaults(handler=run)


def write_photo_crops(folder: Path, count: int) -> None:
    """`count` 300 x 300 JPEG crops of real photographs (scikit-image's samples)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    photos = [np.asarray(Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((900, 600)))
              for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, 300), rng.integers(0, 600)
        Image.fromarray(photo[top:top + 300, left:left + 300]).save(folder / f"{i:05d}.jpg", quality=90)


def loader_rate(folder: Path, preprocess, workers: int, batch_size: int, passes: int = 2) -> float:
    from lnpt.shared.data import UnlabeledImageFolder

    source = UnlabeledImageFolder(folder, preprocess, workers=workers)
    batches = [list(range(s, min(s + batch_size, len(source)))) for s in range(0, len(source), batch_size)]
    next(source.batches(batches[:1]))  # worker start-up and lazy imports are not throughput
    started, seen = time.perf_counter(), 0
    for _, _, images in source.batches(batches * passes):  # one stream, as one training epoch is
        seen += len(images)
    return seen / (time.perf_counter() - started)


def training_steps(model, spec, batches, steps: int) -> tuple[float, float]:
    """(steps/s, seconds spent waiting for `batches`) over `steps` Adam steps on its uint8 batches."""
    import torch
    import torch.nn.functional as F

    from lnpt.shared.data import normalize

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    waited = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        images = next(batches)
        waited += time.perf_counter() - asked
        logits = model(normalize(images, spec))
        loss = F.cross_entropy(logits, torch.zeros(len(images), dtype=torch.long))  # a step costs the same for any loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started), waited


def peak_rss_streaming(count: int, queue) -> None:
    """Child process: write `count` tiny PNGs, stream them all once, report this process's peak RSS."""
    import numpy as np
    from PIL import Image

    from lnpt.shared.data import UnlabeledImageFolder
    from lnpt.shared.models import InputSpec

    with tempfile.TemporaryDirectory(prefix="lnpt-bench-rss-") as tmp:
        buffer = io.BytesIO()
        Image.fromarray(np.arange(1024).reshape(32, 32).astype(np.uint8)).save(buffer, format="PNG")
        for i in range(count):
            sub = Path(tmp) / f"{i // 1000:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"{i:06d}.png").write_bytes(buffer.getvalue())
        source = UnlabeledImageFolder(tmp, InputSpec(1, 32, (0.5,), (0.25,)), workers=0)
        seen, streaming_peak = 0, current_rss()
        for _, _, images in source.batches([range(s, min(s + 256, count)) for s in range(0, count, 256)]):
            seen += len(images)
            streaming_peak = max(streaming_peak, current_rss())
        # ru_maxrss includes the import of torch/torchvision; the sampled peak is the streaming itself
        queue.put((count, seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, streaming_peak))


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(args: argparse.Namespace) -> int:
    result = data_benchmark(args.model, size=args.size, images=args.images, batch_size=args.batch_size,
                            steps=args.steps, memory_counts=[int(c) for c in args.memory_counts.split(",")])
    emit(args, result, format_result(result))
    return 0


def data_benchmark(model_spec: str, *, size: int, images: int, batch_size: int, steps: int,
                   memory_counts: list[int]) -> dict:
    """Loader images/s with 0/1/2 workers vs the student's steps/s, the trainer's wait when fed by 2
    workers, and peak RSS streaming each of `memory_counts` files (a fresh process each)."""
    import torch

    from lnpt.shared.models import InputSpec, build_model
    from lnpt.shared.preprocess import Preprocess

    torch.set_num_threads(1)
    spec = InputSpec(3, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    preprocess = Preprocess.for_spec(spec)
    result: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(),
                                "torch_threads": 1},
                    "model": model_spec, "input_size": size, "batch_size": batch_size}
    with tempfile.TemporaryDirectory(prefix="lnpt-bench-data-") as tmp:
        folder = Path(tmp) / "photos"
        write_photo_crops(folder, images)
        rates = {str(w): loader_rate(folder, preprocess, w, batch_size) for w in (0, 1, 2)}
        result["loader_images_per_s"] = rates

        from lnpt.shared.data import UnlabeledImageFolder

        model = build_model(model_spec, 4, spec)
        source = UnlabeledImageFolder(folder, preprocess, workers=0)
        memory = torch.cat([images for _, _, images in source.batches([range(batch_size)])])

        def from_memory():
            while True:
                yield memory

        training_steps(model, spec, from_memory(), 3)  # warm-up
        steps_s, _ = training_steps(model, spec, from_memory(), steps)
        streamed = UnlabeledImageFolder(folder, preprocess, workers=2)
        order = torch.randperm(len(streamed), generator=torch.Generator().manual_seed(0)).tolist()
        batches = [order[s:s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]

        def from_loader():
            while True:
                for _, _, images in streamed.batches(batches):
                    yield images

        fed = from_loader()
        training_steps(model, spec, fed, 3)  # workers started, first batches decoded
        fed_steps_s, waited = training_steps(model, spec, fed, steps)
        result.update({
            "student_steps_per_s": steps_s, "student_images_per_s": steps_s * batch_size,
            "loader_over_student_2_workers": rates["2"] / (steps_s * batch_size),
            "fed_steps_per_s_2_workers": fed_steps_s,
            "trainer_wait_fraction_2_workers": waited * fed_steps_s / steps, "wait_target": 0.05})
    counts = memory_counts
    context = multiprocessing.get_context("spawn")  # a fresh process per count: peak RSS is per process
    queue = context.Queue()
    peaks = {}
    for count in counts:
        child = context.Process(target=peak_rss_streaming, args=(count, queue))
        child.start()
        done, seen, peak, streaming = queue.get()
        child.join()
        peaks[str(done)] = {"images_streamed": seen, "peak_rss_mib": peak / 2**20,
                            "streaming_peak_rss_mib": streaming / 2**20}
    result["memory"] = peaks
    result["rss_ratio"] = (peaks[str(counts[-1])]["streaming_peak_rss_mib"]
                           / peaks[str(counts[0])]["streaming_peak_rss_mib"])
    result["rss_target"] = 1.1
    return result


def format_result(result: dict) -> str:
    rates, size, batch_size = result["loader_images_per_s"], result["input_size"], result["batch_size"]
    steps_s, fed_steps_s = result["student_steps_per_s"], result["fed_steps_per_s_2_workers"]
    lines = [f"input {size} px, batch {batch_size}, {result['model']}, {result['machine']['cpus']} CPUs "
             f"(load average {result['machine']['load_average'][0]:.1f})"]
    lines += [f"loader, {w} workers: {r:.0f} images/s" for w, r in rates.items()]
    lines += [f"student training: {steps_s:.2f} steps/s = {steps_s * batch_size:.0f} images/s",
              f"fed by the loader (2 workers): {fed_steps_s:.2f} steps/s, trainer waited "
              f"{result['trainer_wait_fraction_2_workers']:.1%} of the time (target <= 5%)"]
    lines += [f"streaming {c} files: peak RSS {p['streaming_peak_rss_mib']:.1f} MiB while streaming "
              f"({p['peak_rss_mib']:.1f} MiB with the imports)" for c, p in result["memory"].items()]
    lines += [f"RSS ratio {result['rss_ratio']:.3f} (target <= 1.1)"]
    return "\n".join(lines)
