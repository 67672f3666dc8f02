"""Core ML export: the .mlpackage carries pocketml's own compressed weights, and
coremltools decompresses them to exactly what QuantizedTensor.dequantize() gives."""

import sys

import numpy as np
import pytest
import torch

from pocketml import models
from pocketml.export.coreml import inspect_coreml, to_coreml
from pocketml.quant import QuantConfig, quantize_model
from pocketml.quant.linear import QuantizedLinear

pytest.importorskip("coremltools")

CONFIGS = {
    "int4-g32": QuantConfig(bits=4, group_size=32),
    "int8-row-sym": QuantConfig(bits=8, group_size=None, symmetric=True),
    "int3-g64": QuantConfig(bits=3, group_size=64),
    "int6-g32": QuantConfig(bits=6, group_size=32),
    "lut4": QuantConfig(bits=4, method="kmeans"),
    "lut2-per-8-rows": QuantConfig(bits=2, method="kmeans", lut_group_size=8),
}


def mlp(config_names):
    torch.manual_seed(0)
    dims = [64, 96, 64, 32, 48, 16, 24]
    layers = []
    for i, name in enumerate(config_names):
        linear = torch.nn.Linear(dims[i], dims[i + 1])
        layers += [QuantizedLinear.from_linear(linear, CONFIGS[name]), torch.nn.GELU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


def assert_weights_identical(model, path, precision):
    weights = list(inspect_coreml(path).values())
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(weights) == len(layers)
    for layer in layers:
        expected = np.asarray(layer.qweight().dequantize(precision))
        matches = [op_type for op_type, w in weights
                   if w.shape == expected.shape and w.dtype == expected.dtype and np.array_equal(
                       w.view(np.uint8), expected.view(np.uint8))]
        kind = "constexpr_blockwise_shift_scale" if layer.kind == "affine" else "constexpr_lut_to_dense"
        assert matches == [kind], f"{layer}: no bit-identical {kind} in the package"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_format_exports_bit_identical_weights(tmp_path, precision):
    model = mlp(list(CONFIGS))
    export = to_coreml(model, torch.randn(3, 64), tmp_path / "mlp.mlpackage", compute_precision=precision)
    assert export.path.is_dir() and (export.path / "Manifest.json").exists()
    assert sorted(export.compressed_layers.values()).count("constexpr_lut_to_dense") == 2
    assert_weights_identical(model, export.path, precision)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction runs on macOS only")
def test_prediction_matches_pocketml(tmp_path):  # pragma: no cover - macOS only
    import coremltools as ct

    model = mlp(["int4-g32", "lut4"])
    x = torch.randn(3, 64)
    export = to_coreml(model, x, tmp_path / "mlp.mlpackage", input_names=["x"])
    out = list(ct.models.MLModel(str(export.path)).predict({"x": x.numpy()}).values())[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_real_encoder_exports_every_layer_bit_identical(tmp_path):
    model, tokenizer = models.load_encoder()
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, QuantizedLinear.from_linear(module, CONFIGS["int4-g32"]))
    batch = tokenizer(models.SAMPLE_SENTENCES[:2], padding="max_length", max_length=32, return_tensors="pt")
    export = to_coreml(models.export_encoder(model), (batch["input_ids"], batch["attention_mask"]),
                       tmp_path / "minilm.mlpackage", input_names=["input_ids", "attention_mask"])
    assert len(export.compressed_layers) == 36  # 6 layers x (q, k, v, out, up, down)
    assert export.unused_layers == ["encoder.pooler.dense"]  # last_hidden_state never reaches the pooler
    model.pooler = None
    assert_weights_identical(model, export.path, "fp32")


def test_bad_arguments(tmp_path):
    model = mlp(["int4-g32"])
    x = torch.randn(1, 64)
    with pytest.raises(ValueError, match="argument 'path': expected a path ending in .mlpackage"):
        to_coreml(model, x, tmp_path / "m.mlmodel")
    with pytest.raises(ValueError, match="argument 'compute_precision'"):
        to_coreml(model, x, tmp_path / "m.mlpackage", compute_precision="int8")
    with pytest.raises(ValueError, match="argument 'minimum_deployment_target': expected iOS18 or later"):
        to_coreml(model, x, tmp_path / "m.mlpackage", minimum_deployment_target="iOS17")
    (tmp_path / "exists.mlpackage").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        to_coreml(model, x, tmp_path / "exists.mlpackage")
    with pytest.raises(TypeError, match="argument 'example_inputs'"):
        to_coreml(model, (x, 3), tmp_path / "m.mlpackage")
    with pytest.raises(ValueError, match=r"argument 'input_names': expected one name per example input \(1\), got 2"):
        to_coreml(model, x, tmp_path / "m.mlpackage", input_names=["a", "b"])
    with pytest.raises(TypeError, match="argument 'input_names': expected a list of strings, got 'xy'"):
        to_coreml(model, x, tmp_path / "m.mlpackage", input_names="xy")  # would name the input 'x'
    with pytest.raises(TypeError, match="argument 'output_names': expected a list of strings"):
        to_coreml(model, x, tmp_path / "m.mlpackage", output_names=[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.mlpackage"]  # nothing half-written


def test_deployment_target_by_name_or_coremltools_member(tmp_path):
    import coremltools as ct

    model = mlp(["int4-g32"])
    export = to_coreml(model, torch.randn(1, 64), tmp_path / "m.mlpackage", minimum_deployment_target=ct.target.iOS18)
    assert export.minimum_deployment_target == "iOS18"
    export = to_coreml(model, torch.randn(1, 64), tmp_path / "mac.mlpackage", minimum_deployment_target="macOS15")
    assert export.minimum_deployment_target == "macOS15"  # an alias of the member named iOS18
    with pytest.raises(ValueError, match="argument 'minimum_deployment_target'"):
        to_coreml(model, torch.randn(1, 64), tmp_path / "n.mlpackage", minimum_deployment_target=ct.target.iOS17)


class _ConstantMinusLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 32)
        self.register_buffer("offset", torch.arange(32.0))

    def forward(self, x):
        return self.offset - self.linear(x)  # coremltools' fuse_linear_bias would negate the weight


def test_a_layer_subtracted_from_a_constant_stays_compressed(tmp_path):
    torch.manual_seed(0)
    model = _ConstantMinusLayer().eval()
    quantize_model(model, QuantConfig(bits=4, group_size=32))
    export = to_coreml(model, torch.randn(2, 64), tmp_path / "m.mlpackage")
    assert export.compressed_layers == {"linear": "constexpr_blockwise_shift_scale"} and export.unused_layers == []
    assert_weights_identical(model, tmp_path / "m.mlpackage", "fp32")


class _ZeroInitialised(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.up = torch.nn.Linear(64, 32), torch.nn.Linear(32, 64)
        torch.nn.init.zeros_(self.down.weight)  # zero-initialised projections, as adapters start
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return x + self.up(torch.relu(self.down(x)))


@pytest.mark.parametrize("plain", [None, "up"])
def test_equal_bytes_of_different_shapes_are_different_weights(tmp_path, plain):
    # Both weights are zeros: their bytes agree, their shapes (32, 64) and (64, 32) do not.
    model = _ZeroInitialised().eval()
    quantize_model(model, QuantConfig(bits=4, group_size=32), skip=lambda name, module: name == plain)
    export = to_coreml(model, torch.randn(2, 64), tmp_path / "m.mlpackage")
    quantized = sorted({"down", "up"} - {plain})
    assert sorted(export.compressed_layers) == quantized and export.unused_layers == []
    assert_weights_identical(model, tmp_path / "m.mlpackage", "fp32")


def test_equal_weights_in_different_compressed_forms_are_refused(tmp_path):
    # coremltools keeps one constant for equal weights, so one layer would lose its compressed form.
    layers = [torch.nn.Linear(64, 64) for _ in range(2)]
    for layer in layers:
        torch.nn.init.zeros_(layer.weight)
    model = torch.nn.Sequential(QuantizedLinear.from_linear(layers[0], QuantConfig(bits=4, group_size=32)),
                                QuantizedLinear.from_linear(layers[1], QuantConfig(bits=2, method="kmeans"))).eval()
    with pytest.raises(ValueError, match="layers '0' and '1' hold equal weights in different compressed forms"):
        to_coreml(model, torch.randn(2, 64), tmp_path / "m.mlpackage")
    assert list(tmp_path.iterdir()) == []


def test_fp16_refuses_scales_it_would_round(tmp_path):
    model = mlp(["int4-g32"])
    model[0] = QuantizedLinear.from_linear(torch.nn.Linear(64, 96), QuantConfig(bits=4, group_size=32,
                                                                               scale_dtype="fp32"))
    with pytest.raises(ValueError, match="not exactly representable in fp16"):
        to_coreml(model, torch.randn(1, 64), tmp_path / "m.mlpackage", compute_precision="fp16")
    assert list(tmp_path.iterdir()) == []


class _SharedHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(64, 64)])
        self.head = self.blocks[0]  # one layer under two names, as quantize_model keeps it

    def forward(self, x):
        return self.head(torch.relu(self.blocks[0](x)))


def test_shared_layers_half_models_and_dangling_links(tmp_path):
    # The second name of a shared layer kept pocketml's custom op, which Core ML cannot convert;
    # a half-precision model met fp32 stand-ins; a dangling symlink was replaced without overwrite.
    shared = _SharedHead().eval()
    quantize_model(shared, QuantConfig(bits=4, group_size=32))
    export = to_coreml(shared, torch.randn(2, 64), tmp_path / "shared.mlpackage")
    assert set(export.compressed_layers) == {"blocks.0", "head"} and export.unused_layers == []
    assert_weights_identical(shared, export.path, "fp32")
    half = mlp(["int4-g32", "lut4"]).half()
    export = to_coreml(half, torch.randn(2, 64, dtype=torch.float16), tmp_path / "half.mlpackage")
    assert export.inputs and len(export.compressed_layers) == 2
    assert_weights_identical(half, export.path, "fp32")
    assert next(half.parameters()).dtype == torch.float16  # the caller's model is left as it was
    link = tmp_path / "link.mlpackage"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="exists"):
        to_coreml(half, torch.randn(2, 64, dtype=torch.float16), link)
    assert link.is_symlink()
