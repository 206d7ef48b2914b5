"""Models from one spec string, and their penultimate features without editing model code.

A model spec names a network the same way in the CLI (`--model`), the config, the API and model files:

- a zoo name: `lenet5`, `resnet20`, `resnet32`, `resnet56`, `vgg11_bn`, `vgg16_bn`, `vgg19_bn`, and the
  small-input (re-stemmed) `resnet18` and `mobilenet_v2` of `lnpt.shared.zoo`;
- `torchvision:NAME[:WEIGHTS]`: any classification builder of `torchvision.models`
  (`torchvision.models.list_models(module=torchvision.models)`), with its standard stem, optionally
  with pretrained weights (`torchvision:resnet50:IMAGENET1K_V2`, or `DEFAULT`);
- `package.module:factory`: user code on the Python path; `factory(num_classes=..., in_channels=...)`
  (each argument only when the factory takes it) returns an `nn.Module` that maps images to logits.

Every built model is a `Classifier`: `forward(x)` gives logits, `features_and_logits(x)` gives the
penultimate features and the logits from one pass. The features are the input of the network's
final `nn.Linear` (the `head`), found by running the network once and seeing which Linear produced
its output, and read with a forward pre-hook on that layer; `feature_node` names another module
whose (flattened) output is used instead. The zoo's `body`/`head` split is one case of this: its
head is the module named `head`. Pruning, the learning gap, training, model files, evaluation and
ONNX export only use this interface, so they treat every model alike.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lnpt.shared.classifier import (MAX_SIDE, MIN_SIDE, Classifier, InputSpec, ModelError,  # noqa: F401
                                   Network, parse_size)  # (this module's API: models are built here)
from lnpt.shared.errors import LnptError

log = logging.getLogger("lnpt.shared.models")

# --- specs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `source` is "zoo", "torchvision" or "module"."""

    source: str
    name: str
    weights: str = ""
    module: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        text = str(text).strip()
        if not text:
            raise ModelError("empty model spec; give a zoo name (e.g. resnet20), torchvision:NAME or "
                             "package.module:factory")
        if text.startswith("torchvision:"):
            parts = text.split(":")
            if len(parts) not in (2, 3) or not parts[1]:
                raise ModelError(f"model spec {text!r}: expected torchvision:NAME or torchvision:NAME:WEIGHTS")
            return cls("torchvision", parts[1], parts[2] if len(parts) == 3 else "")
        if ":" in text:
            module, _, factory = text.partition(":")
            if not module or not factory.isidentifier():
                raise ModelError(f"model spec {text!r}: expected package.module:factory")
            return cls("module", factory, module=module)
        return cls("zoo", text)

    def __str__(self) -> str:
        if self.source == "torchvision":
            return f"torchvision:{self.name}" + (f":{self.weights}" if self.weights else "")
        if self.source == "module":
            return f"{self.module}:{self.name}"
        return self.name

    def without_weights(self) -> "ModelSpec":
        """The same architecture without pretrained weights (how a saved model is rebuilt)."""
        return ModelSpec(self.source, self.name, "", self.module)


def zoo_network(spec: ModelSpec, num_classes: int, input_spec: InputSpec) -> Classifier:
    from lnpt.shared import zoo

    if spec.name not in zoo.BUILDERS:
        raise ModelError(f"unknown model {spec.name!r}; choose one of: {', '.join(zoo.MODEL_NAMES)}, "
                         "torchvision:NAME, or package.module:factory")
    return zoo.BUILDERS[spec.name](num_classes, input_spec.channels, input_spec.height, input_spec.width)


def torchvision_network(spec: ModelSpec, num_classes: int, input_spec: InputSpec) -> nn.Module:
    import torchvision
    from torchvision import models

    names = models.list_models(module=torchvision.models)
    if spec.name not in names:
        close = difflib.get_close_matches(spec.name, names, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see torchvision.models.list_models())"
        raise ModelError(f"torchvision:{spec.name} is not a classification model of torchvision "
                         f"{torchvision.__version__}{hint}")
    if not spec.weights:
        return without_aux_logits(models.get_model(spec.name, weights=None, num_classes=num_classes))
    try:
        weights = models.get_model_weights(spec.name)[spec.weights] if spec.weights != "DEFAULT" \
            else models.get_model_weights(spec.name).DEFAULT
    except KeyError:
        options = ", ".join(w.name for w in models.get_model_weights(spec.name))
        raise ModelError(f"{spec}: torchvision has no weights {spec.weights!r} for {spec.name}; "
                         f"choose one of {options} or DEFAULT") from None
    try:
        return without_aux_logits(models.get_model(spec.name, weights=weights))
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        file = os.path.basename(weights.url)
        raise ModelError(f"{spec}: cannot load torchvision weights {file} ({type(exc).__name__}: {exc}). "
                         f"Offline, download {weights.url} elsewhere and put it at {folder / file} "
                         f"(the folder follows $TORCH_HOME), or pass --weights FILE") from exc


def without_aux_logits(net: nn.Module) -> nn.Module:
    """GoogLeNet and Inception return auxiliary logits in train mode; lnpt trains on the main ones only."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)
    return net


def module_network(spec: ModelSpec, num_classes: int, input_spec: InputSpec) -> nn.Module:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ModelError(f"model {spec}: cannot import module {spec.module!r} ({exc}); install the package "
                         f"that provides it, or add the folder that holds it to PYTHONPATH "
                         f"(e.g. PYTHONPATH=/path/to/project lnpt ...)") from exc
    factory = getattr(module, spec.name, None)
    if not callable(factory):
        raise ModelError(f"model {spec}: module {spec.module!r} has no callable {spec.name!r}")
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    offered = {"num_classes": num_classes, "in_channels": input_spec.channels}
    net = factory(**{k: v for k, v in offered.items() if k in accepted})
    if not isinstance(net, nn.Module):
        raise ModelError(f"model {spec}: {spec.name}(...) returned {type(net).__name__}, not an nn.Module")
    return net


# One registry of model sources, keyed by ModelSpec.source.
SOURCES: dict[str, Callable[[ModelSpec, int, InputSpec], nn.Module]] = {
    "zoo": zoo_network,
    "torchvision": torchvision_network,
    "module": module_network,
}


# --- building ------------------------------------------------------------------------------------

def build_model(spec: str | ModelSpec, num_classes: int = 10, input_spec: InputSpec = InputSpec(), *,
                weights: str | os.PathLike | None = None, feature_node: str = "", announce: bool = True) -> Classifier:
    """Build a model from its spec, ready for pruning, training and export.

    `num_classes` re-heads a classifier whose final Linear has another class count (pretrained
    weights, a factory without arguments); what was changed is logged and kept in `model.notes`.
    `input_spec` sets the channels (a 3-channel stem becomes 1-channel when asked) and the size the
    model must run at (too small for its downsampling: ModelError with the minimum size).
    `weights` is a state dict or checkpoint file (`torch.load(weights_only=True)`).
    `feature_node` names the module whose output are the features ("" = input of the final Linear).
    `announce=False` keeps the notes out of the log (rebuilding a saved model).

        >>> from lnpt.shared.models import InputSpec, build_model
        >>> spec = InputSpec(3, 96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> student = build_model("torchvision:mobilenet_v3_small", 10, spec)
        >>> student.feature_dim, student.head_name
        (1024, 'net.classifier.3')
    """
    parsed = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    net = SOURCES[parsed.source](parsed, num_classes, input_spec)
    notes: list[str] = []
    model = net if isinstance(net, Classifier) else Network(net)
    if not isinstance(net, Classifier):
        notes += match_channels(net, input_spec.channels)
    model.spec, model.feature_node = str(parsed), feature_node
    model.head_name = find_head(model, input_spec)
    if weights:
        notes += load_weights(model, weights)
    if model.head is not None and model.head.out_features != num_classes:
        notes.append(reheaded(model, num_classes))
    model.feature_dim, model.num_classes = probe_widths(model, input_spec)
    if model.num_classes != num_classes:
        raise ModelError(f"{parsed} returns {model.num_classes} logits, but {num_classes} classes were asked for "
                         "and it has no final Linear to re-head; build it with the right class count")
    model.notes = notes
    model.input_spec = input_spec
    for note in notes if announce else ():
        log.warning("%s: %s", parsed, note)
    return model


def match_channels(net: nn.Module, channels: int) -> list[str]:
    """Give the first Conv2d `channels` inputs (grey images into an RGB stem: weights summed)."""
    for name, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d):
            if conv.in_channels == channels:
                return []
            if conv.groups != 1:
                break
            new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, 1, conv.bias is not None, conv.padding_mode)
            with torch.no_grad():
                mean = conv.weight.mean(1, keepdim=True) * conv.in_channels / channels
                new.weight.copy_(mean.expand_as(new.weight))
                if conv.bias is not None:
                    new.bias.copy_(conv.bias)
            net.set_submodule(name, new)
            return [f"first convolution {name} takes {channels} channel(s) instead of {conv.in_channels}"]
    raise ModelError(f"cannot find the first convolution to give it {channels} input channel(s); "
                     "use a model whose factory takes in_channels")


def reheaded(model: Classifier, num_classes: int) -> str:
    old = model.head
    parent, _, leaf = model.head_name.rpartition(".")
    setattr(model.submodule(parent) if parent else model, leaf,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return (f"re-headed: new final Linear {model.head_name.removeprefix(model.network_prefix)} "
            f"with {num_classes} classes (it had {old.out_features}); train it before use")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, under "state_dict"/"model"/"model_state_dict", or an lnpt model file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; weights_only refuses pickled modules
        raise ModelError(f"--weights {path}: not a readable weights file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); save model.state_dict() with "
                         "torch.save, a whole pickled module cannot be loaded safely") from exc
    if isinstance(raw, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"--weights {path}: expected a state dict (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in raw.items()}  # DDP checkpoints prefix `module.`


def load_weights(model: Classifier, path: str | os.PathLike) -> list[str]:
    """Load a weights file into `model` (names with or without the `net.` prefix). A final Linear of
    another class count keeps its fresh initialisation (re-headed, said in the notes); every other
    mismatch fails with the names."""
    state = read_state_dict(path)
    prefixed = any(k.startswith("net.") for k in state)
    target, prefix = (model.net, "net.") if isinstance(model, Network) and not prefixed else (model, "")
    own = target.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    head = model.head_name.removeprefix(prefix)
    result = target.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if result.unexpected_keys or missing or any(k.rpartition(".")[0] != head for k in skipped):
        raise ModelError(f"--weights {path} does not fit {model.spec}: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}, other shapes {skipped[:5]}")
    notes = [f"loaded weights from {path}"]
    if skipped:
        classes = state[f"{head}.weight"].shape[0]
        notes.append(f"re-headed: the final Linear {model.head_name.removeprefix(model.network_prefix)} is new, with {model.head.out_features} classes "
                     f"(the weights file's has {classes}); train it before use")
    return notes


def example_input(input_spec: InputSpec, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, *input_spec.shape)


def run_once(model: nn.Module, input_spec: InputSpec, hooks: Callable[[], list] = list):
    """One eval-mode forward on zeros at `input_spec`; a size error becomes a ModelError with the minimum."""
    was_training = model.training
    handles = hooks()
    try:
        with torch.no_grad():
            return model.eval()(example_input(input_spec))
    except RuntimeError as exc:
        minimum = minimum_size(model, input_spec)
        if minimum is None:
            raise ModelError(f"the model cannot run on {input_spec.channels} x {input_spec.height} x "
                             f"{input_spec.width} inputs: {str(exc).splitlines()[0]}") from exc
        raise ModelError(f"input size {input_spec.height}x{input_spec.width} is too small for this model "
                         f"(its downsampling needs at least {minimum}x{minimum}); use --input-size {minimum} "
                         f"or larger ({str(exc).splitlines()[0]})") from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def minimum_size(model: nn.Module, input_spec: InputSpec) -> int | None:
    """The smallest square side (up to MAX_SIDE) the model runs at: doubling, then bisection; None if none."""
    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                model(example_input(input_spec.resized(side), batch=1))
            return True
        except RuntimeError:
            return False

    low = max(input_spec.height, input_spec.width)
    high = min(2 * low, MAX_SIDE)
    while not runs(high):
        if high == MAX_SIDE:
            return None
        low, high = high + 1, min(2 * high, MAX_SIDE)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle + 1, high)
    return high


def find_head(model: Classifier, input_spec: InputSpec) -> str:
    """Name of the Linear whose output is the model's output; ModelError with candidates otherwise."""
    outputs: dict[str, list[torch.Tensor]] = {}

    def hooks():
        return [m.register_forward_hook(lambda _m, _a, out, n=name: outputs.setdefault(n, []).append(out))
                for name, m in model.named_modules() if isinstance(m, nn.Linear)]

    result = run_once(model, input_spec, hooks)
    if not isinstance(result, torch.Tensor) or result.dim() != 2:
        raise ModelError(f"{model.spec}: the model must return logits as one (N, classes) tensor, got "
                         f"{type(result).__name__}{tuple(result.shape) if isinstance(result, torch.Tensor) else ''}")
    heads = [name for name, outs in outputs.items() if any(out is result for out in outs)]
    if len(heads) == 1 and len(outputs[heads[0]]) == 1:
        return heads[0]
    if model.feature_node:
        return ""  # the user named the features; the model simply has no single final Linear
    prefix = model.network_prefix
    candidates = [n.removeprefix(prefix) for n, m in model.named_modules() if n.startswith(prefix) and n != prefix.rstrip(".")]
    problem = "several final Linear layers" if len(heads) > 1 else "no final nn.Linear producing its output"
    raise ModelError(f"{model.spec}: {problem}, so the penultimate features cannot be found; name the module "
                     f"whose output are the features with --feature-node (config model.feature_node); "
                     f"candidates: {', '.join(candidates[-12:]) or '(no submodules)'}")


def probe_widths(model: Classifier, input_spec: InputSpec) -> tuple[int, int]:
    """(feature width, class count) from one forward; checks the feature node exists."""
    if model.feature_node:
        names = {n for n, _ in model.named_modules()}
        if model.network_prefix + model.feature_node not in names:
            prefix = model.network_prefix
            close = difflib.get_close_matches(model.feature_node, [n.removeprefix(prefix) for n in names], n=8)
            raise ModelError(f"feature node {model.feature_node!r} is not a module of {model.spec}; "
                             f"close names: {', '.join(close) or '(none)'}")
    was_training = model.training
    try:
        with torch.no_grad():
            features, logits = model.eval().features_and_logits(example_input(input_spec))
    finally:
        model.train(was_training)
    return int(features.shape[1]), int(logits.shape[1])


def input_spec_from_config(section, base: InputSpec) -> InputSpec:
    """`base` (the teacher's input) with a [model] section's `input_size` and `channels` applied.

    Mean and std follow the channel count: one channel from an RGB teacher takes the mean of the
    three, three channels from a grey teacher repeat it. The teacher resizes what it receives to its
    own input (see `lnpt.shared.teacher_model`), so the student may run at any size.
    """
    channels = section.channels or base.channels
    size = parse_size(section.input_size) if section.input_size else base.size
    mean, std = base.mean, base.std
    if channels != base.channels:
        mean, std = ((sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels)
    try:
        return InputSpec(channels, size, mean, std)
    except ValueError as exc:
        raise ModelError(f"model.input_size / model.channels: {exc}") from exc


def model_from_config(section, default_spec: str, num_classes: int, input_spec: InputSpec) -> Classifier:
    """Build the model a [model] section describes (its spec, else `default_spec`; its class count,
    else `num_classes`), with its weights file and feature node."""
    spec = section.spec or default_spec
    if not spec:
        raise ModelError("no model spec: give --model (model.spec), or a teacher whose architecture to copy")
    return build_model(spec, section.num_classes or num_classes, input_spec,
                       weights=section.weights or None, feature_node=section.feature_node)


def check_classes(student_classes: int, teacher_classes: int, lambda_kd: float) -> None:
    """Logit distillation needs the teacher's classes; features alone (lambda_kd = 0) do not."""
    if student_classes != teacher_classes and lambda_kd > 0:
        raise ModelError(f"the student has {student_classes} classes and the teacher {teacher_classes}: logit "
                         "distillation needs the same classes; set objective.lambda_kd = 0 to learn from the "
                         "teacher's features only, or build the student with the teacher's class count")
