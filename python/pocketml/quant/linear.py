"""QuantizedLinear: a drop-in nn.Linear whose weight is a QuantizedTensor."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from pocketml._arrays import canonical_dtype
from pocketml._native import core
from pocketml.quant.config import QuantConfig
from pocketml.quant.tensor import QuantizedTensor, matmul, palettize, quantize

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ARRAYS = ("packed", "scales", "zero_points", "lut")


def _to_torch(array):
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(array)


def _input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dx = dy @ W for the dequantized fp32 weight W, in dy's dtype."""
    return (grad_out.float() @ weight).to(grad_out.dtype)


class _QuantizedMatmul(torch.autograd.Function):
    """y = x @ W^T on the native kernel; dx = dy @ W with W dequantized on the fly (W is frozen)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.qweight = layer.qweight()
        # Saved so that autograd refuses a backward after the arrays changed in place
        # (load_state_dict), as nn.Linear's does: the gradient would use the new weight.
        ctx.save_for_backward(*(layer._buffers[name] for name in _ARRAYS if layer._buffers[name] is not None))
        return matmul(x, ctx.qweight, act_bits=layer.config.act_bits)

    @staticmethod
    def backward(ctx, grad_out):
        ctx.saved_tensors  # noqa: B018 - the version check
        return _input_grad(grad_out, torch.from_numpy(ctx.qweight.dequantize("fp32"))), None


def _check_matches(linear: nn.Linear, config: QuantConfig, qweight: QuantizedTensor) -> None:
    """qweight must be `linear`'s shape in `config`'s format: save() records the config and
    load() rebuilds the arrays' shapes from it."""
    kmeans = config.method == "kmeans"
    table = qweight.lut if kmeans else qweight.scales
    expected = {"shape": (linear.out_features, linear.in_features), "kind": "lut" if kmeans else "affine",
                "bits": config.bits,
                "group_size": (config.lut_group_size or linear.out_features) if kmeans
                else (config.group_size or linear.in_features),
                "symmetric": False if kmeans else config.symmetric, "scale_dtype": config.scale_dtype}
    got = {"shape": tuple(qweight.shape), "kind": qweight.kind, "bits": qweight.bits, "group_size": qweight.group_size,
           "symmetric": qweight.symmetric, "scale_dtype": None if table is None else canonical_dtype(table.dtype)}
    wrong = [f"{key} {got[key]!r} (expected {value!r})" for key, value in expected.items() if got[key] != value]
    if wrong:
        raise ValueError(f"argument 'qweight': expected the layer's shape in the config's format, "
                         f"got {', '.join(wrong)}")


# The layer as one operator of torch's graphs (torch.compile, torch.jit.trace, torch.export),
# which a call into the native core outside torch cannot be. Eager calls skip it: a Python
# custom op's dispatch and per-call exports doubled a 384x384 layer's forward at M = 8 (67 us against 31).
@torch.library.custom_op("pocketml::quantized_linear", mutates_args=())
def _quantized_linear(x: torch.Tensor, packed: torch.Tensor, scales: Optional[torch.Tensor],
                      zero_points: Optional[torch.Tensor], lut: Optional[torch.Tensor], kind: str, bits: int,
                      group_size: int, in_features: int, out_features: int, act_bits: int) -> torch.Tensor:
    _check_input_width(x, in_features)
    x = x.contiguous()
    out = torch.empty(x.shape[:-1] + (out_features,), dtype=x.dtype)
    core.quant_matmul(x, kind, bits, in_features, group_size, packed, scales, zero_points, lut, out, act_bits)
    return out


def _check_input_width(x, in_features):
    torch._check(x.shape[-1] == in_features, lambda: f"argument 'input': expected a last dimension of "
                                                      f"in_features = {in_features}, got shape {tuple(x.shape)}")


@_quantized_linear.register_fake
def _(x, packed, scales, zero_points, lut, kind, bits, group_size, in_features, out_features, act_bits):
    _check_input_width(x, in_features)
    return x.new_empty(x.shape[:-1] + (out_features,))


def _quantized_linear_context(ctx, inputs, output):
    x, packed, scales, zero_points, lut, kind, bits, group_size, in_features, out_features, _ = inputs
    ctx.save_for_backward(packed, scales, zero_points, lut)
    ctx.format = (kind, bits, in_features, group_size, out_features)


@torch.library.custom_op("pocketml::dequantize", mutates_args=())
def _dequantize(packed: torch.Tensor, scales: Optional[torch.Tensor], zero_points: Optional[torch.Tensor],
                lut: Optional[torch.Tensor], kind: str, bits: int, group_size: int, rows: int,
                cols: int) -> torch.Tensor:
    weight = torch.empty(rows, cols, dtype=torch.float32)
    core.quant_dequantize(kind, bits, cols, group_size, packed, scales, zero_points, lut, weight)
    return weight


@_dequantize.register_fake
def _(packed, scales, zero_points, lut, kind, bits, group_size, rows, cols):
    return packed.new_empty((rows, cols), dtype=torch.float32)


def _quantized_linear_backward(ctx, grad_out):  # traced too (AOT autograd): torch ops and custom ops only
    kind, bits, cols, group_size, rows = ctx.format
    weight = torch.ops.pocketml.dequantize(*ctx.saved_tensors, kind, bits, group_size, rows, cols)
    return (_input_grad(grad_out, weight),) + (None,) * 10


_quantized_linear.register_autograd(_quantized_linear_backward, setup_context=_quantized_linear_context)


class QuantizedLinear(nn.Module):
    """Behaves like the nn.Linear it replaces: y = x @ W^T + b for x [..., in_features]
    in fp32, fp16 or bf16 (the result keeps x's dtype); gradients flow to x and to the
    bias, the quantized weight is frozen. Its arrays are buffers (state_dict, save/load).
    `weight` is a tensor on the meta device with the weight's shape and dtype, for
    code that reads Linear.weight's metadata (torch's TransformerEncoderLayer does in
    eval mode, and then keeps to its plain path, which calls this forward); the values
    are `qweight().dequantize()`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantConfig, qweight: QuantizedTensor):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.kind, self.bits, self.group_size = qweight.kind, qweight.bits, qweight.group_size
        self._qweight, self._qweight_key = None, None
        for name in _ARRAYS:
            array = getattr(qweight, name)
            self.register_buffer(name, None if array is None else _to_torch(array))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig | None = None, importance=None) -> "QuantizedLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"argument 'linear': expected a torch.nn.Linear, got {type(linear).__name__}")
        config = config or QuantConfig()
        if config.method == "gptq":
            raise ValueError("argument 'config': expected a method that needs no calibration data here, got 'gptq' "
                             "(quantize_model(model, config, calibration=...) runs it)")
        weight = linear.weight.detach().float()
        if config.method == "kmeans":
            qweight = palettize(weight, config.bits, config.lut_group_size, config.seed, importance=importance,
                                lut_dtype=config.scale_dtype)
        else:
            qweight = quantize(weight, config.bits, config.group_size, config.symmetric, config.method,
                               config.scale_dtype, importance=importance)
        return cls.from_quantized(linear, config, qweight)

    @classmethod
    def from_quantized(cls, linear: nn.Linear, config: QuantConfig, qweight: QuantizedTensor) -> "QuantizedLinear":
        """The layer replacing `linear` with the weight `qweight`, quantized as `config` says."""
        _check_matches(linear, config, qweight)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, config, qweight)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, config: QuantConfig) -> "QuantizedLinear":
        """A layer of the right shapes to load a state_dict into."""
        linear = nn.Linear(in_features, out_features, bias=bias)
        with torch.no_grad():
            linear.weight.zero_()
        # GPTQ's arrays have the shapes of the same format rounded to nearest.
        shapes = replace(config, method="rtn") if config.method == "gptq" else config
        layer = cls.from_linear(linear, shapes)
        layer.config = config
        return layer

    def _apply(self, fn, recurse=True):
        # module.half() / .to(dtype) cast the bias; the stored format keeps its dtypes (re-rounding
        # fp16 scales to bf16 would change the weight, and fp64 scales no kernel reads).
        kept = {name: self._buffers[name] for name in _ARRAYS if self._buffers[name] is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        return self

    def __getstate__(self):  # pickles carry the buffers, not the cached view of them
        state = self.__dict__.copy()
        state["_qweight"], state["_qweight_key"] = None, None
        return state

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._qweight_key = None  # same memory, new values: rebuild, and check the new scales, on the next call

    def qweight(self) -> QuantizedTensor:
        """The weight as a QuantizedTensor viewing the buffers' memory. Built once and
        kept while the buffers are the same memory (load_state_dict copies into them;
        .to(), deepcopy and reassignment make new ones), since building it costs as
        much as a small layer's matmul."""
        buffers = tuple(self._buffers[name] for name in _ARRAYS)
        device = self._buffers["packed"].device
        if device.type != "cpu":
            raise ValueError(f"QuantizedLinear: expected the layer's buffers on the CPU, where its kernels run, "
                             f"got them on {device}")
        key = tuple(None if t is None else (t.data_ptr(), t.dtype, t.shape) for t in buffers)
        if self._qweight_key != key:
            views = [None if t is None else t if t.dtype == torch.bfloat16 else t.numpy() for t in buffers]
            self._qweight = QuantizedTensor(self.kind, self.bits, (self.out_features, self.in_features),
                                            self.group_size, *views)
            self._qweight_key = key
        return self._qweight

    def _forward_nested(self, x: torch.Tensor) -> torch.Tensor:
        """forward on each part (this call's hooks run once, for the whole). A jagged tensor
        keeps its offsets, hence its ragged dimension: x + layer(x) still adds."""
        if x.layout == torch.jagged:
            return torch.nested.nested_tensor_from_jagged(self.forward(x.values()), offsets=x.offsets(),
                                                          lengths=x.lengths(), jagged_dim=x._ragged_idx)
        return torch.nested.as_nested_tensor([self.forward(part) for part in x.unbind()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"argument 'input': expected a torch.Tensor, got {type(x).__name__}")
        if x.is_nested:  # as nn.Linear: nn.TransformerEncoder packs a padded batch so (eval, padding mask)
            return self._forward_nested(x)
        if x.dtype not in _DTYPES:
            raise TypeError(f"argument 'input': expected dtype float32, float16 or bfloat16, got {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"argument 'input': expected a last dimension of in_features = {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if torch.is_autocast_enabled("cpu"):  # as nn.Linear: the matmul runs in (and returns) autocast's dtype
            x = x.to(torch.get_autocast_dtype("cpu"))
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            y = torch.ops.pocketml.quantized_linear(x, self.packed, self.scales, self.zero_points, self.lut, self.kind,
                                                    self.bits, self.group_size, self.in_features,
                                                    self.out_features, self.config.act_bits or 0)
        elif torch.is_grad_enabled() and x.requires_grad:
            y = _QuantizedMatmul.apply(x, self)
        else:  # nothing to differentiate: skip the autograd function's bookkeeping
            y = matmul(x, self.qweight(), act_bits=self.config.act_bits)
        if self.bias is None:
            return y
        # .to() costs a microsecond even when the dtype already matches.
        return y + (self.bias if self.bias.dtype == y.dtype else self.bias.to(y.dtype))

    @property
    def weight(self) -> torch.Tensor:
        dtype = self.bias.dtype if self.bias is not None else torch.float32
        return torch.empty((self.out_features, self.in_features), dtype=dtype, device="meta")

    @property
    def nbytes(self) -> int:
        """The quantized weight's bytes (read from the buffers' metadata: a layer on the meta device has them too)."""
        return sum(t.numel() * t.element_size() for name in _ARRAYS if (t := self._buffers[name]) is not None)

    def extra_repr(self) -> str:
        detail = (f"group_size={self.group_size}, symmetric={self.zero_points is None}" if self.kind == "affine"
                  else f"tables={self.lut.shape[0]}")
        activations = "" if self.config.act_bits is None else f", act_bits={self.config.act_bits}"
        bits_per_weight = 8.0 * self.nbytes / (self.in_features * self.out_features)
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kind={self.kind}, bits={self.bits}, {detail}, bits_per_weight={bits_per_weight:.3f}{activations}")
