"""One TOML configuration format for cloud and edge, with `--set section.key=value` overrides.

Every section is a dataclass below; its field defaults are the documented defaults. Loading checks
every key and value against these declarations and fails at start with the key, the value and what
was expected. Each side reads the sections it needs from the same file.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnpt.shared.errors import LnptError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(LnptError, ValueError):
    """A config file or override is invalid; the message names the key and the problem."""


def choice(*options: str) -> dict:
    """Field metadata restricting a string to a fixed set of values."""
    return {"choices": options}


def at_least(low: float) -> dict:
    return {"min": low}


def between(low: float, high: float) -> dict:
    return {"min": low, "max": high}


# --- sections ----------------------------------------------------------------------------------

@dataclass
class ServerConfig:
    """[server] the cloud guidance server (`lnpt serve`)."""
    host: str = "127.0.0.1"
    port: int = field(default=50051, metadata=between(0, 65535))
    metrics_port: int = field(default=9464, metadata=between(-1, 65535))  # -1 disables /metrics; 0 = any free port
    metrics_host: str = ""  # address /metrics listens on; empty = server.host
    metrics_require_token: bool = False  # /metrics asks for a bearer token from tokens_file, like the gRPC calls
    health_port: int = field(default=-1, metadata=between(-1, 65535))  # grpc.health.v1 alone, own connection budget; -1 = off
    insecure: bool = False
    cert: str = ""  # PEM server certificate (TLS is on unless insecure)
    key: str = ""  # PEM private key of cert
    client_ca: str = ""  # PEM CA: when set, clients must present a certificate it signed (mTLS)
    tokens_file: str = ""  # one bearer token per line; when set, every call needs one of them
    max_message_bytes: int = field(default=0, metadata=at_least(0))  # 0 = derived from the teacher's input and max_request_batch
    max_inflight_bytes: int = field(default=256 * 1024 * 1024, metadata=at_least(1024))  # requests in flight, all streams
    max_streams: int = field(default=256, metadata=at_least(1))
    max_streams_per_client: int = field(default=64, metadata=at_least(0))  # per client IP address; 0 = no limit
    max_streams_per_token: int = field(default=64, metadata=at_least(0))  # per bearer token; 0 = no limit
    max_health_watches: int = field(default=64, metadata=at_least(1))  # open grpc.health.v1 Watch streams
    max_connections: int = field(default=0, metadata=at_least(0))  # on the gRPC port; 0 = derived from the open-file limit
    max_connections_per_client: int = field(default=64, metadata=at_least(0))  # per client IP address; 0 = no limit
    handshake_timeout_seconds: float = field(default=5.0, metadata=at_least(0.1))  # TCP + TLS + HTTP/2 preface
    connection_idle_seconds: float = field(default=120.0, metadata=at_least(0))  # no call open this long: closed; 0 = never
    max_connection_age_seconds: float = field(default=3600.0, metadata=at_least(0))  # clients reconnect (and re-resolve DNS) this often; 0 = never
    stream_window: int = field(default=16, metadata=at_least(1))  # requests in flight per stream; beyond, reading waits
    grace_seconds: float = field(default=10.0, metadata=at_least(0))
    stream_idle_seconds: float = field(default=300.0, metadata=at_least(0))  # cut a stream that sends or reads nothing this long; 0: never
    log_format: str = field(default="text", metadata=choice("text", "json"))


@dataclass
class BatcherConfig:
    """[batcher] dynamic batching of requests from all streams into teacher forwards."""
    max_batch_size: int = field(default=256, metadata=at_least(1))  # samples per teacher forward
    max_request_batch: int = field(default=256, metadata=at_least(1))  # samples one request may carry
    max_queue_delay_ms: float = field(default=5.0, metadata=at_least(0))
    max_queue_requests: int = field(default=128, metadata=at_least(1))  # beyond: RESOURCE_EXHAUSTED
    device: str = "cpu"
    threads: int = field(default=0, metadata=at_least(0))  # torch threads for the teacher; 0 = torch default


@dataclass
class TeacherConfig:
    """[teacher] the mature teacher: its training (`lnpt teacher train`) and how an ONNX teacher is served."""
    model: str = "resnet20"  # model spec: zoo name, torchvision:NAME[:WEIGHTS] or package.module:factory
    weights: str = ""  # state dict or checkpoint file to start training from; empty = the spec's (or random)
    feature_node: str = ""  # module whose output are the features; empty = input of the final Linear
    onnx_features_output: str = "features"  # ONNX teacher: output (or node output) holding the features
    onnx_logits_output: str = "logits"  # ONNX teacher: output (or node output) holding the logits
    onnx_mean: list[float] = field(default_factory=list)  # ONNX teacher without a sidecar: input mean per channel
    onnx_std: list[float] = field(default_factory=list)  # ONNX teacher without a sidecar: input std per channel
    dataset: str = field(default="fashion-mnist", metadata=choice("fashion-mnist"))
    epochs: int = field(default=10, metadata=at_least(1))
    batch_size: int = field(default=128, metadata=at_least(1))
    lr: float = field(default=0.1, metadata=at_least(0))
    momentum: float = field(default=0.9, metadata=between(0, 1))
    weight_decay: float = field(default=5e-4, metadata=at_least(0))
    train_samples: int = field(default=0, metadata=at_least(0))  # 0 = all
    test_samples: int = field(default=0, metadata=at_least(0))  # per-epoch evaluation; 0 = the whole test set
    augment: bool = True  # random crop (padding 2) and horizontal flip
    seed: int = 0
    checkpoint_every: int = field(default=200, metadata=at_least(0))  # steps; 0 = only per epoch
    device: str = ""  # cpu, cuda, cuda:N; empty = cuda when available (under torchrun: cuda:LOCAL_RANK)


@dataclass
class ModelConfig:
    """[model] the student's network (`lnpt prune`); specs, weights and feature nodes: docs/MODELS.md."""
    spec: str = ""  # zoo name, torchvision:NAME[:WEIGHTS] or package.module:factory; empty = the teacher's
    num_classes: int = field(default=0, metadata=at_least(0))  # 0 = the teacher's
    input_size: str = ""  # side (96) or HEIGHTxWIDTH (96x128); empty = the teacher's
    channels: int = field(default=0, metadata=choice(0, 1, 3))  # type: ignore[arg-type]  # 0 = the teacher's
    weights: str = ""  # state dict or checkpoint file to start from (torch.load weights_only)
    feature_node: str = ""  # module whose output are the features; empty = input of the final Linear


@dataclass
class ClientConfig:
    """[client] how an edge device reaches the guidance server."""
    addresses: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    insecure: bool = False
    ca_cert: str = ""  # PEM CA that signed the server certificate; empty = system roots
    client_cert: str = ""  # PEM certificate for mutual TLS
    client_key: str = ""
    token_file: str = ""  # file with the bearer token (never put the token itself in a config)
    server_name: str = ""  # TLS name override (e.g. when connecting by IP)
    image_wire: str = field(default="uint8", metadata=choice("uint8", "float32"))
    target_wire: str = field(default="float16", metadata=choice("float16", "float32"))
    prefetch: int = field(default=0, metadata=at_least(0))  # batches in flight ahead of training; 0 = sized from round trip and step time
    max_prefetch: int = field(default=16, metadata=at_least(1))  # most batches in flight when prefetch = 0
    max_attempts: int = field(default=8, metadata=at_least(1))  # reconnect attempts before giving up
    max_wait_seconds: float = field(default=120.0, metadata=at_least(0))  # total backoff budget
    backoff_base_seconds: float = field(default=0.2, metadata=at_least(0))
    backoff_max_seconds: float = field(default=10.0, metadata=at_least(0))
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=at_least(1024))
    keepalive_seconds: float = field(default=20.0, metadata=at_least(0))  # ping period; unanswered as long: reconnect; 0 = off
    allow_insecure_token: bool = False  # send token_file over plaintext to a non-loopback address


@dataclass
class ObjectiveConfig:
    """[objective] the label-free learning-gap objective (method.md)."""
    # Defaults chosen by `lnpt analyze objective` on a validation split (docs/results/objective-study/):
    # normalized gap through a fixed projector + 1 x KD at tau 1 beat mse/learned + KD at tau 4 by 2.3 points.
    gap: str = field(default="normalized", metadata=choice("mse", "cosine", "normalized"))
    lambda_gap: float = field(default=1.0, metadata=at_least(0))  # 0 = KD only
    lambda_kd: float = field(default=1.0, metadata=at_least(0))  # 0 = the learning gap only
    temperature: float = field(default=1.0, metadata=at_least(1e-3))
    projector: str = field(default="fixed", metadata=choice("learned", "fixed"))


@dataclass
class PruneConfig:
    """[prune] pruning before training (`lnpt prune`)."""
    # A registered score (lnpt.edge.pruning.scorers.SCORERS; `lnpt prune --list-scores`), checked when pruning
    # starts: the registry lives with the scorers, which this module must not import.
    score: str = "lnpt"
    # auto: the learning gap (LG + lambda_kd * KD) for lnpt, cross-entropy on labels for snip/grasp
    objective: str = field(default="auto", metadata=choice("auto", "learning-gap", "cross-entropy"))
    sparsity: float = field(default=0.9, metadata=between(0, 0.9999))
    scope: str = field(default="global", metadata=choice("global", "local"))
    samples: int = field(default=0, metadata=at_least(0))  # 0 = 10 x number of classes
    batch_size: int = field(default=64, metadata=at_least(1))
    min_layer_density: float = field(default=0.01, metadata=between(0, 1))  # floor of kept weights per layer
    keep_classifier_dense: bool = False
    synflow_rounds: int = field(default=100, metadata=at_least(1))
    progressive_rounds: int = field(default=3, metadata=at_least(1))  # rounds of the lnpt-progressive score
    synflow_float64: bool = False
    structured: float = field(default=0.0, metadata=between(0, 0.95))  # channel ratio removed; 0 = off
    # Channel pruning to a budget instead of a fixed ratio (edge.pruning.budget): any target > 0 turns it on.
    target_latency_ms: float = field(default=0.0, metadata=at_least(0))  # median ms in ONNX Runtime here; 0 = none
    target_latency_over_dense: float = field(default=0.0, metadata=between(0, 0.99))  # 0.5 = twice as fast; 0 = none
    target_macs: int = field(default=0, metadata=at_least(0))  # MACs per image (Torch-Pruning's count); 0 = none
    target_params: int = field(default=0, metadata=at_least(0))  # parameters; 0 = none
    latency_threads: int = field(default=1, metadata=at_least(1))  # ONNX Runtime threads of the latency target
    latency_batch: int = field(default=1, metadata=at_least(1))  # batch size of the latency target
    budget_step: float = field(default=0.05, metadata=between(0.01, 0.5))  # channel ratio removed per step
    budget_max_ratio: float = field(default=0.9, metadata=between(0.05, 0.95))  # most channels a budget may remove
    seed: int = 0


@dataclass
class TrainConfig:
    """[train] label-free guided training on the device (`lnpt train`)."""
    epochs: int = field(default=5, metadata=at_least(1))
    batch_size: int = field(default=64, metadata=at_least(1))
    # Adam by default: a sparse student without normalisation layers (LeNet-5 at 90%) starts with
    # tiny activations that SGD does not recover from in a few epochs (measured: stuck at chance).
    optimizer: str = field(default="adam", metadata=choice("sgd", "adam"))
    lr: float = field(default=0.005, metadata=at_least(0))
    momentum: float = field(default=0.9, metadata=between(0, 1))
    weight_decay: float = field(default=5e-4, metadata=at_least(0))
    schedule: str = field(default="cosine", metadata=choice("cosine", "constant"))
    augment: bool = True
    checkpoint_every: int = field(default=200, metadata=at_least(0))  # steps; 0 = only per epoch
    target_cache: str = ""  # folder for cached targets of un-augmented samples (turns augment off); empty = off
    max_steps: int = field(default=0, metadata=at_least(0))  # 0 = no limit (for quick runs)
    seed: int = 0
    threads: int = field(default=0, metadata=at_least(0))  # torch threads; 0 = torch default
    device: str = "cpu"  # where the student trains: cpu, cuda, cuda:0 (e.g. a Jetson's GPU)


@dataclass
class ExportConfig:
    """[export] ONNX export (`lnpt export`)."""
    opset: int = field(default=18, metadata=between(13, 23))
    format: str = field(default="dense", metadata=choice("dense", "sparse"))
    quantize: str = field(default="none", metadata=choice("none", "int8", "int8-static"))
    tolerance: float = field(default=1e-4, metadata=at_least(0))  # float graphs: max abs diff / max(1, max |out|)
    int8_min_agreement: float = field(default=0.9, metadata=between(0, 1))  # int8: top-1 agreement with PyTorch
    logits_only: bool = False  # graph outputs only `logits` (no `features`)
    ort: bool = False  # also write a verified .ort file for ONNX Runtime Mobile
    verify_samples: int = field(default=64, metadata=at_least(1))  # real images compared with PyTorch
    samples: str = ""  # folder of real images for verification; empty = Fashion-MNIST test images
    calibration: str = ""  # folder of unlabeled images for int8-static; empty = Fashion-MNIST train pixels
    calibration_samples: int = field(default=128, metadata=at_least(1))


@dataclass
class DataConfig:
    """[data] where images come from and how they are shaped for the model."""
    root: str = ""  # cache folder for Fashion-MNIST; empty = $LNPT_DATA or ~/.cache/lnpt
    channels: int = field(default=1, metadata=choice(1, 3))  # type: ignore[arg-type]  # 1 grey, 3 RGB
    size: int = field(default=28, metadata=between(8, 512))
    # Teacher training and evaluation (labels: cloud side only). A folder with one sub-folder per
    # class, or a .csv of path,label rows; empty = Fashion-MNIST.
    labeled: str = ""  # labeled training images for `lnpt teacher train`
    val: str = ""  # labeled validation images (folder or .csv); empty = val_fraction of `labeled`
    val_fraction: float = field(default=0.0, metadata=between(0, 0.9))  # 0 = no validation split
    csv_path_column: str = "path"  # image path column of a labels CSV (relative to the CSV's folder)
    csv_label_column: str = "label"  # class label column of a labels CSV
    mean: list[float] = field(default_factory=list)  # per channel, pixels in [0, 1]; empty = measured on `labeled`
    std: list[float] = field(default_factory=list)  # per channel; empty = measured on `labeled`
    # Streaming image files (both sides); recorded in the model file and the ONNX sidecar.
    resize: int = field(default=0, metadata=at_least(0))  # shorter side before the centre crop; 0 = cover the input
    fit: str = field(default="crop", metadata=choice("crop", "pad"))  # centre crop, or zero-pad to the input shape
    interpolation: str = field(default="bilinear", metadata=choice("nearest", "bilinear", "bicubic"))
    workers: int = field(default=2, metadata=at_least(0))  # DataLoader decode processes; 0 = in the training process
    on_bad_file: str = field(default="skip", metadata=choice("skip", "fail"))  # skip and count, or stop at the first
    max_pixels: int = field(default=50_000_000, metadata=at_least(1))  # larger images are bad files (decompression bombs)


@dataclass
class JobConfig:
    """[job] one edge device's whole job (`lnpt edge run`): prune once, train with resume, export once."""
    work: str = "lnpt-work"  # folder for the student, the training checkpoint and the ONNX file
    data: str = ""  # folder of unlabeled images; empty = the Fashion-MNIST training images
    teacher: str = ""  # teacher file or host:port; empty = client.addresses
    export: bool = True  # write (once) and verify the ONNX file after training


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    data: DataConfig = field(default_factory=DataConfig)
    job: JobConfig = field(default_factory=JobConfig)


# --- loading and validation --------------------------------------------------------------------

def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML file (optional), apply `section.key=value` overrides, validate everything."""
    raw: dict[str, Any] = {}
    source = "--set"
    if path:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})[key] = value
    return build_config(raw, source)


def parse_override(item: str) -> tuple[str, str, Any]:
    """`section.key=value`; the value is read as TOML (`0.9`, `true`, `["a", "b"]`) or else a string."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. prune.sparsity=0.95")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, key, value


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; known sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys, got {values!r}")
        built[name] = build_section(typing.get_type_hints(Config)[name], values, name, source)
    return Config(**built)


def build_section(cls: type, values: dict[str, Any], section: str, source: str) -> Any:
    return cls(**checked_values(cls, values, section, source))


def checked_values(cls: type, values: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    """`values` for the section dataclass `cls`, each checked against its declaration."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = {}
    for key, value in values.items():
        where = f"{source}: {section}.{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key; [{section}] accepts: {', '.join(fields)}")
        checked[key] = check_value(where, value, hints[key], fields[key].metadata)
    return checked


def updated(config: Config, section: str, source: str = "argument", **values: Any) -> Config:
    """A copy of `config` with `values` set in [section], checked like a file's values; errors name
    `source` (the flag or function that gave them).

        >>> updated(Config(), "prune", sparsity=0.95).prune.sparsity
        0.95
    """
    if not values:
        return config
    current = getattr(config, section)
    changed = dataclasses.replace(current, **checked_values(type(current), values, section, source))
    return dataclasses.replace(config, **{section: changed})


def check_value(where: str, value: Any, expected: Any, meta: typing.Mapping) -> Any:
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"{where} = {value!r}: expected a list of {item_type.__name__}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        value = float(value)
    elif expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
    if "choices" in meta and value not in meta["choices"]:
        options = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{where} = {value!r}: expected one of {options}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where} = {value!r}: must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where} = {value!r}: must be at most {meta['max']}")
    return value
