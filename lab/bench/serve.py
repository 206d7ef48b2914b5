"""`lnpt bench serve`: teacher throughput through the guidance server vs the raw forward, one run.

Measured side by side on the same machine:
- raw: `Teacher.targets` in-process at batch B (and B/4), one torch thread, pinned to core 0, run
  before and after the served settings (the faster of the two counts);
- served: `lnpt serve` pinned to core 0 (one torch thread), load from 1, 4, 16 and 64 concurrent
  streams (one connection each) sending uint8 batches of B/4, so the dynamic batcher must merge
  them; the clients run pinned to core 1. Requests in flight per stream come from GetTeacherInfo
  unless `--window` is given: enough for two of the server's preferred batches across all streams
  (one computing, one collecting), at least 2, within the server's per-stream limit;
- p50/p99 latency per request, the server's resident memory per open stream, and protobuf bytes
  per sample for uint8 vs float32 images and float16 vs float32 targets;
- with `--profile`: where a request's time goes, from the server's own counters
  (lnpt_request_stage_seconds: decode, queue, forward, encode, reply_wait, send) beside the
  latency the clients measured; `transport_ms` is the rest (gRPC and the socket, both ways); the
  server's CPU per request by thread (lnpt-teacher: collect, forward, encode; the event loop:
  gRPC's reads and writes and the service's bookkeeping); and `grpc_floor`: the CPU per request of
  a bare grpc.aio server on the same core answering the same requests with a canned response (no
  teacher, no service), so `ceiling_ratio` = raw forward / (raw forward + gRPC's floor) per request
  says how close to raw any Python gRPC server can get at this request size.
The teacher is `--checkpoint`, or an untrained `--model` (default resnet20, 32x32 RGB; lenet5 is
28x28 grey): throughput does not depend on the weights. Target: served >= 0.9x raw samples/s with
16 streams (`ratio_16_streams`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lnpt.shared.cli import add_format_option, emit
from lnpt.shared.errors import LnptError

SERVER_CORE, CLIENT_CORE = 0, 1
STREAM_COUNTS = (1, 4, 16, 64)
QUEUE_REQUESTS = 4096  # the server's bounded queue, raised so 64 streams with their windows fit it
INFLIGHT_BYTES = 4 * 1024 ** 3  # and its in-flight budget, so 64 streams of 224 px requests fit it too
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("serve", help="served vs raw teacher throughput, latency and wire bytes",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="T.pt|T.onnx",
                   help="teacher file to benchmark, a model file or an ONNX file (default: an untrained --model)")
    p.add_argument("--model", default="resnet20", help="teacher architecture without a checkpoint (default resnet20)")
    p.add_argument("--input-size", type=int, help="image side without a checkpoint (default 28 for lenet5, else 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="image channels without a checkpoint "
                   "(default 1 for lenet5, else 3)")
    p.add_argument("--batch", type=int, default=64, help="teacher batch B; clients send B/4 per request (default 64)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each setting (default 2)")
    p.add_argument("--window", type=int, default=0, help="requests in flight per stream (default 0: from GetTeacherInfo)")
    p.add_argument("--profile", action="store_true", help="also report where a request's time goes (server stages)")
    add_format_option(p)
    p.set_defaults(handler=run)


def pin(core: int) -> bool:
    """Pin this process to one core when the machine has it; False when it cannot."""
    if not hasattr(os, "sched_setaffinity") or core >= (os.cpu_count() or 1):
        return False
    try:  # children inherit affinity, so a process pinned elsewhere may still move to `core`
        os.sched_setaffinity(0, {core})
    except OSError:
        return False
    return True


def default_teacher(folder: Path, model: str, input_size: int | None, channels: int | None) -> str:
    """An untrained teacher file of `model` (random weights: throughput does not depend on them)."""
    import torch

    from lnpt.shared.data import FASHION_MNIST_SPEC
    from lnpt.shared.model_file import save_model
    from lnpt.shared.models import InputSpec, build_model

    grey = model == "lenet5"
    channels = channels or (1 if grey else 3)
    size = input_size or (28 if grey else 32)
    if channels == 1:
        mean, std = FASHION_MNIST_SPEC.mean, FASHION_MNIST_SPEC.std
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
    torch.manual_seed(0)
    spec = InputSpec(channels, size, mean, std)
    path = folder / f"{model.replace(':', '_')}-untrained.pt"
    save_model(path, build_model(model, 10, spec), kind="teacher", input_spec=spec,
               class_names=[f"class {i}" for i in range(10)])
    return str(path)


# --- raw forward (runs in a pinned subprocess: `python -m lnpt.lab.bench.serve raw ...`) -------------

def raw_forward(checkpoint: str, batch: int, seconds: float, warmup: float) -> dict:
    import torch

    from lnpt.shared.teacher_model import Teacher

    pinned = pin(SERVER_CORE)
    torch.set_num_threads(1)
    teacher = Teacher.load(checkpoint)
    images = torch.randint(0, 256, (batch, *teacher.input_spec.shape), dtype=torch.uint8)
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        teacher.targets(images)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        teacher.targets(images)
        count += batch
    return {"samples_per_s": count / (time.perf_counter() - start),
            "samples_per_cpu_s": count / (time.process_time() - cpu_start), "pinned": pinned}


def measure_raw(checkpoint: str, batch: int, seconds: float, warmup: float) -> dict:
    done = subprocess.run([sys.executable, "-m", "lnpt.lab.bench.serve", "raw", checkpoint, str(batch),
                           str(seconds), str(warmup)], capture_output=True, text=True, env=single_thread_env())
    if done.returncode != 0:
        raise RuntimeError(f"raw forward benchmark failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def single_thread_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


# --- gRPC alone (runs in a pinned subprocess: `python -m lnpt.lab.bench.serve echo ...`) ------------------

def echo_server(port: int, response: bytes) -> None:
    """A grpc.aio StreamTargets on the server core that parses each request and answers it with the
    same pre-encoded response: what gRPC costs per request without a teacher or the service."""
    import grpc

    from lnpt.cloud.server import channel_options
    from lnpt.shared.protocol import guidance_pb2 as pb

    pin(SERVER_CORE)

    async def stream(requests, context):
        async for _ in requests:
            yield response

    async def main() -> None:
        server = grpc.aio.server(options=channel_options(64 * 1024 * 1024))
        handler = grpc.stream_stream_rpc_method_handler(stream, request_deserializer=pb.TargetsRequest.FromString)
        name = pb.DESCRIPTOR.services_by_name["Guidance"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, {"StreamTargets": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("serving", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def canned_response(rows: int, feature_dim: int, num_classes: int) -> bytes:
    """A TargetsResponse as the server sends it for `rows` images (float16 targets)."""
    import torch

    from lnpt.shared.codec import encode
    from lnpt.shared.protocol import guidance_pb2 as pb

    return pb.TargetsResponse(request_id=1, features=encode(torch.zeros(rows, feature_dim, dtype=torch.float16)),
                              logits=encode(torch.zeros(rows, num_classes, dtype=torch.float16)),
                              teacher_id="teacher", teacher_version="0123456789abcdef").SerializeToString()


def grpc_floor(images, response: bytes, streams: int, window: int, seconds: float, warmup: float) -> dict:
    """Server CPU per request of `echo_server` under the load of the served setting."""
    from lnpt.cloud.process import free_port

    port = free_port()
    with tempfile.NamedTemporaryFile(suffix=".bin") as canned:
        canned.write(response)
        canned.flush()
        echo = subprocess.Popen([sys.executable, "-m", "lnpt.lab.bench.serve", "echo", str(port), canned.name],
                                stdout=subprocess.PIPE, text=True, env=single_thread_env())
        try:
            if echo.stdout.readline().strip() != "serving":
                raise RuntimeError("the bare gRPC server did not start")
            run = asyncio.run(drive(f"127.0.0.1:{port}", streams, images, seconds, warmup, window,
                                    server_pid=echo.pid))
        finally:
            echo.kill()
            echo.wait()
    per_request = int(images.shape[0])
    cpu_s_per_sample = 1.0 / run["samples_per_server_cpu_s"] if run.get("samples_per_server_cpu_s") else float("nan")
    return {"streams": streams, "window": window, "requests_per_s": run["samples_per_s"] / per_request,
            "cpu_ms_per_request": 1000 * cpu_s_per_sample * per_request}


# --- served ------------------------------------------------------------------------------------------

def start_server(checkpoint: str, batch: int, log_path: Path):
    """`lnpt serve` pinned to the server core with one torch thread; returns once health is SERVING."""
    from lnpt.cloud.process import ServerProcess, free_port

    core = SERVER_CORE if SERVER_CORE < (os.cpu_count() or 1) else None
    return ServerProcess(checkpoint, core=core, log_path=log_path, metrics_port=free_port(), overrides=[
        f"batcher.max_batch_size={batch}", f"batcher.max_request_batch={batch}",
        f"batcher.max_queue_requests={QUEUE_REQUESTS}", f"server.max_inflight_bytes={INFLIGHT_BYTES}"]).start(timeout=120)


def teacher_info(address: str):
    import grpc

    from lnpt.shared.protocol import guidance_pb2 as pb
    from lnpt.shared.protocol import guidance_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=30)


def window_for(info, streams: int, request_batch: int) -> int:
    """Requests in flight per stream that keep the batcher full: two preferred batches across all
    streams (one computing, one collecting), at least 2, within the per-stream and queue limits."""
    wanted = max(2, math.ceil(2 * info.preferred_batch_size / (streams * request_batch)))
    if info.max_in_flight:
        wanted = min(wanted, int(info.max_in_flight))
    return max(1, min(wanted, QUEUE_REQUESTS // streams))


def scrape(metrics_port: int) -> dict[str, float]:
    """The server's Prometheus samples, by name and labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def profile(before: dict, after: dict, client_mean_ms: float) -> dict:
    """Mean milliseconds per answered request in each server stage, between two scrapes."""
    from lnpt.cloud.metrics import STAGES

    delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)  # noqa: E731
    requests = delta("lnpt_profiled_requests_total")
    if requests <= 0:
        return {}
    out = {f"{stage}_ms": 1000 * delta(f"lnpt_request_stage_seconds_total{{stage={stage}}}") / requests
           for stage in STAGES}
    out["server_ms"] = 1000 * delta("lnpt_request_server_seconds_total") / requests
    out["request_ms"] = client_mean_ms
    out["transport_ms"] = client_mean_ms - out["server_ms"]
    batches = delta("lnpt_batch_size_count")
    if batches > 0:
        out["mean_batch"] = delta("lnpt_batch_size_sum") / batches
        out["forward_per_batch_ms"] = 1000 * delta("lnpt_compute_seconds_sum") / batches
        out["encode_per_batch_ms"] = 1000 * delta("lnpt_encode_seconds_sum") / batches
    out["profiled_requests"] = requests
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, summed by thread name (Linux /proc)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main (event loop)" if task.name == str(pid) else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc); 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def drive(address: str, streams: int, images, seconds: float, warmup: float, window: int,
                server_pid: int | None = None, metrics_port: int | None = None) -> dict:
    """`streams` concurrent streams, each with `window` requests in flight. Throughput counts the
    answers that arrive inside the measured window; latency, the requests sent and answered in it.
    With `metrics_port`, the server's counters are read at both ends of the window (the profile)."""
    import grpc

    from lnpt.cloud.server import channel_options
    from lnpt.shared.protocol import guidance_pb2 as pb
    from lnpt.shared.protocol import guidance_pb2_grpc

    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    samples = 0
    per_request = int(images.shape[0])
    rss_idle = rss_bytes(server_pid) if server_pid else 0
    rss_open: list[int] = []

    async def stream(index: int) -> None:
        nonlocal samples
        async with grpc.aio.insecure_channel(address, options=channel_options(64 * 1024 * 1024)) as channel:
            call = guidance_pb2_grpc.GuidanceStub(channel).StreamTargets()
            sent: list[float] = []
            request_id = 0

            async def send() -> None:
                nonlocal request_id
                request_id += 1
                sent.append(loop.time())
                await call.write(pb.TargetsRequest(request_id=request_id, images=images,
                                                   target_dtype=pb.DTYPE_FLOAT16))

            for _ in range(window):
                await send()
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise RuntimeError("server ended a stream early")
                now = loop.time()
                started = sent.pop(0)
                if measure_from <= now <= stop_at:  # throughput: answers that arrive in the window
                    samples += per_request
                    if started >= measure_from:  # latency: requests wholly inside the window
                        latencies.append(now - started)
                if now >= stop_at:
                    break
                await send()
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass

    server_cpu: list[float] = []
    threads: list[dict[str, float]] = []

    async def observe() -> tuple[dict, dict]:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        before = await loop.run_in_executor(None, scrape, metrics_port) if metrics_port else {}
        server_cpu.append(cpu_seconds(server_pid) if server_pid else 0.0)
        threads.append(thread_cpu_seconds(server_pid) if metrics_port and server_pid else {})
        await asyncio.sleep(max(0.0, stop_at - loop.time() - 0.05))
        if server_pid:  # every stream is open and busy now
            rss_open.append(rss_bytes(server_pid))
            server_cpu.append(cpu_seconds(server_pid))
            threads.append(thread_cpu_seconds(server_pid) if metrics_port else {})
        after = await loop.run_in_executor(None, scrape, metrics_port) if metrics_port else {}
        return before, after

    *_, (before, after) = await asyncio.gather(*(stream(i) for i in range(streams)), observe())
    latencies.sort()
    result = {"samples_per_s": samples / seconds, "requests": len(latencies), "window": window,
              "p50_ms": 1000 * percentile(latencies, 0.50), "p99_ms": 1000 * percentile(latencies, 0.99),
              "mean_ms": 1000 * sum(latencies) / len(latencies) if latencies else float("nan")}
    if len(server_cpu) == 2 and server_cpu[1] > server_cpu[0]:  # what the server spent, whatever else ran
        result["samples_per_server_cpu_s"] = samples * (seconds - 0.05) / seconds / (server_cpu[1] - server_cpu[0])
    if server_pid and rss_idle and rss_open:
        result["server_rss_mb"] = rss_open[0] / 2**20
        result["rss_per_stream_kb"] = (rss_open[0] - rss_idle) / streams / 1024
    if metrics_port:
        result["profile"] = profile(before, after, result["mean_ms"])
        if len(threads) == 2 and result["profile"]:  # where the server's CPU went, per answered request
            requests = result["profile"]["profiled_requests"]
            result["profile"]["cpu_ms_per_request"] = {
                name: 1000 * (threads[1][name] - threads[0].get(name, 0.0)) / requests
                for name in sorted(threads[1]) if threads[1][name] > threads[0].get(name, 0.0)}
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def wire_bytes(shape: tuple[int, ...], per_request: int, feature_dim: int, num_classes: int) -> dict:
    """Protobuf bytes per sample of one request/response (without HTTP/2 framing)."""
    import torch

    from lnpt.shared.codec import encode
    from lnpt.shared.protocol import guidance_pb2 as pb

    pixels = torch.zeros(per_request, *shape, dtype=torch.uint8)
    request = {name: len(pb.TargetsRequest(request_id=1, images=encode(t)).SerializeToString()) / per_request
               for name, t in (("uint8", pixels), ("float32", pixels.float()))}
    response = {}
    for name, dtype in (("float16", torch.float16), ("float32", torch.float32)):
        message = pb.TargetsResponse(request_id=1, features=encode(torch.zeros(per_request, feature_dim, dtype=dtype)),
                                     logits=encode(torch.zeros(per_request, num_classes, dtype=dtype)),
                                     teacher_id="resnet20", teacher_version="0123456789abcdef")
        response[name] = len(message.SerializeToString()) / per_request
    return {"request_uint8": request["uint8"], "request_float32": request["float32"],
            "request_float32_over_uint8": request["float32"] / request["uint8"],
            "response_float16": response["float16"], "response_float32": response["float32"]}


def benchmark(checkpoint: str | None, batch: int, seconds: float, warmup: float, window: int = 0, *,
              model: str = "resnet20", input_size: int | None = None, channels: int | None = None,
              with_profile: bool = False) -> dict:
    """Raw vs served throughput, latency, server memory per stream and wire bytes, side by side."""
    import torch

    from lnpt.shared.codec import encode
    from lnpt.shared.teacher_model import Teacher, read_teacher

    if batch < 4 or batch % 4:
        raise LnptError(f"--batch must be a multiple of 4 (clients send B/4), got {batch}")
    with tempfile.TemporaryDirectory(prefix="lnpt-bench-serve-") as tmp:
        checkpoint = checkpoint or default_teacher(Path(tmp), model, input_size, channels)
        record = read_teacher(checkpoint)  # a teacher model file or an ONNX file
        net = Teacher(record).model
        per_request = batch // 4
        # Raw forward before and after the served runs; the faster one counts (a conservative ratio when
        # other work on the machine slows one of them down).
        raw_runs = [measure_raw(checkpoint, batch, seconds / 2, warmup)]
        raw_small = measure_raw(checkpoint, per_request, seconds / 2, warmup / 2)
        clients_pinned = pin(CLIENT_CORE)
        torch.set_num_threads(1)
        images = encode(torch.randint(0, 256, (per_request, *record.input_spec.shape), dtype=torch.uint8))
        server = start_server(checkpoint, batch, Path(tmp) / "serve.log")
        served = {}
        floor = None
        try:
            info = teacher_info(server.address)
            # Warm the server first (allocator, first forwards), so memory per stream is the streams' own.
            asyncio.run(drive(server.address, 4, images, min(1.0, seconds), 0.0, 2))
            for streams in STREAM_COUNTS:
                served[str(streams)] = asyncio.run(drive(
                    server.address, streams, images, seconds, warmup, window or window_for(info, streams, per_request),
                    server_pid=server.process.pid, metrics_port=server.metrics_port if with_profile else None))
        finally:
            server.terminate()
        if with_profile:  # gRPC alone under the 16-stream load, answering with a response of the served size
            response = canned_response(per_request, net.feature_dim, net.num_classes)
            floor = grpc_floor(images, response, 16, served["16"]["window"], seconds / 2, warmup / 2)
        raw_runs.append(measure_raw(checkpoint, batch, seconds / 2, warmup))
    raw = max(raw_runs, key=lambda run: run["samples_per_s"])
    result = {
        "teacher": record.arch, "input_shape": list(record.input_spec.shape), "batch": batch,
        "request_batch": per_request, "window": window or "auto", "seconds": seconds,
        "pinned": bool(raw["pinned"] and clients_pinned),
        "raw_samples_per_s": raw["samples_per_s"],
        "raw_runs_samples_per_s": [run["samples_per_s"] for run in raw_runs],
        "raw_small_batch_samples_per_s": raw_small["samples_per_s"],
        "served": served,
        "wire_bytes_per_sample": wire_bytes(record.input_spec.shape, per_request, net.feature_dim, net.num_classes),
    }
    raw_cpu = max(run["samples_per_cpu_s"] for run in raw_runs)
    result["raw_samples_per_cpu_s"] = raw_cpu
    if floor is not None:
        raw_ms = 1000 * per_request / raw_cpu  # the teacher's own CPU per request, at batch B
        floor["raw_forward_cpu_ms_per_request"] = raw_ms
        floor["ceiling_ratio"] = raw_ms / (raw_ms + floor["cpu_ms_per_request"])
        result["grpc_floor"] = floor
    for streams in STREAM_COUNTS:
        key = f"ratio_{streams}_stream" + ("s" if streams > 1 else "")
        result[key] = served[str(streams)]["samples_per_s"] / raw["samples_per_s"]
        # On a shared machine other work steals wall-clock time from one side or the other; samples per
        # CPU-second of the server process vs of the raw forward compare the cost of serving alone.
        if "samples_per_server_cpu_s" in served[str(streams)]:
            result[f"cpu_{key}"] = served[str(streams)]["samples_per_server_cpu_s"] / raw_cpu
    return result


def table(r: dict) -> str:
    b = r["batch"]
    lines = [
        f"lnpt bench serve: {r['teacher']} {'x'.join(map(str, r['input_shape']))}, teacher batch B={b}, "
        f"requests of B/4={r['request_batch']}, in flight per stream: {r['window']}"
        + ("" if r["pinned"] else "  (NOT pinned: fewer than 2 cores)"),
        f"{'setting':<34}{'samples/s':>11}{'x raw':>8}{'p50 ms':>9}{'p99 ms':>9}{'server memory':>25}",
        f"{'raw forward, batch ' + str(b):<34}{r['raw_samples_per_s']:>11.1f}{1.0:>8.2f}   (faster of "
        + ", ".join(f"{v:.1f}" for v in r["raw_runs_samples_per_s"]) + ")",
        f"{'raw forward, batch ' + str(r['request_batch']):<34}{r['raw_small_batch_samples_per_s']:>11.1f}"
        f"{r['raw_small_batch_samples_per_s'] / r['raw_samples_per_s']:>8.2f}",
    ]
    for streams, s in r["served"].items():
        lines.append(f"{'served, ' + streams + ' stream' + ('s' if streams != '1' else '') + ', window ' + str(s['window']):<34}"
                     f"{s['samples_per_s']:>11.1f}{s['samples_per_s'] / r['raw_samples_per_s']:>8.2f}"
                     f"{s['p50_ms']:>9.1f}{s['p99_ms']:>9.1f}"
                     + (f"{s['rss_per_stream_kb']:>10.0f} KiB RSS/stream" if "rss_per_stream_kb" in s else ""))
    for streams, s in r["served"].items():
        p = s.get("profile")
        if p:
            lines.append(f"profile, {streams} stream(s), ms per request: " + ", ".join(
                f"{key[:-3]} {p[key]:.2f}" for key in p if key.endswith("_ms") and "per_batch" not in key)
                + f"; mean batch {p.get('mean_batch', 0):.1f}, forward/batch {p.get('forward_per_batch_ms', 0):.2f} ms; "
                "server CPU ms per request by thread: "
                + ", ".join(f"{name} {ms:.3f}" for name, ms in p.get("cpu_ms_per_request", {}).items()))
    f = r.get("grpc_floor")
    if f:
        lines.append(f"gRPC alone (bare grpc.aio server, canned answers, {f['streams']} streams): "
                     f"{f['cpu_ms_per_request']:.3f} ms of server CPU per request vs the raw forward's "
                     f"{f['raw_forward_cpu_ms_per_request']:.3f} ms: served/raw can reach at most "
                     f"{f['ceiling_ratio']:.2f} at {r['request_batch']} images per request")
    w = r["wire_bytes_per_sample"]
    lines += [
        f"request bytes/sample: uint8 {w['request_uint8']:.0f}, float32 {w['request_float32']:.0f} "
        f"({w['request_float32_over_uint8']:.2f}x)",
        f"response bytes/sample: float16 {w['response_float16']:.0f}, float32 {w['response_float32']:.0f}",
        f"ratio with 16 streams: {r['ratio_16_streams']:.3f} (target >= 0.9); per CPU-second of the server: "
        + ", ".join(f"{k[4:]} {v:.3f}" for k, v in r.items() if k.startswith("cpu_ratio")),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = benchmark(args.checkpoint, args.batch, args.seconds, args.warmup, args.window, model=args.model,
                       input_size=args.input_size, channels=args.channels, with_profile=args.profile)
    emit(args, result, table(result))
    return 0


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "raw":
    print(json.dumps(raw_forward(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))))
if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "echo":
    echo_server(int(sys.argv[2]), Path(sys.argv[3]).read_bytes())
