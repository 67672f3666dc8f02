"""The quantized-matmul C ABI, called through ctypes as Swift will: same results as Python."""

import ctypes

import numpy as np
import pytest

import pocketml
from pocketml import quant
from test_capi import lib  # noqa: F401  (the library fixture)

OK, INVALID_ARGUMENT, TYPE = 0, 1, 2
FP32, FP16 = 0, 1
AFFINE, LUT = 0, 1


class QuantizedWeight(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("bits", ctypes.c_int32), ("rows", ctypes.c_int64), ("cols", ctypes.c_int64),
                ("group_size", ctypes.c_int64), ("packed", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("scale_dtype", ctypes.c_int), ("zero_points", ctypes.c_void_p), ("lut", ctypes.c_void_p),
                ("lut_dtype", ctypes.c_int)]


def describe(qt):
    def ptr(a):
        return None if a is None else a.ctypes.data
    dtype = {np.dtype(np.float16): FP16, np.dtype(np.float32): FP32}
    return QuantizedWeight(AFFINE if qt.kind == "affine" else LUT, qt.bits, qt.shape[0], qt.shape[1], qt.group_size,
                           ptr(qt.packed), ptr(qt.scales), dtype[qt.scales.dtype] if qt.scales is not None else 0,
                           ptr(qt.zero_points), ptr(qt.lut), dtype[qt.lut.dtype] if qt.lut is not None else 0)


@pytest.fixture(scope="module")
def qlib(lib):  # noqa: F811
    lib.pocketml_quant_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                          ctypes.POINTER(QuantizedWeight), ctypes.c_void_p, ctypes.c_int]
    lib.pocketml_quant_dequantize.argtypes = [ctypes.POINTER(QuantizedWeight), ctypes.c_void_p, ctypes.c_int]
    lib.pocketml_quant_packed_row_bytes.argtypes = [ctypes.c_int64, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]
    # The C library has its own copy of the core and of its ISA choice: match Python's.
    assert lib.pocketml_set_isa(pocketml.active_isa().encode()) == OK
    return lib


@pytest.mark.parametrize("make", [lambda w: quant.quantize(w, bits=4, group_size=32),
                                  lambda w: quant.quantize(w, bits=3, group_size=None, symmetric=True),
                                  lambda w: quant.palettize(w, nbits=6, group_size=7)])
def test_matmul_and_dequantize_equal_python(qlib, rng, make):
    qt = make(rng.standard_normal((21, 96)).astype(np.float32))
    weight = describe(qt)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    out = np.empty((5, 21), np.float32)
    assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 5, ctypes.byref(weight), out.ctypes.data, FP32) == OK
    np.testing.assert_array_equal(out, quant.matmul(x, qt))
    dense = np.empty((21, 96), np.float16)
    assert qlib.pocketml_quant_dequantize(ctypes.byref(weight), dense.ctypes.data, FP16) == OK
    np.testing.assert_array_equal(dense, qt.dequantize("fp16"))
    row_bytes = ctypes.c_int64()
    assert qlib.pocketml_quant_packed_row_bytes(96, qt.bits, ctypes.byref(row_bytes)) == OK
    assert row_bytes.value == qt.packed.shape[1]
    assert qlib.pocketml_quant_packed_row_bytes(2**63 - 1, 8, ctypes.byref(row_bytes)) == INVALID_ARGUMENT  # wrapped
    assert b"argument 'cols': expected a column count whose packed row fits" in qlib.pocketml_last_error()
    # Sizes whose products wrap: m * cols read one row and returned OK; cols near 2^63 segfaulted.
    assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 2**58 + 1, ctypes.byref(weight), out.ctypes.data,
                                      FP32) == INVALID_ARGUMENT
    assert b"argument 'm': expected sizes whose byte count fits int64, got shape (288230376151711745, " in \
        qlib.pocketml_last_error()
    huge = describe(qt)
    huge.rows = 2**62
    assert qlib.pocketml_quant_dequantize(ctypes.byref(huge), dense.ctypes.data, FP16) == INVALID_ARGUMENT
    assert b"argument 'weight.rows': expected sizes whose byte count fits int64" in qlib.pocketml_last_error()
    huge = describe(qt)
    huge.cols = 2**63 - 1
    assert qlib.pocketml_quant_dequantize(ctypes.byref(huge), dense.ctypes.data, FP16) == INVALID_ARGUMENT
    assert b"argument 'weight.cols': expected a column count whose packed row fits" in qlib.pocketml_last_error()


def test_bad_arguments_return_status_and_message(qlib, rng):
    qt = quant.quantize(rng.standard_normal((8, 64)).astype(np.float32), bits=4, group_size=32)
    x = np.ones((2, 64), np.float32)
    out = np.empty((2, 8), np.float32)
    assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 2, None, out.ctypes.data, FP32) == INVALID_ARGUMENT
    assert qlib.pocketml_last_error() == b"argument 'weight': expected a non-NULL pointer, got NULL"
    weight = describe(qt)
    weight.bits = 7
    assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 2, ctypes.byref(weight), out.ctypes.data, FP32) == INVALID_ARGUMENT
    assert b"argument 'weight.bits': expected one of 2, 3, 4, 5, 6, 8, got 7" in qlib.pocketml_last_error()
    # Scales that Python and Swift refuse: an infinite one, or one whose padding code 0 decodes to -inf,
    # made every output NaN through the C ABI and the decoder.
    for bad, message in ((np.inf, b"argument 'weight.scales': expected finite values, got NaN or infinity at 1"),
                         (3e38, b"argument 'weight.scales': expected scales whose 4-bit codes all decode within "
                                b"fp32's range, got 3e+38 at 1")):
        scales = qt.scales.astype(np.float32)
        scales.flat[1] = bad
        weight = describe(qt)
        weight.scales, weight.scale_dtype = scales.ctypes.data, FP32
        assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 2, ctypes.byref(weight), out.ctypes.data,
                                          FP32) == INVALID_ARGUMENT
        assert message in qlib.pocketml_last_error()
    weight = describe(qt)
    weight.group_size = 48
    assert qlib.pocketml_quant_matmul(x.ctypes.data, FP32, 2, ctypes.byref(weight), out.ctypes.data, FP32) == INVALID_ARGUMENT
    assert b"argument 'weight.group_size'" in qlib.pocketml_last_error()
    weight = describe(qt)
    assert qlib.pocketml_quant_matmul(x.ctypes.data, 3, 2, ctypes.byref(weight), out.ctypes.data, FP32) == TYPE
    assert b"argument 'x': expected dtype fp32, fp16, bf16, got int8" in qlib.pocketml_last_error()
