#pragma once
// Fused attention on the CPU (FlashAttention-2 style tiled online softmax).
//
// Layouts follow torch: q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D] with any
// strides as long as the last dimension is contiguous (a transposed
// [B, L, H, D] view works without a copy). Hq must be a multiple of Hkv
// (grouped-query attention; K/V are never repeated in memory). fp32, fp16 and
// bf16 inputs accumulate in fp32; outputs have the dtype of q.
//
// Score of query i and key j (before softmax):
//   s = scale * q_i . k_j
//   s = softcap * tanh(s / softcap)                   if softcap > 0
//   s -= alibi_slope[h] * |i + diagonal - j|          if alibi slopes are given
//   s += mask[b, h, i, j]  (additive mask)  or  s = -inf where !mask (boolean)
//   s = -inf unless i + diagonal - window_left <= j <= i + diagonal + window_right
// where diagonal = 0 (top-left alignment, torch's is_causal) or Lk - Lq
// (bottom-right: queries at the end of the keys, as in a KV cache), and a
// negative window bound is unbounded (causal = window_right 0).
// A row whose scores are all -inf gets a zero output and lse = (0, +inf).
#include <cstdint>

#include "runtime/tensor.h"

namespace pocketml {

struct AttentionOptions {
  float scale = 1.0f;
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded; 0 for causal
  bool bottom_right = false;  // diagonal alignment of the window, causal mask and ALiBi
  float softcap = 0.0f;       // 0: off
};

// Optional score modifiers of the dense (batched) entry points.
struct AttentionBias {
  const TensorView* mask = nullptr;          // broadcast to [B, Hq, Lq, Lk]: uint8 (bool, nonzero keeps) or q's dtype
  const TensorView* alibi_slopes = nullptr;  // fp32 [Hq]
};

// out [B, Hq, Lq, D] (q's dtype, last dim contiguous), lse fp32 [B, Hq, Lq, 2] contiguous:
// per row its score max m and log(sum exp(s - m)), kept apart (see exp_minus_lse).
void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                       const AttentionOptions& options, const TensorView& out, const TensorView& lse);

// Gradients of attention_forward from its out and lse; dq, dk, dv have the shapes
// and dtypes of q, k, v (last dim contiguous).
void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                        const AttentionOptions& options, const TensorView& out, const TensorView& lse,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv);

// Packed sequences: q [Tq, Hq, D], k and v [Tk, Hkv, D]; sequence s holds rows
// cu_seqlens_q[s] .. cu_seqlens_q[s + 1] (int32 or int64, non-decreasing,
// starting at 0). Sequences never attend to each other. lse is fp32 [Hq, Tq, 2].
void varlen_attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const AttentionOptions& options, const TensorView& out, const TensorView& lse);
void varlen_attention_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                               const AttentionOptions& options, const TensorView& out, const TensorView& lse,
                               const TensorView& dout, const TensorView& dq, const TensorView& dk,
                               const TensorView& dv);

// Decode: q [B, Hq, Lq <= 8, D] against the first `length` positions of a KV
// cache k, v [B, Hkv, max_len, D] (fp32, fp16, bf16 or int8; int8 needs fp32
// scales [B, Hkv, max_len], one per token and head). The queries are the last
// Lq positions (bottom-right alignment). The KV length is split across threads.
void attention_decode(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView* k_scale,
                      const TensorView* v_scale, int64_t length, const AttentionOptions& options,
                      const TensorView& out);

// Quantizes src [B, Hkv, T, D] (fp32/fp16/bf16) into the int8 cache rows
// dst[:, :, start:start+T] with one scale per token and head: max|x| / 127,
// values rounded to nearest (ties to even); an all-zero row gets scale 0.
void kv_quantize_int8(const TensorView& src, const TensorView& dst, const TensorView& scale, int64_t start);

}  // namespace pocketml
