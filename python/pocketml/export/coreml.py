"""Core ML export with pocketml's exact compressed weights.

The model is traced with each QuantizedLinear replaced by an nn.Linear holding
its dequantized weight; after coremltools converts the trace, every weight
constant that equals a quantized layer's dequantized weight is replaced by a
compressed constant op carrying that layer's own codes, scales and tables:

* affine -> ``constexpr_blockwise_shift_scale(data, scale, offset)``, iOS18;
* LUT    -> ``constexpr_lut_to_dense(indices, lut)``, iOS18.

Nothing is re-quantized: Core ML decompresses to the values
``QuantizedTensor.dequantize()`` returns, bit for bit (see inspect_coreml).
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketml._publish import publish, staged_directory
from pocketml.quant.linear import QuantizedLinear

_PRECISIONS = ("fp32", "fp16")


@dataclass
class CoreMLExport:
    path: Path
    compressed_layers: dict = field(default_factory=dict)  # layer name -> Core ML op type
    unused_layers: list = field(default_factory=list)  # quantized layers whose output the exported graph drops
    minimum_deployment_target: str = "iOS18"
    compute_precision: str = "fp32"
    inputs: list = field(default_factory=list)  # feature names of the model's inputs and outputs
    outputs: list = field(default_factory=list)


class _TensorOutputs(nn.Module):
    """Traceable view of a model whose forward returns a ModelOutput or dict."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        out = self.model(*inputs)
        if hasattr(out, "to_tuple"):
            out = out.to_tuple()
        elif isinstance(out, dict):
            out = tuple(out.values())
        return out


def _weight_key(weight: np.ndarray) -> str:
    # Shape and dtype too: zero-initialised layers of different shapes have equal bytes.
    weight = np.ascontiguousarray(weight)
    return hashlib.sha256(f"{weight.dtype.str}{weight.shape}".encode() + weight.tobytes()).hexdigest()


def _dequantized_copy(model: nn.Module, precision: str):
    """A copy of `model` in fp32 (Core ML's inputs are fp32; compute_precision sets its
    arithmetic) with QuantizedLinear layers as nn.Linear, and the layers by the key of
    their weight as coremltools will hold it (fp32, or fp16 after its cast), and the keys
    of the other 2-D parameters as held. A layer reachable under several names becomes
    one nn.Linear under all of them."""
    export = copy.deepcopy(model).eval().float()
    by_key, stand_ins = {}, {}
    for name, module in list(export.named_modules(remove_duplicate=False)):
        if not isinstance(module, QuantizedLinear):
            continue
        qweight = module.qweight()
        weight = np.asarray(qweight.dequantize("fp32"))
        if module not in stand_ins:
            stand_ins[module] = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                stand_ins[module].weight.copy_(torch.from_numpy(weight))
                if module.bias is not None:
                    stand_ins[module].bias.copy_(module.bias.detach().float())
        parent_name, _, child = name.rpartition(".")
        setattr(export.get_submodule(parent_name) if parent_name else export, child, stand_ins[module])
        held = weight if precision == "fp32" else np.asarray(qweight.dequantize("fp16"))
        sharing = by_key.setdefault(_weight_key(held), [])
        if sharing and not _same_compressed_form(sharing[0][1], qweight):
            # coremltools keeps one constant for equal weights: only one compressed form could survive.
            raise ValueError(f"argument 'model': layers {sharing[0][0]!r} and {name!r} hold equal weights in "
                             "different compressed forms, which one Core ML constant cannot carry both of")
        sharing.append((name, qweight))
    # The plain 2-D weights as coremltools will hold them, which must not pass for a
    # quantized weight's transposed or negated copy (zero-initialised layers do).
    held_dtype = torch.float32 if precision == "fp32" else torch.float16
    plain_keys = {_weight_key(p.detach().to(held_dtype).numpy()) for p in export.parameters()
                  if p.ndim == 2 and not any(p is linear.weight for linear in stand_ins.values())}
    return export, by_key, plain_keys


def _same_compressed_form(a, b) -> bool:
    arrays_a, arrays_b = a.to_coreml(), b.to_coreml()
    return arrays_a.keys() == arrays_b.keys() and all(
        np.asarray(arrays_a[key]).dtype == np.asarray(arrays_b[key]).dtype
        and np.array_equal(np.asarray(arrays_a[key]), np.asarray(arrays_b[key])) for key in arrays_a)


def _float_values(array, dst_dtype, what: str):
    """`array` as dst_dtype, refusing a rounding that would change decompressed weights."""
    values = np.asarray(array.float() if isinstance(array, torch.Tensor) else array, dtype=np.float32)
    cast = values.astype(dst_dtype)
    if not np.array_equal(cast.astype(np.float32), values):
        raise ValueError(f"compute_precision 'fp16': the {what} are not exactly representable in fp16; "
                         "quantize with scale_dtype='fp16' or export with compute_precision='fp32'")
    return cast


def _compressed_op(mb, types, qweight, op, dst_dtype):
    """Builds the compressed constant for one layer before `op`."""
    arrays = qweight.to_coreml()
    name = op.name + "_pocketml"
    if qweight.kind == "affine":
        storage = types.np_uint4_dtype if qweight.bits <= 4 else np.uint8
        scale = _float_values(arrays["scale"], dst_dtype, "scales")
        return mb.constexpr_blockwise_shift_scale(data=arrays["data"].astype(storage), scale=scale,
                                                  offset=arrays["offset"].astype(storage), before_op=op, name=name)
    storage = {1: types.np_uint1_dtype, 2: types.np_uint2_dtype, 3: types.np_uint3_dtype, 4: types.np_uint4_dtype,
               6: types.np_uint6_dtype, 8: np.uint8}[qweight.bits]
    lut = _float_values(arrays["lut"], dst_dtype, "lookup tables")
    return mb.constexpr_lut_to_dense(indices=arrays["indices"].astype(storage), lut=lut, before_op=op, name=name)


def _inject_weights(prog, by_key: dict, dst_dtype) -> dict:
    """Replaces matching weight constants in every function of `prog`."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    replaced = {}
    for function in prog.functions.values():
        for op in list(function.operations):
            value = op.outputs[0].val if op.op_type == "const" else None
            if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype != dst_dtype:
                continue
            layers = by_key.get(_weight_key(value))
            if not layers:
                continue
            qweight = layers[0][1]
            # Keep the source scopes conversion requires; graph-pass history stays behind.
            scopes = [ScopeInfo(source=s, data=d) for s, d in op.scopes.items()
                      if s != ScopeSource.COREMLTOOLS_GRAPH_PASS]
            with function, mb.scope(*scopes):
                compressed = _compressed_op(mb, types, qweight, op, dst_dtype)
            function.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=compressed,
                                                  no_check_var_types=True)
            function.remove_ops([op])
            for layer_name, _ in layers:
                replaced[layer_name] = compressed.op.op_type
    return replaced


def _refuse_uncompressed_copies(prog, by_key: dict, plain_keys: set) -> None:
    """A quantized weight must not survive in plain form, e.g. transposed or negated by a graph pass."""
    for function in prog.functions.values():
        for op in function.operations:
            value = op.outputs[0].val if op.op_type == "const" else None
            if isinstance(value, np.ndarray) and value.ndim == 2 and _weight_key(value) not in plain_keys:
                layers = next((by_key[key] for form in (value, value.T, -value, -value.T)
                               if (key := _weight_key(form)) in by_key), None)
                if layers:
                    raise RuntimeError(f"Core ML export: the weight of {layers[0][0]} reached the program in a "
                                       f"form pocketml cannot replace (const {op.name}, shape {value.shape})")


def _feature_names(names, arg: str, count=None):
    """`names` as a list of strings (None: coremltools' defaults), `count` of them when given."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"argument '{arg}': expected a list of strings, got {names!r}")
    names = list(names)
    if count is not None and len(names) != count:
        raise ValueError(f"argument '{arg}': expected one name per example input ({count}), got {len(names)}")
    return names


def _deployment_target(ct, target):
    """A coremltools target from its name ('iOS18') or the ct.target member itself."""
    found = ct.target.__members__.get(target) if isinstance(target, str) else target
    if not isinstance(found, ct.target) or found.value < ct.target.iOS18.value:
        raise ValueError(f"argument 'minimum_deployment_target': expected iOS18 or later (compressed ops need it), "
                         f"got {target!r}")
    return found


def _input_types(ct, example_inputs, input_names):
    specs = []
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"argument 'example_inputs': expected torch tensors, got {type(x).__name__} at {i}")
        dtype = np.int32 if not x.dtype.is_floating_point else np.float32
        specs.append(ct.TensorType(name=input_names[i] if input_names else f"input_{i}", shape=tuple(x.shape),
                                   dtype=dtype))
    return specs


def to_coreml(model: nn.Module, example_inputs, path, *, minimum_deployment_target: str = "iOS18",
              compute_precision: str = "fp32", input_names=None, output_names=None,
              overwrite: bool = False) -> CoreMLExport:
    """Convert `model` (its Linear layers quantized by pocketml) into an .mlpackage at `path`.

    example_inputs: a tensor or tuple of tensors for tracing (their shapes become the
    model's input shapes; integer inputs are declared int32, float ones fp32, and an
    fp16 / bf16 model is traced from an fp32 copy). compute_precision
    "fp32" keeps every decompressed weight equal to ``qt.dequantize('fp32')``;
    "fp16" decompresses to fp16 (equal to ``qt.dequantize('fp16')``).
    minimum_deployment_target: a name ("iOS18", "macOS15", ...) or a ``ct.target``
    member, iOS18 or later. input_names: one per example input; output_names: one per
    output (coremltools' names when None).
    """
    import coremltools as ct

    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"argument 'path': expected a path ending in .mlpackage, got {str(path)!r}")
    if os.path.lexists(path) and not overwrite:  # lexists: a dangling symlink is there too
        raise FileExistsError(f"argument 'path': {str(path)!r} exists (pass overwrite=True to replace it)")
    if compute_precision not in _PRECISIONS:
        raise ValueError(f"argument 'compute_precision': expected one of {', '.join(_PRECISIONS)}, "
                         f"got {compute_precision!r}")
    target = _deployment_target(ct, minimum_deployment_target)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    input_names = _feature_names(input_names, "input_names", len(example_inputs))
    output_names = _feature_names(output_names, "output_names")
    input_types = _input_types(ct, example_inputs, input_names)

    export, by_key, plain_keys = _dequantized_copy(model, compute_precision)
    quantized_names = {name for layers in by_key.values() for name, _ in layers}
    with torch.no_grad():  # float inputs as Core ML declares them: fp32
        traced = torch.jit.trace(_TensorOutputs(export).eval(),
                                 tuple(x.float() if x.is_floating_point() else x for x in example_inputs), strict=False)
    precision = ct.precision.FLOAT32 if compute_precision == "fp32" else ct.precision.FLOAT16
    outputs = [ct.TensorType(name=name) for name in output_names] if output_names else None
    # fuse_linear_bias folds `c - linear(x)` into a linear with the negated weight,
    # which no compressed constant carries: the layer would ship uncompressed.
    passes = ct.PassPipeline.DEFAULT
    passes.remove_passes(["common::fuse_linear_bias"])
    prog = ct.convert(traced, inputs=input_types, outputs=outputs, convert_to="milinternal",
                      minimum_deployment_target=target, compute_precision=precision, pass_pipeline=passes)
    replaced = _inject_weights(prog, by_key, np.float32 if compute_precision == "fp32" else np.float16)
    _refuse_uncompressed_copies(prog, by_key, plain_keys)
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, compute_precision=precision,
                         pass_pipeline=passes)

    with staged_directory(path, path.stem) as staging:
        mlmodel.save(str(staging / path.name))
        publish(staging / path.name, path)
    description = mlmodel.get_spec().description
    # The caller's name: macOS15, watchOS11 and tvOS18 are aliases of the member named iOS18.
    target_name = minimum_deployment_target if isinstance(minimum_deployment_target, str) else target.name
    return CoreMLExport(path, replaced, sorted(quantized_names - set(replaced)), target_name,
                        compute_precision, [f.name for f in description.input], [f.name for f in description.output])


def inspect_coreml(path) -> dict:
    """The compressed weights of a saved .mlpackage, decompressed by coremltools'
    reference implementation: op name -> (op type, NumPy array)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    prog = load_milproto(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    weights = {}
    for function in prog.functions.values():
        for op in function.operations:
            if op.op_type in ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"):
                weights[op.name] = (op.op_type, op.materialized_val_inference())
    return weights
