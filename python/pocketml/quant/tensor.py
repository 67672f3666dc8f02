"""QuantizedTensor: a weight [N, K] stored as packed codes plus scales or a LUT.

Formats (byte-level spec in docs/formats.md):

* affine: ``w[n, k] = scale[n, k // group_size] * (code[n, k] - zero_point[n, k // group_size])``,
  Core ML's ``constexpr_blockwise_shift_scale``; symmetric tensors store no zero points
  (they are ``2 ** (bits - 1)``).
* lut: ``w[n, k] = lut[n // group_size][code[n, k]]``, Core ML's ``constexpr_lut_to_dense``.

Arrays are NumPy, except bf16 ones, which are torch tensors (NumPy has no bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketml._arguments import bool_argument, integer_argument
from pocketml._arrays import FLOAT_DTYPES, canonical_dtype, describe_type, empty_like, is_torch_tensor
from pocketml._native import core

AFFINE_BITS = (2, 3, 4, 5, 6, 8)
LUT_BITS = (1, 2, 3, 4, 6, 8)
GROUP_SIZES = (32, 64, 128)
CODES_PER_CHUNK = 32


def packed_row_bytes(cols: int, bits: int) -> int:
    """Bytes of one packed row: whole chunks of 32 codes, 4 * bits bytes each."""
    return -(-cols // CODES_PER_CHUNK) * 4 * bits


def _float_array(shape, dtype: str):
    if dtype == "bf16":
        import torch

        return torch.empty(tuple(shape), dtype=torch.bfloat16)
    return np.empty(tuple(shape), dtype={"fp32": np.float32, "fp16": np.float16}[dtype])


def _float_dtype(x, arg: str) -> str:
    """'fp32', 'fp16' or 'bf16' for x's dtype, else a TypeError naming the argument."""
    try:
        dtype = canonical_dtype(x.dtype, arg)
    except TypeError:
        dtype = None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"argument '{arg}': expected dtype fp32, fp16 or bf16, got {str(x.dtype).removeprefix('torch.')}")
    return dtype


def _as_weight(w, arg="w"):
    """A contiguous 2-D float array (NumPy or CPU torch) without autograd history."""
    if is_torch_tensor(w):
        w = w.detach()
        if w.device.type != "cpu":
            raise ValueError(f"argument '{arg}': expected a CPU tensor, got a tensor on {w.device}")
        w = w.contiguous()
    elif isinstance(w, np.ndarray):
        w = np.ascontiguousarray(w)
    else:
        raise TypeError(f"argument '{arg}': expected a NumPy array or torch tensor, got {describe_type(w)}")
    _float_dtype(w, arg)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"argument '{arg}': expected a non-empty 2-D weight [out_features, in_features], "
                         f"got shape {tuple(w.shape)}")
    return w


def _check_choice(arg, value, choices):
    """`value` if it is one of `choices`; where those are ints, NumPy integers count and 4.0 does not."""
    if value is not None and any(isinstance(choice, int) for choice in choices):
        value = integer_argument(value, arg)
    if value not in choices:
        raise ValueError(f"argument '{arg}': expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _check_array(arg, array, dtypes, shape):
    """`array` must be a NumPy array or torch tensor of one of `dtypes` and of `shape`."""
    if not (isinstance(array, np.ndarray) or is_torch_tensor(array)):
        raise TypeError(f"argument '{arg}': expected a NumPy array or torch tensor, got {describe_type(array)}")
    try:
        dtype = canonical_dtype(array.dtype, arg)
    except TypeError:
        dtype = str(array.dtype).removeprefix("torch.")
    if dtype not in dtypes:
        expected = dtypes[0] if len(dtypes) == 1 else f"{', '.join(dtypes[:-1])} or {dtypes[-1]}"
        raise TypeError(f"argument '{arg}': expected dtype {expected}, got {dtype}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"argument '{arg}': expected shape {tuple(shape)}, got {tuple(array.shape)}")


def _coreml_integers(arrays: dict, name: str, shift: int, low: int, high: int) -> np.ndarray:
    """arrays[name] (integers) plus `shift`, as uint8, when every result lies in [low, high]."""
    if name not in arrays:
        raise ValueError(f"argument 'arrays': expected an entry {name!r}, got keys {sorted(arrays)}")
    values = np.asarray(arrays[name])
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"argument 'arrays': expected integer {name!r}, got dtype {values.dtype}")
    if values.ndim != 2:
        raise ValueError(f"argument 'arrays': expected a 2-D {name!r}, got shape {values.shape}")
    shifted = values.astype(np.int64) + shift
    if values.size and (shifted.min() < low or shifted.max() > high):
        raise ValueError(f"argument 'arrays': expected {name!r} in [{low - shift}, {high - shift}], got values in "
                         f"[{values.min()}, {values.max()}]")
    return shifted.astype(np.uint8)


def _importance(importance):
    if importance is None:
        return None
    if is_torch_tensor(importance):
        importance = importance.detach().cpu().float().numpy()  # NumPy has no bf16
    return np.ascontiguousarray(importance, dtype=np.float32)


@dataclass(eq=False)
class QuantizedTensor:
    """A quantized weight [N, K]. Build with quantize() or palettize()."""

    kind: str                 # "affine" or "lut"
    bits: int
    shape: tuple
    group_size: int           # affine: input channels per scale (K = one per row); lut: output channels per table
    packed: object            # uint8 [N, packed_row_bytes(K, bits)]
    scales: object = None     # affine: [N, K // group_size]
    zero_points: object = None  # affine asymmetric: uint8 [N, K // group_size]
    lut: object = None        # lut: [N // group_size, 2 ** bits]

    def __post_init__(self):
        self.kind = _check_choice("kind", self.kind, ("affine", "lut"))
        self.bits = _check_choice("bits", self.bits, AFFINE_BITS if self.kind == "affine" else LUT_BITS)
        if len(self.shape) != 2:
            raise ValueError(f"argument 'shape': expected (N, K), got {tuple(self.shape)!r}")
        n, k = self.shape = (integer_argument(self.shape[0], "shape", 1), integer_argument(self.shape[1], "shape", 1))
        self.group_size = integer_argument(self.group_size, "group_size", 1)
        _check_array("packed", self.packed, ("uint8",), (n, packed_row_bytes(k, self.bits)))
        if self.kind == "affine":
            if k % self.group_size:
                raise ValueError(f"argument 'group_size': expected a divisor of K = {k}, got {self.group_size}")
            groups = (n, k // self.group_size)
            _check_array("scales", self.scales, FLOAT_DTYPES, groups)
            if self.zero_points is not None:
                _check_array("zero_points", self.zero_points, ("uint8",), groups)
            if self.lut is not None:
                raise ValueError("argument 'lut': expected None for an affine tensor, got a table")
        else:
            if n % self.group_size:
                raise ValueError(f"argument 'group_size': expected a divisor of N = {n}, got {self.group_size}")
            _check_array("lut", self.lut, FLOAT_DTYPES, (n // self.group_size, 1 << self.bits))
            if self.scales is not None or self.zero_points is not None:
                raise ValueError("argument 'scales': expected None for a LUT tensor, got scales or zero points")
        # Padding codes meet zero activations: a non-finite scale would turn them into NaN.
        # The kernels check the (small) LUT on every call; scales only here, once.
        if self.scales is not None:
            self._check_grids()

    def _check_grids(self):
        """Every code of every group decodes to a finite fp32 value: padding (code 0 against
        zero activations) and the int8-activation path's zero-point term read codes that
        no weight uses, and inf * 0 is NaN."""
        scales = self.scales
        scales = scales.detach().cpu().float().numpy() if is_torch_tensor(scales) else np.asarray(scales, np.float32)
        if not np.isfinite(scales).all():
            raise ValueError("argument 'scales': expected finite values, got NaN or infinity")
        zeros = (np.float32(1 << (self.bits - 1)) if self.zero_points is None
                 else np.asarray(self.zero_points.cpu() if is_torch_tensor(self.zero_points) else self.zero_points,
                                 np.float32))
        with np.errstate(over="ignore"):
            extremes = np.maximum(np.abs(scales * -zeros), np.abs(scales * (np.float32((1 << self.bits) - 1) - zeros)))
        if not np.isfinite(extremes).all():
            row, group = np.argwhere(~np.isfinite(extremes))[0]
            raise ValueError(f"argument 'scales': expected scales whose {self.bits}-bit codes all decode within "
                             f"fp32's range, got {scales[row, group]:g} for row {row}, group {group}")

    @property
    def symmetric(self) -> bool:
        return self.kind == "affine" and self.zero_points is None

    def arrays(self) -> dict:
        """The stored arrays by name (the ones that exist)."""
        names = ("packed", "scales", "zero_points", "lut")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                   for a in self.arrays().values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def _native_args(self):
        return (self.kind, self.bits, self.shape[1], self.group_size, self.packed, self.scales, self.zero_points,
                self.lut)

    def dequantize(self, dtype="fp32"):
        """The weight [N, K] as the kernels see it: NumPy for fp32/fp16, torch for bf16."""
        target = canonical_dtype(dtype, "dtype", FLOAT_DTYPES)
        out = _float_array(self.shape, target)
        kind, bits, cols, group_size, packed, scales, zero_points, lut = self._native_args()
        core.quant_dequantize(kind, bits, cols, group_size, packed, scales, zero_points, lut, out)
        return out

    def codes(self) -> np.ndarray:
        """The plain codes uint8 [N, K] (Core ML's data / indices)."""
        out = np.empty(self.shape, dtype=np.uint8)
        core.quant_unpack(self.packed, self.bits, out)
        return out

    def to_coreml(self) -> dict:
        """Plain Core ML arrays: affine -> data, scale, offset (constexpr_blockwise_shift_scale);
        lut -> indices, lut shaped [N // group_size, 1, 2 ** bits, 1] (constexpr_lut_to_dense)."""
        codes = self.codes()
        if self.kind == "affine":
            offset = (self.zero_points if self.zero_points is not None
                      else np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.uint8))
            return {"data": codes, "scale": self.scales, "offset": np.array(offset, dtype=np.uint8)}
        return {"indices": codes, "lut": self.lut.reshape(self.lut.shape[0], 1, self.lut.shape[1], 1)}

    @classmethod
    def from_coreml(cls, arrays: dict, bits: int) -> "QuantizedTensor":
        """The inverse of to_coreml(); an affine offset equal to 2 ** (bits - 1) everywhere reads as symmetric.

        Core ML's signed data (int4 / int8, held in an int8 array, with an offset of the
        same dtype) is stored shifted by 2 ** (bits - 1): scale * (data - offset) is
        unchanged. Values outside the bit width raise rather than wrap."""
        if "indices" in arrays:
            bits = _check_choice("bits", bits, LUT_BITS)
            codes = _coreml_integers(arrays, "indices", 0, 0, (1 << bits) - 1)
            lut = arrays.get("lut")
            if lut is None or lut.ndim != 4 or lut.shape[1] != 1 or lut.shape[3] != 1:
                raise ValueError("argument 'arrays': expected 'lut' shaped [tables, 1, 2 ** bits, 1], got "
                                 f"{None if lut is None else tuple(lut.shape)}")
            lut = lut.reshape(lut.shape[0], lut.shape[2])
            if codes.shape[0] % lut.shape[0]:
                raise ValueError(f"argument 'arrays': expected a number of tables dividing N = {codes.shape[0]}, "
                                 f"got {lut.shape[0]}")
            packed = np.empty((codes.shape[0], packed_row_bytes(codes.shape[1], bits)), dtype=np.uint8)
            core.quant_pack(codes, bits, packed)
            return cls("lut", bits, codes.shape, codes.shape[0] // lut.shape[0], packed, lut=lut)
        bits = _check_choice("bits", bits, AFFINE_BITS)
        shift = 1 << (bits - 1) if np.asarray(arrays.get("data", ())).dtype == np.int8 else 0
        codes = _coreml_integers(arrays, "data", shift, 0, (1 << bits) - 1)
        offset = _coreml_integers(arrays, "offset", shift, 0, 255)
        scales = arrays.get("scale")
        if scales is None or scales.ndim != 2 or scales.shape[0] != codes.shape[0] or scales.shape[1] == 0 or \
                codes.shape[1] % scales.shape[1]:
            raise ValueError(f"argument 'arrays': expected 'scale' shaped [N, groups] with groups dividing K for "
                             f"data {codes.shape}, got {None if scales is None else tuple(scales.shape)}")
        if offset.shape != tuple(scales.shape):
            raise ValueError(f"argument 'arrays': expected 'offset' shaped like 'scale' {tuple(scales.shape)}, "
                             f"got {offset.shape}")
        packed = np.empty((codes.shape[0], packed_row_bytes(codes.shape[1], bits)), dtype=np.uint8)
        core.quant_pack(codes, bits, packed)
        symmetric = bool(np.all(offset == (1 << (bits - 1))))
        return cls("affine", bits, codes.shape, codes.shape[1] // scales.shape[1], packed, scales=scales,
                   zero_points=None if symmetric else offset)

    def __repr__(self) -> str:
        detail = (f"group_size={self.group_size}, symmetric={self.symmetric}" if self.kind == "affine"
                  else f"tables={self.lut.shape[0]}")
        return (f"QuantizedTensor(kind={self.kind!r}, bits={self.bits}, shape={tuple(self.shape)}, {detail}, "
                f"bits_per_weight={self.bits_per_weight:.3f})")


def quantize(w, bits: int = 4, group_size: int | None = 64, symmetric: bool = False, method: str = "rtn",
             scale_dtype="fp16", importance=None) -> QuantizedTensor:
    """Group-wise affine quantization of a weight [N, K] (out_features, in_features).

    group_size: 32, 64, 128 input channels per scale, or None for one scale per row.
    method: "rtn" (round to nearest over the group's range, zero kept exact) or "mse"
    (search of clipped ranges minimising the squared error, weighted per input channel
    by `importance` [K] when given, e.g. mean squared activations).
    """
    w = _as_weight(w)
    bits = _check_choice("bits", bits, AFFINE_BITS)
    _check_choice("method", method, ("rtn", "mse"))
    symmetric = bool_argument(symmetric, "symmetric")
    if importance is not None and method == "rtn":
        raise ValueError("argument 'importance': expected None for method 'rtn' (only the MSE search weighs "
                         "its errors), got an importance vector")
    n, k = w.shape
    if group_size is None:
        group_size = k
    else:
        group_size = _check_choice("group_size", group_size, GROUP_SIZES)
        if k % group_size:
            raise ValueError(f"argument 'group_size': expected a divisor of the input dimension K = {k}, "
                             f"got {group_size}")
    scale_dtype = canonical_dtype(scale_dtype, "scale_dtype", FLOAT_DTYPES)
    packed = np.empty((n, packed_row_bytes(k, bits)), dtype=np.uint8)
    scales = _float_array((n, k // group_size), scale_dtype)
    zero_points = None if symmetric else np.empty((n, k // group_size), dtype=np.uint8)
    core.quant_quantize_affine(w, bits, group_size, symmetric, method, _importance(importance), packed, scales,
                               zero_points)
    return QuantizedTensor("affine", bits, (n, k), group_size, packed, scales=scales, zero_points=zero_points)


def palettize(w, nbits: int = 4, group_size: int | None = None, seed: int = 0, importance=None, lut_dtype="fp16",
              max_iterations: int = 100) -> QuantizedTensor:
    """LUT palettization of a weight [N, K] by weighted 1-D k-means (k-means++ init, seeded).

    group_size: output channels sharing one table (None: one table for the tensor).
    """
    w = _as_weight(w)
    nbits = _check_choice("nbits", nbits, LUT_BITS)
    n, k = w.shape
    group_size = n if group_size is None else integer_argument(group_size, "group_size", 1)
    if n % group_size:
        raise ValueError(f"argument 'group_size': expected a number of output channels dividing N = {n}, "
                         f"got {group_size}")
    seed = integer_argument(seed, "seed", 0, 2**64)
    max_iterations = integer_argument(max_iterations, "max_iterations", 1, 2**31)
    lut_dtype = canonical_dtype(lut_dtype, "lut_dtype", FLOAT_DTYPES)
    packed = np.empty((n, packed_row_bytes(k, nbits)), dtype=np.uint8)
    lut = _float_array((n // group_size, 1 << nbits), lut_dtype)
    core.quant_quantize_lut(w, nbits, group_size, seed, max_iterations, _importance(importance), packed, lut)
    return QuantizedTensor("lut", nbits, (n, k), group_size, packed, lut=lut)


def matmul(x, qweight: QuantizedTensor, act_bits: int | None = None):
    """x [..., K] @ W^T -> [..., N] with fp32 accumulation over the dequantized weights.

    x in fp32, fp16 or bf16; the result has x's dtype and kind (NumPy in, NumPy out;
    torch in, torch out). No autograd here: use QuantizedLinear for gradients.

    act_bits=8 (opt-in, affine weights): each row of x is first rounded to int8 with
    one scale (max|x| / 127) and the products run as exact int8 x uint8 dot products
    (AVX-512 VNNI): faster for prefill and, with 4-bit weights, for decode, but the
    result changes by that rounding. A row holding NaN or infinity gives NaN.
    """
    if act_bits is not None and integer_argument(act_bits, "act_bits") != 8:
        raise ValueError(f"argument 'act_bits': expected None or 8, got {act_bits!r}")
    if not isinstance(qweight, QuantizedTensor):
        raise TypeError(f"argument 'qweight': expected a pocketml.quant.QuantizedTensor, got {describe_type(qweight)}")
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"argument 'x': expected a CPU tensor, got a tensor on {x.device}")
        x = x.detach().contiguous()
    elif isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
    else:
        raise TypeError(f"argument 'x': expected a NumPy array or torch tensor, got {describe_type(x)}")
    dtype = _float_dtype(x, "x")
    n, k = qweight.shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"argument 'x': expected a last dimension equal to the weight's input dimension K = {k}, "
                         f"got shape {tuple(x.shape)}")
    out = empty_like(x, tuple(x.shape[:-1]) + (n,), dtype)
    core.quant_matmul(x, *qweight._native_args(), out, act_bits or 0)
    return out
