"""pocketml.convert: every variant equals torch's .to() bit for bit on non-NaN values,
equals the scalar reference on everything, and agrees with an independent float64 model."""

import numpy as np
import pytest
import torch

import pocketml

PAIRS = [("fp32", "fp16"), ("fp32", "bf16"), ("fp16", "fp32"), ("bf16", "fp32"), ("fp16", "bf16"),
         ("bf16", "fp16"), ("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16")]
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BITS = {"fp32": torch.int32, "fp16": torch.int16, "bf16": torch.int16}
# Lengths around every SIMD width and the threading chunk (65536 elements).
LENGTHS = [0, 1, 7, 8, 15, 16, 17, 33, 1000, 65537, 200_003]


def fp32_edge_values():
    """fp32 values where rounding to fp16 or bf16 is hardest."""
    f = np.float32
    values = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65519.996, 65520.0, 65536.0, 1e38, 3.4028235e38,
              2.0 ** -14, 2.0 ** -15, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26, 1.5 * 2.0 ** -24,
              2.5 * 2.0 ** -24, np.finfo(np.float32).tiny, 1e-45, -1e-45, 1e-40, 1.0009765625, 1.00048828125,
              1.00146484375, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -9, 3.3895314e38, 3.3961776e38]
    ties = []
    for v in (1.0, 1.5, 1024.0, 2.0 ** -10):  # exact halfway cases for both targets
        base = np.float32(v).view(np.uint32)
        ties += [(base + 0x1000).view(np.float32), (base + 0x3000).view(np.float32),
                 (base + 0x8000).view(np.float32), (base + 0x18000).view(np.float32)]
    values = np.array(values + ties, dtype=f)
    return np.concatenate([values, -values])


def random_bit_patterns(dtype, n, seed):
    rng = np.random.default_rng(seed)
    if dtype == "fp32":
        return torch.from_numpy(rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.int32)).view(
            torch.float32)
    return torch.from_numpy(rng.integers(0, 2 ** 16, n, dtype=np.uint32).astype(np.uint16).view(np.int16)).view(
        TORCH[dtype])


def all_16_bit_patterns(dtype):
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(TORCH[dtype])


def bits(t, dtype):
    return t.view(BITS[dtype]).numpy()


def assert_equal_to_torch(x, src, dst):
    out = pocketml.convert(x, dst)
    assert out.dtype == TORCH[dst] and out.shape == x.shape
    expected = x.to(TORCH[dst])
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan), "NaN positions differ"
    np.testing.assert_array_equal(bits(out[~nan], dst), bits(expected[~nan], dst))
    return out


@pytest.mark.parametrize("src, dst", PAIRS)
def test_random_bit_patterns_equal_torch(isa, src, dst):
    x = random_bit_patterns(src, 300_001, seed=len(src + dst))
    assert_equal_to_torch(x, src, dst)


@pytest.mark.parametrize("src", ["fp16", "bf16"])
@pytest.mark.parametrize("dst", ["fp32", "fp16", "bf16"])
def test_every_16_bit_value_equals_torch(isa, src, dst):
    assert_equal_to_torch(all_16_bit_patterns(src), src, dst)


@pytest.mark.parametrize("dst", ["fp16", "bf16"])
def test_fp32_edge_values_equal_torch(isa, dst):
    x = torch.from_numpy(fp32_edge_values())
    assert_equal_to_torch(x, "fp32", dst)


def test_fp32_to_fp16_nan_payloads_equal_torch(isa):
    # torch (F16C) quiets NaN and keeps sign and upper payload, as pocketml documents.
    payloads = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFF812345, 0x7FFFFFFF],
                        dtype=np.uint32).view(np.int32)
    x = torch.from_numpy(np.tile(payloads, 5)).view(torch.float32)
    np.testing.assert_array_equal(bits(pocketml.convert(x, "fp16"), "fp16"), bits(x.to(torch.float16), "fp16"))


@pytest.mark.parametrize("src, dst", PAIRS)
@pytest.mark.parametrize("n", LENGTHS)
def test_every_variant_equals_the_scalar_reference(isa, src, dst, n):
    x = random_bit_patterns(src, n, seed=n)  # includes NaNs with arbitrary payloads
    out = pocketml.convert(x, dst)
    with pocketml.use_isa("scalar"):
        reference = pocketml.convert(x, dst)
    np.testing.assert_array_equal(bits(out, dst), bits(reference, dst))


def representable_magnitudes(dtype):
    """All non-negative finite values of a 16-bit format in float64, ascending, with their
    bit patterns; infinity is appended as the value one step past the largest finite one,
    which is how round-to-nearest-even treats overflow."""
    patterns = np.arange(0, 0x7C00 if dtype == "fp16" else 0x7F80, dtype=np.uint16)
    if dtype == "fp16":
        values = patterns.view(np.float16).astype(np.float64)
    else:
        values = (patterns.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    inf_bits = 0x7C00 if dtype == "fp16" else 0x7F80
    values = np.append(values, 2 * values[-1] - values[-2])
    return values, np.append(patterns, np.uint16(inf_bits))


def nearest_even_bits(x, dtype):
    """The float64 model of rounding |x| to nearest, ties to the even bit pattern."""
    values, patterns = representable_magnitudes(dtype)
    magnitude = np.minimum(np.abs(x.astype(np.float64)), values[-1])
    hi = np.clip(np.searchsorted(values, magnitude), 1, len(values) - 1)
    lo = hi - 1
    below, above = magnitude - values[lo], values[hi] - magnitude
    pick_hi = (above < below) | ((above == below) & (patterns[hi] % 2 == 0))
    result = np.where(pick_hi, patterns[hi], patterns[lo]).astype(np.uint16)
    return result | np.where(np.signbit(x), np.uint16(0x8000), np.uint16(0))


@pytest.mark.parametrize("dst", ["fp16", "bf16"])
def test_rounding_matches_a_float64_model(isa, rng, dst):
    """Independent of torch: each result is the representable value nearest to x."""
    scale = rng.choice([1e-7, 1e-5, 1e-3, 1.0, 1e3, 6e4, 1e30, 3e38], 200_000)
    with np.errstate(over="ignore"):  # the largest scales overflow to inf on purpose
        x = np.concatenate([(rng.standard_normal(200_000) * scale).astype(np.float32), fp32_edge_values()])
    out = pocketml.convert(torch.from_numpy(x), dst)
    np.testing.assert_array_equal(bits(out, dst).view(np.uint16), nearest_even_bits(x, dst))


def test_numpy_in_numpy_out(isa, rng):
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    half = pocketml.convert(x, np.float16)
    assert isinstance(half, np.ndarray) and half.dtype == np.float16 and half.shape == (3, 7, 5)
    np.testing.assert_array_equal(half, x.astype(np.float16))  # NumPy also rounds to nearest even
    np.testing.assert_array_equal(pocketml.convert(half, "float32"), half.astype(np.float32))


def test_torch_dtype_objects_are_accepted():
    x = torch.randn(10)
    assert pocketml.convert(x, torch.bfloat16).dtype == torch.bfloat16


def test_tensor_requiring_grad_converts():
    x = torch.randn(9, requires_grad=True)
    out = pocketml.convert(x, "fp16")
    assert torch.equal(out, x.detach().half()) and not out.requires_grad


def test_non_contiguous_input_is_rejected():
    with pytest.raises(ValueError, match=r"argument 'x': expected contiguous memory .* got shape \(4, 3\)"):
        pocketml.convert(torch.zeros(3, 4).t(), "fp16")
    with pytest.raises(ValueError, match="argument 'x': expected contiguous memory"):
        pocketml.convert(np.zeros(10, np.float32)[::2], "fp16")


@pytest.mark.parametrize("x, got", [(torch.zeros(3, dtype=torch.int32), "int32"),
                                    (np.zeros(3, np.uint8), "uint8")])
def test_integer_input_is_rejected(x, got):
    with pytest.raises(TypeError, match=f"argument 'x': expected dtype fp32, fp16, bf16, got {got}"):
        pocketml.convert(x, "fp16")


def test_unsupported_input_dtype_is_rejected():
    with pytest.raises(TypeError, match="argument 'x': expected dtype .* got float64"):
        pocketml.convert(np.zeros(3), "fp16")


@pytest.mark.parametrize("dtype", ["int8", "fp64", "float8", torch.float64, 5])
def test_unsupported_target_dtype_is_rejected(dtype):
    with pytest.raises(TypeError, match="argument 'dtype'"):
        pocketml.convert(torch.zeros(3), dtype)


def test_numpy_cannot_hold_bf16():
    with pytest.raises(TypeError, match="NumPy has no bfloat16"):
        pocketml.convert(np.zeros(3, np.float32), "bf16")


def test_non_array_input_is_rejected():
    with pytest.raises(TypeError, match="argument 'x': expected a NumPy array or torch tensor, got list"):
        pocketml.convert([1.0, 2.0], "fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_is_rejected():  # pragma: no cover
    with pytest.raises(ValueError, match="expected a CPU tensor"):
        pocketml.convert(torch.zeros(3, device="cuda"), "fp16")


def test_results_do_not_depend_on_thread_count(rng):
    x = torch.from_numpy(rng.standard_normal(300_001).astype(np.float32))
    original = pocketml.get_num_threads()
    try:
        pocketml.set_num_threads(1)
        one = pocketml.convert(x, "bf16")
        pocketml.set_num_threads(4)
        four = pocketml.convert(x, "bf16")
    finally:
        pocketml.set_num_threads(original)
    assert torch.equal(one.view(torch.int16), four.view(torch.int16))
