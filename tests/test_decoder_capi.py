"""The attention and transformer-decoder C ABI through ctypes, as Swift calls it:
results equal the Python front door's, bad input is a status and a message."""

import ctypes as C

import numpy as np
import pytest
import torch

from pocketml import decoder
from test_capi import INVALID_ARGUMENT, OK, lib  # noqa: F401 (lib is a fixture)

FP32, MASK_CAUSAL = 0, 1


class AttentionShape(C.Structure):
    _fields_ = [(name, C.c_int64) for name in ("batch", "query_heads", "kv_heads", "query_len", "kv_len", "head_dim")]


class QuantizedWeight(C.Structure):
    _fields_ = [("kind", C.c_int), ("bits", C.c_int32), ("rows", C.c_int64), ("cols", C.c_int64),
                ("group_size", C.c_int64), ("packed", C.c_void_p), ("scales", C.c_void_p), ("scale_dtype", C.c_int),
                ("zero_points", C.c_void_p), ("lut", C.c_void_p), ("lut_dtype", C.c_int)]


class DecoderConfig(C.Structure):
    _fields_ = [(name, C.c_int64) for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                                               "num_heads", "num_kv_heads", "head_dim", "max_seq_len")] + \
               [("rms_norm_eps", C.c_float), ("rope_theta", C.c_float)]


class DecoderLayer(C.Structure):
    _fields_ = [("attn_norm", C.c_void_p)] + [(p, QuantizedWeight) for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
               [("mlp_norm", C.c_void_p)] + [(p, QuantizedWeight) for p in ("gate_proj", "up_proj", "down_proj")]


DTYPE_CODES = {"float32": 0, "float16": 1}


def c_weight(q) -> QuantizedWeight:
    def ptr(a):
        return None if a is None else a.ctypes.data

    return QuantizedWeight(0 if q.kind == "affine" else 1, q.bits, q.shape[0], q.shape[1], q.group_size, ptr(q.packed),
                           ptr(q.scales), DTYPE_CODES[str(q.scales.dtype)] if q.scales is not None else 0,
                           ptr(q.zero_points), ptr(q.lut), DTYPE_CODES[str(q.lut.dtype)] if q.lut is not None else 0)


def test_attention_forward_and_decode_match_torch(lib, rng):
    q = rng.standard_normal((1, 6, 5, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 12, 16)).astype(np.float32) for _ in range(2))
    out = np.empty_like(q)
    shape = AttentionShape(1, 6, 2, 5, 12, 16)
    assert lib.pocketml_attention_forward(C.c_void_p(q.ctypes.data), C.c_void_p(k.ctypes.data),
                                          C.c_void_p(v.ctypes.data), FP32, C.byref(shape), C.c_float(0.25),
                                          MASK_CAUSAL, C.c_void_p(out.ctypes.data)) == OK
    t = [torch.from_numpy(a).double() for a in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*t, is_causal=True, scale=0.25, enable_gqa=True)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)

    # decode: the 5 queries are the last positions of the first 9 cached ones
    assert lib.pocketml_attention_decode(C.c_void_p(q.ctypes.data), C.c_void_p(k.ctypes.data),
                                         C.c_void_p(v.ctypes.data), FP32, C.byref(shape), C.c_int64(9),
                                         C.c_float(0.25), C.c_void_p(out.ctypes.data)) == OK
    keep = torch.ones(5, 9, dtype=torch.bool).tril(4)
    expected = torch.nn.functional.scaled_dot_product_attention(t[0], t[1][:, :, :9], t[2][:, :, :9], attn_mask=keep,
                                                                scale=0.25, enable_gqa=True)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)

    bad = AttentionShape(1, 5, 2, 5, 12, 16)
    assert lib.pocketml_attention_forward(C.c_void_p(q.ctypes.data), C.c_void_p(k.ctypes.data),
                                          C.c_void_p(v.ctypes.data), FP32, C.byref(bad), C.c_float(1), 0,
                                          C.c_void_p(out.ctypes.data)) == INVALID_ARGUMENT
    assert lib.pocketml_attention_forward(None, None, None, FP32, C.byref(shape), C.c_float(1), 0,
                                          None) == INVALID_ARGUMENT
    assert lib.pocketml_last_error() == b"argument 'q': expected a non-NULL pointer, got NULL"
    assert lib.pocketml_attention_forward(C.c_void_p(q.ctypes.data), C.c_void_p(k.ctypes.data),
                                          C.c_void_p(v.ctypes.data), FP32, C.byref(shape), C.c_float(1), 7,
                                          C.c_void_p(out.ctypes.data)) == INVALID_ARGUMENT
    assert b"argument 'mask': expected a pocketml_attention_mask value (0..2), got 7" in lib.pocketml_last_error()


@pytest.fixture(scope="module")
def small_decoder():
    config, weights = decoder.load_smollm2(num_layers=1, vocab_size=512, max_seq_len=8)
    return config, decoder.quantize_weights(config, weights)


def test_decoder_handle_matches_python_binding(lib, small_decoder):
    config, q = small_decoder
    cfg = DecoderConfig(*[getattr(config, f) for f, _ in DecoderConfig._fields_])
    layer = DecoderLayer(q["layers.0.attn_norm"].ctypes.data, *[c_weight(q[f"layers.0.{p}"]) for p in
                                                                ("q_proj", "k_proj", "v_proj", "o_proj")],
                         q["layers.0.mlp_norm"].ctypes.data, *[c_weight(q[f"layers.0.{p}"]) for p in
                                                               ("gate_proj", "up_proj", "down_proj")])
    embedding = c_weight(q["embedding"])
    handle = C.c_void_p()
    assert lib.pocketml_decoder_new(C.byref(cfg), C.byref(embedding), C.byref(layer),
                                    C.c_void_p(q["final_norm"].ctypes.data), C.byref(handle)) == OK, \
        lib.pocketml_last_error()
    try:
        tokens = np.array([3, 1, 4, 1, 5], np.int32)
        logits = np.empty((5, config.vocab_size), np.float32)
        assert lib.pocketml_decoder_forward(handle, C.c_void_p(tokens.ctypes.data), C.c_int64(5),
                                            C.c_void_p(logits.ctypes.data)) == OK
        # equal up to summation order: the ctypes library and the extension pick their ISA separately
        np.testing.assert_allclose(logits, decoder.TransformerDecoder(config, q)(tokens), rtol=1e-5, atol=1e-4)
        length = C.c_int64()
        assert lib.pocketml_decoder_length(handle, C.byref(length)) == OK and length.value == 5
        assert lib.pocketml_decoder_forward(handle, C.c_void_p(tokens.ctypes.data), C.c_int64(5),
                                            C.c_void_p(logits.ctypes.data)) == INVALID_ARGUMENT
        assert b"argument 'tokens': expected at most 3 tokens" in lib.pocketml_last_error()
        assert lib.pocketml_decoder_reset(handle) == OK
        assert lib.pocketml_decoder_length(handle, C.byref(length)) == OK and length.value == 0
    finally:
        assert lib.pocketml_decoder_free(handle) == OK

    cfg.num_layers = 1
    layer.q_proj.rows = 64  # no longer [heads * head_dim, hidden]
    layer.q_proj.scales = None
    assert lib.pocketml_decoder_new(C.byref(cfg), C.byref(embedding), C.byref(layer),
                                    C.c_void_p(q["final_norm"].ctypes.data), C.byref(handle)) == INVALID_ARGUMENT
    assert lib.pocketml_last_error() == b"argument 'layers[0].q_proj.scales': expected a non-NULL pointer, got NULL"
    assert handle.value is None  # out_decoder is cleared on failure
    assert lib.pocketml_decoder_forward(None, None, 1, None) == INVALID_ARGUMENT
    assert lib.pocketml_last_error() == b"argument 'decoder': expected a non-NULL pointer, got NULL"
    assert lib.pocketml_decoder_free(None) == OK
