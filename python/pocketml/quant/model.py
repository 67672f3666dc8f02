"""Whole-model quantization and exact save/load of quantized models (safetensors)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from pocketml.quant.calibration import collect_importance
from pocketml.quant.config import QuantConfig
from pocketml.quant.gptq import gptq_quantize_layers
from pocketml.quant.linear import QuantizedLinear

_METADATA_KEY = "pocketml.quant"
_FORMAT_VERSION = 1


@dataclass
class QuantizationReport:
    """What quantize_model replaced and the weight bytes before and after."""

    layers: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    weight_bytes_before: int = 0   # bytes of the replaced Linear weights (a weight tied elsewhere stays there)
    weight_bytes_after: int = 0    # packed codes + scales/zero points/LUTs of their replacements
    model_bytes_before: int = 0    # every parameter and buffer of the model
    model_bytes_after: int = 0

    @property
    def compression(self) -> float:
        return self.weight_bytes_before / max(self.weight_bytes_after, 1)

    def __str__(self) -> str:
        return (f"quantized {len(self.layers)} Linear layers ({len(self.skipped)} skipped): weights "
                f"{self.weight_bytes_before / 2**20:.2f} MiB -> {self.weight_bytes_after / 2**20:.2f} MiB "
                f"({self.compression:.2f}x); model {self.model_bytes_before / 2**20:.2f} MiB -> "
                f"{self.model_bytes_after / 2**20:.2f} MiB")


def _model_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _quantizable_linears(model: nn.Module) -> dict:
    """{Linear module: [its names]} of the Linear layers a QuantizedLinear can stand in for,
    every name of a layer reachable under several. nn.MultiheadAttention's out_proj is
    not one: its parent reads out_proj.weight instead of calling it (torchao skips it too)."""
    if isinstance(model, nn.Linear):
        raise ValueError("argument 'model': expected a model containing Linear layers, got a Linear itself "
                         "(use QuantizedLinear.from_linear)")
    layers, conv1d = {}, []
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Linear) and not isinstance(module, NonDynamicallyQuantizableLinear):
            layers.setdefault(module, []).append(name)
        elif type(module).__name__ == "Conv1D":
            conv1d.append(name)
    if conv1d:  # GPT-2's projections: a Linear with its weight transposed, silently left out otherwise
        warnings.warn(f"quantize_model: {len(conv1d)} transformers Conv1D layers (e.g. {conv1d[0]!r}) stay in full "
                      "precision: only nn.Linear layers are quantized", stacklevel=3)
    return layers


def _check_fits(name: str, module: nn.Linear, config: QuantConfig) -> None:
    if module.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        # QuantizedLinear takes fp32 / fp16 / bf16 inputs: the layer could no longer run on its own ones.
        raise TypeError(f"argument 'model': expected float32, float16 or bfloat16 layers, got layer {name!r} in "
                        f"{module.weight.dtype} (convert the model first, e.g. model.float())")
    if config.method == "kmeans":
        size, dim, what = config.lut_group_size, module.out_features, "out_features"
    else:
        size, dim, what = config.group_size, module.in_features, "in_features"
    if size is not None and dim % size:
        option = "lut_group_size" if config.method == "kmeans" else "group_size"
        raise ValueError(f"argument 'config': expected a {option} dividing layer {name!r}'s {what} = {dim}, "
                         f"got {size} (skip the layer or choose another {option})")


def quantize_model(model: nn.Module, config: QuantConfig,
                   skip: Callable[[str, nn.Module], bool] | None = None,
                   calibration=None) -> QuantizationReport:
    """Replace every nn.Linear of `model` (in place) by a QuantizedLinear, except those
    for which skip(name, module) is true; returns the size report.

    calibration: example inputs (an iterable of tensors, tuples of arguments or dicts
    of keyword arguments) or a callable that runs the model. The model runs on them
    first; each layer's mean squared input activation per input channel then weights
    its quantization error (method "mse": the clipping search; "kmeans": the
    clustering), so the channels that carry signal keep it. Method "gptq" needs them:
    it quantizes the layers one after the other, running the model once per layer,
    each minimising its output error on its inputs with the earlier layers already
    quantized (pocketml.quant.gptq). Method "rtn" has nothing to weight and refuses
    calibration.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"argument 'model': expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"argument 'config': expected a pocketml.quant.QuantConfig, got {type(config).__name__}")
    if calibration is not None and config.method == "rtn":
        raise ValueError("argument 'calibration': expected None with method 'rtn' (round to nearest weights no "
                         "error; use method 'mse', 'gptq' or 'kmeans' to calibrate), got calibration data")
    if calibration is None and config.method == "gptq":
        raise ValueError("argument 'calibration': expected example inputs with method 'gptq' (it minimises each "
                         "layer's output error on them), got None")
    report = QuantizationReport(model_bytes_before=_model_bytes(model))
    targets, names = [], {}
    for module, module_names in _quantizable_linears(model).items():
        if skip is not None and any(skip(name, module) for name in module_names):
            report.skipped.extend(module_names)
        else:
            _check_fits(module_names[0], module, config)
            targets.append((module_names[0], module))
            names[module_names[0]] = module_names
    if config.method == "gptq":
        if isinstance(calibration, Iterable) and not isinstance(calibration, (list, tuple, str, dict, torch.Tensor)):
            # GPTQ runs the model once per layer: a generator, or any one-pass iterable (a streaming
            # dataset), would run dry after the first (the others are refused with their own messages)
            calibration = list(calibration)
        quantized = gptq_quantize_layers(model, targets, calibration, config)

        def replacement(name, module):
            return QuantizedLinear.from_quantized(module, config, quantized[name])
    else:
        importance = collect_importance(model, calibration, dict(targets)) if calibration is not None and targets else {}

        def replacement(name, module):
            return QuantizedLinear.from_linear(module, config, importance=importance.get(name))
    # Every replacement is built before the first is swapped in: an error leaves the model untouched.
    replacements = []
    for name, module in targets:
        try:
            replacements.append((name, module, replacement(name, module)))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"layer {name!r}: {exc}") from exc
    counted = set()  # two Linear modules sharing one weight Parameter held it once
    for name, module, layer in replacements:
        if id(module.weight) not in counted:
            counted.add(id(module.weight))
            report.weight_bytes_before += module.weight.numel() * module.weight.element_size()
        report.weight_bytes_after += layer.nbytes
        for alias in names[name]:  # a layer reachable under several names is one QuantizedLinear
            _replace(model, alias, layer)
            report.layers.append(alias)
    report.model_bytes_after = _model_bytes(model)
    return report


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's state (quantized layers included) to a safetensors file; the
    layers' configs go in its metadata. Tensors shared by several names (a tied
    embedding and LM head) are stored once, the other names listed as its aliases.
    The file appears complete or not at all."""
    from safetensors.torch import save_file

    layers = {name: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                     "config": m.config.to_json()}
              for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, QuantizedLinear)}
    tensors, aliases = _deduplicated_state(model)
    metadata = {_METADATA_KEY: json.dumps({"version": _FORMAT_VERSION, "layers": layers, "aliases": aliases})}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _deduplicated_state(model: nn.Module) -> tuple[dict, dict]:
    """(tensors to write, {alias: name written}): a tensor reachable under several names
    (tied weights) is written once; distinct tensors that share a storage (slices of one
    buffer), which safetensors refuses, are written as copies."""
    tensors, aliases, first = {}, {}, {}
    for name, t in model.state_dict().items():
        if t is None:
            continue
        identity = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and identity in first:
            aliases[name] = first[identity]
        else:
            first[identity] = name
            tensors[name] = t.detach()
    storages = {}
    for name, t in tensors.items():
        if t.numel():
            storages.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for names in storages.values():
        if len(names) > 1:
            for name in names:
                tensors[name] = tensors[name].clone()
    return {name: t.contiguous() for name, t in tensors.items()}, aliases


def _check_keys_and_shapes(model: nn.Module, stored: dict, path) -> None:
    """Before any tensor is copied: load_state_dict copies the keys that fit, then raises."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if t is not None}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(name for name in set(expected) & set(stored) if expected[name] != stored[name])
    if missing or unexpected or wrong:
        parts = [f"{what} {names[:5]}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if names]
        raise ValueError(f"argument 'path': expected the tensors of this model in {str(path)!r}, got "
                         f"{'; '.join(parts)}")


def _linear_shape(module) -> tuple | None:
    """(in_features, out_features, has bias) of a Linear or QuantizedLinear, else None."""
    if not isinstance(module, (nn.Linear, QuantizedLinear)):
        return None
    return module.in_features, module.out_features, module.bias is not None


def _describe_layer(module) -> str:
    if module is None:
        return "nothing"
    shape = _linear_shape(module)
    if shape is None:
        return type(module).__name__
    return f"in_features={shape[0]}, out_features={shape[1]}, bias={shape[2]}"


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file written by save() into `model` (the same architecture, quantized or
    not): its Linear layers named in the file become QuantizedLinear; exact round trip."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    if _METADATA_KEY not in metadata:
        raise ValueError(f"argument 'path': expected a file written by pocketml.quant.save, got {str(path)!r} "
                         f"without '{_METADATA_KEY}' metadata")
    info = json.loads(metadata[_METADATA_KEY])
    if info.get("version") != _FORMAT_VERSION:
        raise ValueError(f"argument 'path': expected format version {_FORMAT_VERSION}, got {info.get('version')!r}")
    originals, replacements, built = {}, {}, {}
    for name, spec in info["layers"].items():
        try:
            current = model.get_submodule(name) if name else None
        except AttributeError:
            current = None
        shape = (spec["in_features"], spec["out_features"], spec["bias"])
        if _linear_shape(current) != shape:
            raise ValueError(f"argument 'model': expected layer {name!r} to be a Linear with in_features={shape[0]}, "
                             f"out_features={shape[1]}, bias={shape[2]} as in {str(path)!r}, "
                             f"got {_describe_layer(current)}")
        originals[name] = current
        if current not in built:  # one layer under several names stays one layer
            built[current] = QuantizedLinear.empty(*shape, QuantConfig.from_json(spec["config"]))
            if current.bias is not None:  # a frozen bias stays frozen, as load_state_dict leaves it
                built[current].bias.requires_grad_(current.bias.requires_grad)
        replacements[name] = built[current]
    aliases = info.get("aliases", {})
    stored.update({alias: stored[name] for alias, name in aliases.items() if name in stored})
    for name, layer in replacements.items():
        _replace(model, name, layer)
    try:
        _check_keys_and_shapes(model, stored, path)
        state = load_file(str(path))
        state.update({alias: state[name] for alias, name in aliases.items()})
        for name, layer in replacements.items():  # the bias keeps the saved dtype (load_state_dict casts to ours)
            bias = state.get(f"{name}.bias" if name else "bias")
            if layer.bias is not None and bias is not None:
                layer.bias.data = layer.bias.data.to(bias.dtype)
        model.load_state_dict(state, strict=True)
    except BaseException:
        for name, layer in originals.items():  # a file that does not fit leaves the model as it was
            _replace(model, name, layer)
        raise
    return model
