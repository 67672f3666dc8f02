"""Fused attention on the CPU: torch-compatible SDPA with autograd, packed
variable-length sequences, and KV-cache decoding.

Scores follow FlashAttention's conventions (see csrc/attention/attention.h)::

    s = scale * q . k
    s = softcap * tanh(s / softcap)                  # softcap
    s -= slope[h] * |i + diagonal - j|               # alibi_slopes
    s += attn_mask  or  s = -inf where not attn_mask # additive / boolean mask
    s = -inf outside  i + diagonal - left <= j <= i + diagonal + right   # window, causal

``diagonal`` is 0 for the top-left alignment (torch's ``is_causal``) and
``Lk - Lq`` for the bottom-right one (a query block at the end of a KV cache).
``window=(left, right)`` is FlashAttention's ``window_size``; -1 is unbounded,
and ``is_causal`` means ``right = 0``.

A query row whose keys are all masked gets a zero output and a zero gradient.

Inputs are fp32, fp16 or bf16 (accumulated in fp32); any strides work, a
last dimension that is not contiguous is copied. float64 inputs (used by
``torch.autograd.gradcheck``) run through :func:`reference_attention`, the
same semantics written with torch operations, since the native kernels stop
at fp32 accumulation.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings

import torch

from pocketml._arguments import bool_argument, integer_argument, real_argument
from pocketml._native import core

_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ALIGNMENTS = ("top_left", "bottom_right")

__all__ = ["KVCache", "decode", "reference_attention", "scaled_dot_product_attention", "sdpa_override",
           "varlen_attention"]


# --- argument handling -------------------------------------------------------

def _require_tensor(x, arg):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"argument '{arg}': expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"argument '{arg}': expected a CPU tensor, got a tensor on {x.device}")


_NO_BOUND = 2**62


def _window_bounds(window, is_causal):
    if window is None:
        left, right = -1, -1
    else:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"argument 'window': expected a pair (left, right) of ints, got {window!r}")
        left, right = (integer_argument(w, "window") for w in window)  # 1.7 and True are refused
        if left < -1 or right < -1:
            raise ValueError(f"argument 'window': expected bounds >= 0 or -1 (unbounded), got {window!r}")
        # A bound past any sequence length is no bound; as one it cannot overflow the kernels' int64 band.
        left, right = (-1 if bound >= _NO_BOUND else bound for bound in (left, right))
    if is_causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def _softcap_value(softcap):
    if softcap is None:
        return 0.0
    softcap = real_argument(softcap, "softcap")  # True was softcap 1.0
    if not softcap > 0:
        raise ValueError(f"argument 'softcap': expected a finite number > 0, got {softcap!r}")
    return softcap


def _scale_value(scale, q, arg: str) -> float:
    """The softmax scale: 1 / sqrt(D) unless given; D = 0 is refused before that divides by it."""
    if q.shape[-1] == 0:
        raise ValueError(f"argument '{arg}': expected a head dimension D > 0, got shape {tuple(q.shape)}")
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else real_argument(scale, "scale")  # not "0.5"


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _prepare_mask(attn_mask, q, target_shape):
    _require_tensor(attn_mask, "attn_mask")
    try:
        mask = torch.broadcast_to(attn_mask, target_shape)
    except RuntimeError:
        raise ValueError(f"argument 'attn_mask': expected a mask broadcastable to {tuple(target_shape)}, "
                         f"got shape {tuple(attn_mask.shape)}") from None
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8)
    if not mask.is_floating_point():
        raise TypeError(f"argument 'attn_mask': expected a bool or floating-point mask, got {mask.dtype}")
    # The kernels add masks in fp32 whatever their dtype: an fp32 mask keeps its values with bf16 q.
    return mask if mask.dtype in _NATIVE_DTYPES or q.dtype == torch.float64 else mask.to(torch.float32)


def _check_dtypes(q, k, v):
    if q.dtype not in _NATIVE_DTYPES + (torch.float64,):
        raise TypeError(f"argument 'query': expected float32, float16, bfloat16 or float64, got {q.dtype}")
    for x, arg in ((k, "key"), (v, "value")):
        if x.dtype != q.dtype:
            raise TypeError(f"argument '{arg}': expected the dtype of query ({q.dtype}), got {x.dtype}")


def _check_float64_operands(q, k, v, alibi):
    """The core's shape rules for 4-D q, k, v and the ALiBi slopes, for the float64 path,
    which does not reach the core (torch would broadcast a batch of 1 or a slope)."""
    rules = (("k", k, 0, "the batch of q", q.shape[0]), ("k", k, 3, "the head dimension of q", q.shape[3]),
             ("v", v, 0, "the batch of k", k.shape[0]), ("v", v, 1, "the heads of k", k.shape[1]),
             ("v", v, 2, "the length of k", k.shape[2]), ("v", v, 3, "the head dimension of q", q.shape[3]))
    for arg, x, dim, what, size in rules:
        if x.shape[dim] != size:
            raise ValueError(f"argument '{arg}': expected {what} = {size} (dimension {dim}), got shape {tuple(x.shape)}")
    if alibi is not None and tuple(alibi.shape) != (q.shape[1],):
        raise ValueError(f"argument 'alibi_slopes': expected shape ({q.shape[1]},), got {tuple(alibi.shape)}")


# --- reference (float64 path and tests) -------------------------------------

def reference_attention(q, k, v, attn_mask=None, scale=None, *, window=(-1, -1), bottom_right=False, softcap=None,
                        alibi_slopes=None):
    """Naive attention with pocketml's semantics in q's dtype: [B, Hq, Lq, D] -> [B, Hq, Lq, D].

    ``attn_mask`` must already broadcast to [B, Hq, Lq, Lk]; fully masked rows give zeros."""
    group = q.shape[1] // k.shape[1] if k.shape[1] else 1  # no heads: an empty result
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if k.shape[-2] == 0:  # no keys: every row is fully masked; zeros that autograd still tracks (to q, k, v)
        return (q @ k.transpose(-2, -1)) @ v
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(lq).unsqueeze(1) + (lk - lq if bottom_right else 0)
    j = torch.arange(lk).unsqueeze(0)
    if alibi_slopes is not None:
        s = s - alibi_slopes.to(s.dtype).view(1, -1, 1, 1) * (i - j).abs().to(s.dtype)
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if window[0] >= 0:
        allowed &= j >= i - window[0]
    if window[1] >= 0:
        allowed &= j <= i + window[1]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.to(s.dtype)
    s = s.masked_fill(~allowed, -math.inf)
    row_max = s.amax(-1, keepdim=True)
    dead = torch.isneginf(row_max)
    p = torch.exp(s - torch.where(dead, torch.zeros_like(row_max), row_max))
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return torch.where(dead, torch.zeros_like(p), p) @ v


# --- dense SDPA ---------------------------------------------------------------

def _first_order_only(backward):
    """A backward that refuses create_graph=True: the kernel is not differentiable.
    (torch's once_differentiable refuses only when the incoming gradient needs one, so
    a gradient penalty over out.sum() silently lost its second-order term.)"""
    @functools.wraps(backward)
    def first_order(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("pocketml attention has no double backward (create_graph=True): its backward "
                               "kernel is not differentiable; use torch's SDPA for higher-order gradients")
        return backward(ctx, *grads)
    return first_order


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, alibi, scale, left, right, bottom_right, softcap):
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[:-1] + (2,), dtype=torch.float32)  # per row: score max, log of the sum
        core.attention_forward(q, k, v, mask, alibi, out, lse, scale, left, right, bottom_right, softcap)
        # The mask and slopes are saved as tensors, so that autograd refuses a backward
        # after they changed in place (it recomputes the probabilities from them).
        ctx.save_for_backward(q, k, v, out, lse, mask, alibi)
        ctx.extras = (scale, left, right, bottom_right, softcap)
        return out

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask, alibi = ctx.saved_tensors
        scale, left, right, bottom_right, softcap = ctx.extras
        grad_out = grad_out.contiguous() if grad_out.stride(-1) != 1 or 0 in grad_out.stride() else grad_out
        dq = torch.empty(q.shape, dtype=q.dtype)
        dk = torch.empty(k.shape, dtype=k.dtype)
        dv = torch.empty(v.shape, dtype=v.dtype)
        core.attention_backward(q, k, v, mask, alibi, out, lse, grad_out, dq, dk, dv, scale, left, right,
                                bottom_right, softcap)
        dmask = None
        if ctx.needs_input_grad[3]:
            dmask = _additive_mask_grad(q, k, v, mask, alibi, scale, (left, right), bottom_right, softcap, grad_out)
        return dq, dk, dv, dmask, None, None, None, None, None, None


def _additive_mask_grad(q, k, v, mask, alibi, scale, window, bottom_right, softcap, grad_out):
    """d out / d mask for a float mask that requires grad (learned position biases):
    the gradient of the scores, which the fused backward never materialises, from
    the naive reference in fp32 (O(B * H * Lq * Lk) memory, as torch's math path)."""
    if mask.numel() == 0:
        return torch.zeros_like(mask)
    with torch.enable_grad():
        m = mask.detach().float().requires_grad_()
        out = reference_attention(q.detach().float(), k.detach().float(), v.detach().float(), m, scale,
                                  window=window, bottom_right=bottom_right, softcap=softcap or None,
                                  alibi_slopes=alibi)
        (dmask,) = torch.autograd.grad(out, m, grad_out.float())
    return dmask.to(mask.dtype)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, window=None, softcap=None, alibi_slopes=None,
                                 causal_alignment="top_left"):
    """torch.nn.functional.scaled_dot_product_attention on pocketml's fused kernels.

    query [B, Hq, Lq, D] (or [B, Lq, D]), key / value [B, Hkv, Lk, D]; Hq != Hkv
    needs ``enable_gqa=True`` as in torch. Extras: ``window=(left, right)``,
    ``softcap``, ``alibi_slopes`` (fp32 [Hq]) and ``causal_alignment``
    ('top_left' as torch, or 'bottom_right') for the causal mask, window and
    ALiBi. Differentiable in q, k, v and a float ``attn_mask`` (its gradient comes
    from the naive reference, O(B * H * Lq * Lk) memory); ALiBi slopes are constants (detached)."""
    for x, arg in ((query, "query"), (key, "key"), (value, "value")):
        _require_tensor(x, arg)
    is_causal, enable_gqa = bool_argument(is_causal, "is_causal"), bool_argument(enable_gqa, "enable_gqa")  # not "no"
    if dropout_p != 0.0:
        raise NotImplementedError(f"argument 'dropout_p': pocketml attention has no dropout; expected 0.0, "
                                  f"got {dropout_p}")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"argument 'causal_alignment': expected one of {_ALIGNMENTS}, got {causal_alignment!r}")
    if is_causal and attn_mask is not None:
        raise ValueError("argument 'attn_mask': expected None when is_causal=True (as torch), got a mask")
    _check_dtypes(query, key, value)
    if query.dim() != key.dim() or query.dim() not in (3, 4) or value.dim() != key.dim():
        raise ValueError(f"argument 'query': expected 4-D [B, H, L, D] (or 3-D [B, L, D]) query, key and value, "
                         f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    squeeze = query.dim() == 3
    q, k, v = (x.unsqueeze(1) if squeeze else x for x in (query, key, value))
    if q.shape[1] != k.shape[1] and not enable_gqa:
        raise ValueError(f"argument 'key': expected {q.shape[1]} heads like query (or enable_gqa=True), "
                         f"got {k.shape[1]}")
    if (k.shape[1] == 0 and q.shape[1] != 0) or (k.shape[1] != 0 and q.shape[1] % k.shape[1] != 0):  # 0 and 0: empty
        raise ValueError(f"argument 'key': expected a number of heads dividing query's {q.shape[1]}, "
                         f"got {k.shape[1]}")
    scale = _scale_value(scale, query, "query")
    left, right = _window_bounds(window, is_causal)
    cap = _softcap_value(softcap)
    bottom_right = causal_alignment == "bottom_right"
    b, hq, lq, _ = q.shape
    mask = None
    if attn_mask is not None:
        mask_in = attn_mask.unsqueeze(-3) if squeeze and attn_mask.dim() >= 3 else attn_mask
        mask = _prepare_mask(mask_in, q, (b, hq, lq, k.shape[2]))
    alibi = None
    if alibi_slopes is not None:
        _require_tensor(alibi_slopes, "alibi_slopes")
        alibi = alibi_slopes.detach().to(torch.float32).contiguous()  # constants on every path (float64 too)
    if q.dtype == torch.float64:
        _check_float64_operands(q, k, v, alibi)
        ref_mask = None if mask is None else (mask.bool() if mask.dtype == torch.uint8 else mask)
        out = reference_attention(q, k, v, ref_mask, scale, window=(left, right), bottom_right=bottom_right,
                                  softcap=cap or None, alibi_slopes=alibi)
    else:
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        out = _FusedAttention.apply(q, k, v, mask, alibi, scale, left, right, bottom_right, cap)
    return out.squeeze(1) if squeeze else out


# --- packed variable-length sequences ---------------------------------------

class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, scale, left, right, softcap):
        out = torch.zeros(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[1], q.shape[0], 2, dtype=torch.float32)
        core.varlen_attention_forward(q, k, v, cu_q, cu_k, out, lse, scale, left, right, True, softcap)
        ctx.save_for_backward(q, k, v, cu_q, cu_k, out, lse)
        ctx.extras = (scale, left, right, softcap)
        return out

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_out):
        q, k, v, cu_q, cu_k, out, lse = ctx.saved_tensors
        scale, left, right, softcap = ctx.extras
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        core.varlen_attention_backward(q, k, v, cu_q, cu_k, out, lse, grad_out, dq, dk, dv, scale, left, right, True,
                                       softcap)
        return dq, dk, dv, None, None, None, None, None, None


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None,
                     window=None, softcap=None):
    """Attention over packed sequences, as FlashAttention's flash_attn_varlen_func.

    q [Tq, Hq, D], k and v [Tk, Hkv, D]; sequence s owns rows
    cu_seqlens_q[s]:cu_seqlens_q[s+1] of q and cu_seqlens_k[s]:cu_seqlens_k[s+1]
    of k / v (int32 or int64). Tokens never attend across sequences, so a
    training batch packed without padding needs no mask: documents packed
    into one row are separated by giving each its own cu_seqlens entry.
    ``causal`` and ``window`` are aligned bottom-right within each sequence
    (FlashAttention >= 2.1), which is top-left when Lq == Lk. max_seqlen_q /
    max_seqlen_k are checked against cu_seqlens (kept for API compatibility)."""
    for x, arg in ((q, "q"), (k, "k"), (v, "v"), (cu_seqlens_q, "cu_seqlens_q"), (cu_seqlens_k, "cu_seqlens_k")):
        _require_tensor(x, arg)
    _check_dtypes(q, k, v)
    if q.dtype == torch.float64:
        raise TypeError("argument 'q': varlen_attention runs fp32, fp16 or bf16, got float64")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"argument 'q': expected 3-D [tokens, heads, D] q, k and v, got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for cu, longest, arg in ((cu_seqlens_q, max_seqlen_q, "max_seqlen_q"),
                             (cu_seqlens_k, max_seqlen_k, "max_seqlen_k")):
        if cu.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"argument 'cu_seqlens_{arg[-1]}': expected dtype int32 or int64, got "
                            f"{str(cu.dtype).removeprefix('torch.')}")
        if cu.dim() != 1:
            raise ValueError(f"argument 'cu_seqlens_{arg[-1]}': expected a 1-D tensor, got shape {tuple(cu.shape)}")
        longest = integer_argument(longest, arg, 0)  # also with no sequence to compare it with
        if cu.numel() > 1 and int((cu[1:] - cu[:-1]).max()) > longest:
            raise ValueError(f"argument '{arg}': expected at least the longest sequence "
                             f"({int((cu[1:] - cu[:-1]).max())}), got {longest}")
    left, right = _window_bounds(window, bool_argument(causal, "causal"))
    cap = _softcap_value(softcap)
    scale = _scale_value(scale, q, "q")
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return _VarlenAttention.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, left, right, cap)


# --- KV cache decoding ----------------------------------------------------------

_CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


class KVCache:
    """Keys and values of past positions, [batch, kv_heads, max_len, head_dim], filled in place.

    dtype 'fp16', 'bf16', 'fp32' or 'int8'. int8 stores one fp32 scale per
    token and head (max |x| / 127, round to nearest even): each dequantized
    element is within scale / 2 = max|row| / 254 of the value appended. A row
    holding NaN or an infinity has no int8 form: it reads back as NaN."""

    def __init__(self, batch, kv_heads, max_len, head_dim, dtype="fp16"):
        if dtype not in _CACHE_DTYPES:
            raise ValueError(f"argument 'dtype': expected one of {tuple(_CACHE_DTYPES)}, got {dtype!r}")
        shape = tuple(integer_argument(value, arg, 1) for value, arg in
                      ((batch, "batch"), (kv_heads, "kv_heads"), (max_len, "max_len"), (head_dim, "head_dim")))
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=_CACHE_DTYPES[dtype])
        self.v = torch.zeros(shape, dtype=_CACHE_DTYPES[dtype])
        quantized = dtype == "int8"
        self.k_scale = torch.zeros(shape[:3], dtype=torch.float32) if quantized else None
        self.v_scale = torch.zeros(shape[:3], dtype=torch.float32) if quantized else None
        self.length = 0
        self._views, self._views_of, self._views_layout = None, (), ()

    @property
    def max_len(self):
        return self.k.shape[2]

    def append(self, k, v):
        """Appends k, v [batch, kv_heads, T, head_dim] (fp32/fp16/bf16) after the current length."""
        for x, arg in ((k, "k"), (v, "v")):
            _require_tensor(x, arg)
            expected = (self.k.shape[0], self.k.shape[1], x.shape[2] if x.dim() == 4 else -1, self.k.shape[3])
            if x.dim() != 4 or tuple(x.shape) != expected:
                raise ValueError(f"argument '{arg}': expected shape (batch, kv_heads, T, head_dim) = "
                                 f"{expected[:2]} + (T, {expected[3]}), got {tuple(x.shape)}")
            if x.dtype not in _NATIVE_DTYPES:
                raise TypeError(f"argument '{arg}': expected float32, float16 or bfloat16, got {x.dtype}")
        if k.shape != v.shape:
            raise ValueError(f"argument 'v': expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise ValueError(f"argument 'k': expected at most {self.max_len - self.length} new positions "
                             f"(cache of {self.max_len}), got {t}")
        if self.dtype == "int8":
            core.kv_quantize_int8(_last_dim_contiguous(k), self.k, self.k_scale, self.length)
            core.kv_quantize_int8(_last_dim_contiguous(v), self.v, self.v_scale, self.length)
        else:
            # detached: a cache holds values, it does not join the graph of what produced them
            self.k[:, :, self.length:self.length + t].copy_(k.detach())
            self.v[:, :, self.length:self.length + t].copy_(v.detach())
        self.length += t

    def reset(self):
        self.length = 0

    def __getstate__(self):  # copies and pickles carry the tensors, not their native export
        state = dict(self.__dict__)
        state["_views"], state["_views_of"], state["_views_layout"] = None, (), ()
        return state

    def _native_views(self):
        # The tensors exported to the native core once, not on every decode step
        # (exports cost microseconds each); again if one was replaced, or its memory
        # was (share_memory_(), set_(), .data =): the export holds a pointer into
        # the storage it saw, which such a swap frees (a segfault, or garbage read).
        tensors = (self.k, self.v, self.k_scale, self.v_scale)
        layout = tuple(None if t is None else (t.data_ptr(), t.dtype, t.shape, t.stride()) for t in tensors)
        if (self._views is None or layout != self._views_layout
                or any(a is not b for a, b in zip(tensors, self._views_of))):
            self._views, self._views_of, self._views_layout = core.KVCacheViews(*tensors), tensors, layout
        return self._views


def decode(q, cache, scale=None, window=None, softcap=None):
    """Attention of q [B, Hq, Lq <= 8, D] (the newest Lq positions, already
    appended) over the cache's first ``cache.length`` positions.

    Causal among the new queries (bottom-right); ``window=(left, right)``
    overrides the bound (default (-1, 0)). Returns [B, Hq, Lq, D] in q's dtype.
    An inference kernel: the result tracks no gradient (a warning says so when q
    requires one; scaled_dot_product_attention over the cache's tensors does)."""
    _require_tensor(q, "q")
    if q.requires_grad and torch.is_grad_enabled():
        warnings.warn("pocketml.attention.decode tracks no gradient: its result is a constant for autograd",
                      stacklevel=2)
    if not isinstance(cache, KVCache):
        raise TypeError(f"argument 'cache': expected a pocketml.attention.KVCache, got {type(cache).__name__}")
    if q.dtype not in _NATIVE_DTYPES:
        raise TypeError(f"argument 'q': expected float32, float16 or bfloat16, got {q.dtype}")
    left, right = _window_bounds(window, False) if window is not None else (-1, 0)
    cap = _softcap_value(softcap)
    scale = _scale_value(scale, q, "q")
    q = _last_dim_contiguous(q)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    core.attention_decode(q, cache._native_views(), cache.length, out, scale, left, right, cap)
    return out


# --- routing torch's SDPA ------------------------------------------------------

def _fused_kernels_take(query, key, value, attn_mask, dropout_p, enable_gqa) -> bool:
    """Whether a torch SDPA call is one the fused kernels compute as torch does: CPU,
    one native dtype, no dropout, 3-D or 4-D with equal batch, key and value of one
    shape and q's head dimension, heads equal or (enable_gqa) dividing q's."""
    tensors = (query, key, value) + ((attn_mask,) if attn_mask is not None else ())
    if dropout_p != 0.0 or any(t.device.type != "cpu" for t in tensors):
        return False
    if not query.dtype == key.dtype == value.dtype or query.dtype not in _NATIVE_DTYPES:
        return False
    if query.dim() not in (3, 4) or key.dim() != query.dim() or key.shape != value.shape:
        return False
    if query.shape[0] != key.shape[0] or query.shape[-1] != key.shape[-1]:
        return False
    if query.dim() == 4 and query.shape[1] != key.shape[1]:
        return enable_gqa and key.shape[1] > 0 and query.shape[1] % key.shape[1] == 0
    return True


# Torch's function while any sdpa_override block is open, and how many are.
_override_lock = threading.Lock()
_torch_sdpa = None
_open_overrides = 0


def _routed_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if _fused_kernels_take(query, key, value, attn_mask, dropout_p, enable_gqa):
        return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                       enable_gqa=enable_gqa)


@contextlib.contextmanager
def sdpa_override():
    """Routes torch.nn.functional.scaled_dot_product_attention to pocketml for
    the calls its fused kernels take (CPU, fp32/fp16/bf16, no dropout, 3-D or
    4-D [B, H, L, D] without batch broadcasting, value's head dimension equal to
    query's); anything else (CUDA, float64, dropout, 5-D, an MLA-style value)
    keeps torch's own. The routing is process-wide: blocks may nest or overlap
    (in one thread or several), and torch's function is back once the last open
    block ends (restoring each block's own predecessor, out of order, left
    torch patched)."""
    global _torch_sdpa, _open_overrides
    functional = torch.nn.functional
    with _override_lock:
        if _open_overrides == 0:
            _torch_sdpa = functional.scaled_dot_product_attention
            functional.scaled_dot_product_attention = _routed_sdpa
        _open_overrides += 1
    try:
        yield
    finally:
        with _override_lock:
            _open_overrides -= 1
            if _open_overrides == 0:  # _torch_sdpa stays: a reference to the router kept past the block still works
                functional.scaled_dot_product_attention = _torch_sdpa
