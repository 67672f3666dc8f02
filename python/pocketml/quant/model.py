"""Whole-model quantization and exact save/load of quantized models (safetensors)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

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
    weight_bytes_before: int = 0   # fp32 bytes of the replaced Linear weights
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


def _check_fits(name: str, module: nn.Linear, config: QuantConfig) -> None:
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
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if skip is not None and skip(name, module):
            report.skipped.append(name)
        else:
            _check_fits(name, module, config)
            targets.append((name, module))
    if config.method == "gptq":
        quantized = gptq_quantize_layers(model, targets, calibration, config)

        def replacement(name, module):
            return QuantizedLinear.from_quantized(module, config, quantized[name])
    else:
        importance = collect_importance(model, calibration, dict(targets)) if calibration is not None and targets else {}

        def replacement(name, module):
            return QuantizedLinear.from_linear(module, config, importance=importance.get(name))
    # Every layer was checked and calibrated above, so an error leaves the model untouched.
    for name, module in targets:
        layer = replacement(name, module)
        report.weight_bytes_before += module.weight.numel() * 4
        report.weight_bytes_after += layer.nbytes
        _replace(model, name, layer)
        report.layers.append(name)
    report.model_bytes_after = _model_bytes(model)
    return report


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's state (quantized layers included) to a safetensors file; the
    layers' configs go in its metadata. The file appears complete or not at all."""
    from safetensors.torch import save_file

    layers = {name: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
                     "config": m.config.to_json()}
              for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if v is not None}
    metadata = {_METADATA_KEY: json.dumps({"version": _FORMAT_VERSION, "layers": layers})}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file written by save() into `model` (the same architecture, quantized or
    not): its Linear layers named in the file become QuantizedLinear; exact round trip."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if _METADATA_KEY not in metadata:
        raise ValueError(f"argument 'path': expected a file written by pocketml.quant.save, got {str(path)!r} "
                         f"without '{_METADATA_KEY}' metadata")
    info = json.loads(metadata[_METADATA_KEY])
    if info.get("version") != _FORMAT_VERSION:
        raise ValueError(f"argument 'path': expected format version {_FORMAT_VERSION}, got {info.get('version')!r}")
    for name, spec in info["layers"].items():
        config = QuantConfig.from_json(spec["config"])
        _replace(model, name, QuantizedLinear.empty(spec["in_features"], spec["out_features"], spec["bias"], config))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model
