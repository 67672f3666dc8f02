// Backward driver (FlashAttention-2's algorithm): probabilities are recomputed
// from the saved log-sum-exp, never stored. One task owns a (sequence, KV head,
// key range): it accumulates dK and dV for its keys in fp32 while walking every
// query head of its group block by block, so no two threads write the same dK
// or dV. With one key range per pair, dQ is final per query block and stored
// directly; when the pairs are fewer than the threads (MQA, batch 1) the keys
// are split into ranges, each task accumulates its dQ contribution privately,
// and a second pass sums them.
#include <algorithm>
#include <cstring>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_problem.h"
#include "convert/convert_kernels.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

using namespace attention_detail;

struct Gradients {
  Operand dout, dq, dk, dv;
};

// Gradients of one query block against keys [j_begin, j_end): adds to dk_acc /
// dv_acc (rows indexed by key) and to dq_acc (n x D, unscaled).
void backward_block(const Problem& p, const Gradients& g, const AttentionKernels& kernels, const RowBlock& rows,
                    int64_t j_begin, int64_t j_end, Scratch& s, float* dk_acc, float* dv_acc, float* dq_acc) {
  const int64_t n = rows.count, dim = p.head_dim, b = rows.batch;
  const int64_t q0 = p.q_begin(b), k0 = p.k_begin(b), head = rows.head[0];
  const float scale = p.options.scale;

  const KeyBand keys = block_key_range(p, rows, j_begin, j_end);
  const int64_t first = keys.first, last = keys.last;
  if (first > last) return;

  float* q_rows = s.q_rows.data();  // scale * Q, for dK
  float* d_out = s.d_out.data();
  float* row_max = s.row_max.data();
  float* log_sum = s.row_sum.data();
  float* delta = s.delta.data();
  load_rows(p.q, nullptr, b, head, q0 + rows.pos[0], n, dim, q_rows, dim);
  load_rows(g.dout, nullptr, b, head, q0 + rows.pos[0], n, dim, d_out, dim);
  float* out_rows = s.v_tile.data();  // free until the first tile
  load_rows(p.out, nullptr, b, head, q0 + rows.pos[0], n, dim, out_rows, dim);
  // bf16: S = Q K^T, dP = dO V^T and dQ = dS K take bf16 pairs (K and V straight
  // from the inputs, dS rounded to bf16 as FlashAttention does on GPUs); dV and
  // dK, whose pairs would run along the query rows, stay in fp32.
  const bool bf16_pairs = use_bf16_pairs(p, kernels);
  for (int64_t r = 0; r < n; ++r) {
    // delta_r = dO_r . O_r = sum_j P_rj dP_rj: the softmax Jacobian's row term.
    float dot = 0.0f;
    for (int64_t d = 0; d < dim; ++d) dot += d_out[r * dim + d] * out_rows[r * dim + d];
    delta[r] = dot;
    const float* lse = reinterpret_cast<const float*>(p.lse.row(b, head, q0 + rows.pos[r]));
    row_max[r] = lse[0];
    log_sum[r] = lse[1];
    for (int64_t d = 0; d < dim; ++d) q_rows[r * dim + d] *= scale;
    if (bf16_pairs) {
      // q_pairs[d / 2][r] = (q[r][d], q[r][d + 1]), unscaled, and the same of dO: 32-bit transposes (exact).
      const char* q_row = p.q.row(b, head, q0 + rows.pos[r]);
      const char* d_out_row = g.dout.row(b, head, q0 + rows.pos[r]);
      for (int64_t d = 0; d < dim / 2; ++d) {
        std::memcpy(s.q_pairs.data() + 2 * (d * n + r), q_row + 4 * d, 4);
        std::memcpy(s.d_out_pairs.data() + 2 * (d * n + r), d_out_row + 4 * d, 4);
      }
    } else {
      for (int64_t d = 0; d < dim; ++d) {
        s.q_t[d * n + r] = q_rows[r * dim + d];
        s.d_out_t[d * n + r] = d_out[r * dim + d];
      }
    }
  }
  // fp16 inputs with ARM's FEAT_FHM: S = K Q^T, dP^T = V dO^T and dV += P^T dO
  // take Q, K, V, dO as stored (fp16) and P rounded to fp16 (probabilities in
  // [0, 1]). dS has no bound on its range, so dK and dQ stay fp32 GEMMs.
  const bool f16_products = use_f16_products(p, kernels);
  // A block of fewer than kKeyMajorRows rows was scored in the forward pass by row dot
  // products (attend_block: the decode kernel, or dot_rows), whose summation
  // order differs from the GEMM's: S is recomputed the same way, so that
  // exp(S - lse) meets the forward's lse exactly (the GEMM's S moved by
  // |S| * 2^-24, and at scores of ~150 the one-hot P by 2^-16: dV off by 5e-5
  // where fp32 gives 1e-36). Not yet for fp16 products (ARM FEAT_FHM), whose
  // forward uses dot_rows_f16 on row-major fp16 Q: unmeasured there.
  const bool row_dots = n < kKeyMajorRows && !f16_products;
  const bool direct_rows = row_dots && kernels.decode_scores != nullptr;
  const auto f16_rows = [](const Operand& o, int64_t b, int64_t h, int64_t pos) {
    return reinterpret_cast<const uint16_t*>(o.row(b, h, pos));
  };
  if (f16_products) {
    const uint16_t* q16 = f16_rows(p.q, b, head, q0 + rows.pos[0]);
    const uint16_t* dout16 = f16_rows(g.dout, b, head, q0 + rows.pos[0]);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t d = 0; d < dim; ++d) {
        s.q_f16[d * n + r] = q16[r * p.q.seq_stride + d];
        s.d_out_t_f16[d * n + r] = dout16[r * g.dout.seq_stride + d];
      }
  }
  float* st = s.scores.data();
  float* dst = s.d_scores.data();
  float* tanh_scores = p.options.softcap > 0.0f ? s.tanh_scores.data() : nullptr;
  for (int64_t j0 = first; j0 <= last; j0 += kBlockK) {
    const int64_t n_keys = std::min(kBlockK, last + 1 - j0);
    if (tile_is_masked_out(p, rows, j0, n_keys)) continue;
    const auto* k_rows = reinterpret_cast<const uint16_t*>(p.k.row(b, rows.kv_head, k0 + j0));
    const auto* v_rows = reinterpret_cast<const uint16_t*>(p.v.row(b, rows.kv_head, k0 + j0));
    int64_t ldk = 0, ldv = 0;
    const bool needs_k_tile = !bf16_pairs || (row_dots && !direct_rows);
    const float* k_tile =
        needs_k_tile ? tile_f32(p, p.k, nullptr, b, rows.kv_head, k0 + j0, n_keys, s.k_tile.data(), &ldk) : nullptr;
    std::fill(st, st + n_keys * n, 0.0f);
    if (direct_rows) {
      kernels.decode_scores(p.k.dtype, n, n_keys, dim, q_rows, p.k.row(b, rows.kv_head, k0 + j0), p.k.seq_stride,
                            nullptr, 0, dst);  // [n][n_keys]: dst is free until dP
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < n_keys; ++j) st[j * n + r] = dst[r * n_keys + j];
    } else if (row_dots) {
      kernels.dot_rows(n, n_keys, dim, q_rows, dim, k_tile, ldk, st, 1, n);  // key-major, as the GEMM writes it
    } else if (f16_products) {
      kernels.gemm_f16(n_keys, n, dim, k_rows, p.k.seq_stride, 1, s.q_f16.data(), n, st, n);
      for (int64_t i = 0; i < n_keys * n; ++i) st[i] *= scale;
    } else if (bf16_pairs) {
      kernels.gemm_bf16_pairs(n_keys, n, dim / 2, k_rows, p.k.seq_stride, 2, s.q_pairs.data(), 2 * n, st, n);
      for (int64_t i = 0; i < n_keys * n; ++i) st[i] *= scale;
    } else {
      kernels.gemm_accumulate(n_keys, n, dim, k_tile, ldk, 1, s.q_t.data(), n, st, n);
    }
    if (tile_needs_modifiers(p, rows, j0, n_keys)) apply_score_modifiers(p, rows, j0, n_keys, st, 1, n, tanh_scores);
    kernels.exp_minus_lse(st, n_keys, n, row_max, log_sum);  // st = P^T
    // dV += P^T dO;  dP^T = V dO^T
    std::fill(dst, dst + n_keys * n, 0.0f);
    if (f16_products) {
      convert_tables().active().f32_to_f16(st, s.p_f16.data(), n_keys * n);
      kernels.gemm_f16(n_keys, dim, n, s.p_f16.data(), n, 1, f16_rows(g.dout, b, head, q0 + rows.pos[0]),
                       g.dout.seq_stride, dv_acc + j0 * dim, dim);
      kernels.gemm_f16(n_keys, n, dim, v_rows, p.v.seq_stride, 1, s.d_out_t_f16.data(), n, dst, n);
    } else if (bf16_pairs) {
      kernels.gemm_accumulate(n_keys, dim, n, st, n, 1, d_out, dim, dv_acc + j0 * dim, dim);
      kernels.gemm_bf16_pairs(n_keys, n, dim / 2, v_rows, p.v.seq_stride, 2, s.d_out_pairs.data(), 2 * n, dst, n);
    } else {
      const float* v_tile = tile_f32(p, p.v, nullptr, b, rows.kv_head, k0 + j0, n_keys, s.v_tile.data(), &ldv);
      kernels.gemm_accumulate(n_keys, dim, n, st, n, 1, d_out, dim, dv_acc + j0 * dim, dim);
      kernels.gemm_accumulate(n_keys, n, dim, v_tile, ldv, 1, s.d_out_t.data(), n, dst, n);
    }
    // dS = P * (dP - delta), through the softcap's tanh when there is one.
    for (int64_t j = 0; j < n_keys; ++j) {
      float* ds_row = dst + j * n;
      const float* p_row = st + j * n;
      for (int64_t r = 0; r < n; ++r) ds_row[r] = p_row[r] * (ds_row[r] - delta[r]);
      if (tanh_scores) {
        const float* t_row = tanh_scores + j * n;
        for (int64_t r = 0; r < n; ++r) ds_row[r] *= 1.0f - t_row[r] * t_row[r];
      }
    }
    // dK += dS^T (scale Q);  dQ += dS K (scaled at the end)
    kernels.gemm_accumulate(n_keys, dim, n, dst, n, 1, q_rows, dim, dk_acc + j0 * dim, dim);
    if (bf16_pairs) {
      // p_pairs[j / 2][r] (dS) and v_pairs[j / 2][d] (K): pairs of keys, an odd last key paired with zeros.
      kernels.pair_rows_f32_to_bf16(dst, n, n_keys, n, s.p_pairs.data());
      kernels.pair_rows_bf16(k_rows, p.k.seq_stride, n_keys, dim, s.v_pairs.data());
      kernels.gemm_bf16_pairs(n, dim, (n_keys + 1) / 2, s.p_pairs.data(), 2, 2 * n, s.v_pairs.data(), 2 * dim,
                              dq_acc, dim);
    } else {
      kernels.gemm_accumulate(n, dim, n_keys, dst, 1, n, k_tile, ldk, dq_acc, dim);
    }
  }
}

void store_dq_rows(const Problem& p, const Gradients& g, int64_t b, int64_t h, int64_t first, int64_t n,
                   float* dq_acc) {
  const int64_t dim = p.head_dim, q0 = p.q_begin(b);
  for (int64_t r = 0; r < n; ++r) {
    float* a = dq_acc + r * dim;
    for (int64_t d = 0; d < dim; ++d) a[d] *= p.options.scale;
    store_row(a, dim, g.dq, g.dq.row(b, h, q0 + first + r));
  }
}

void run_backward(const Problem& p, const Gradients& g) {
  const AttentionKernels& kernels = attention_tables().active();
  const int64_t pairs = p.batch * p.kv_heads;
  if (pairs == 0) return;  // no sequences or no heads: every gradient is empty
  const int64_t dim = p.head_dim, group = p.group();
  int64_t longest_k = 0;
  for (int64_t b = 0; b < p.batch; ++b) longest_k = std::max(longest_k, p.k_length(b));
  // Two ranges per thread balance causal masks; a range is at least one tile.
  const int64_t threads = ThreadPool::global().num_threads();
  const int64_t ranges = pairs >= threads ? 1
                                          : std::max<int64_t>(1, std::min((2 * threads + pairs - 1) / pairs,
                                                                          (longest_k + kBlockK - 1) / kBlockK));
  const bool split = ranges > 1;
  // Split: dQ partials per task, [group * len_q * D] floats each.
  std::vector<std::vector<float>> dq_partial(split ? pairs * ranges : 0);
  parallel_for(pairs * ranges, 1, [&](int64_t begin, int64_t end) {
    Scratch& s = thread_scratch(kBlockQ, dim);
    int64_t heads[kBlockQ], positions[kBlockQ];
    std::vector<float> dk_acc, dv_acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / ranges, range = task % ranges;
      const int64_t b = pair / p.kv_heads, kv_head = pair % p.kv_heads;
      const int64_t len_q = p.q_length(b), len_k = p.k_length(b);
      const int64_t range_len = ((len_k + ranges - 1) / ranges + kBlockK - 1) / kBlockK * kBlockK;
      const int64_t j_begin = std::min(len_k, range * range_len), j_end = std::min(len_k, j_begin + range_len);
      dk_acc.assign((j_end - j_begin) * dim, 0.0f);
      dv_acc.assign((j_end - j_begin) * dim, 0.0f);
      if (split) dq_partial[task].assign(group * len_q * dim, 0.0f);
      for (int64_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
        for (int64_t first = 0; first < len_q; first += kBlockQ) {
          const int64_t n = std::min(kBlockQ, len_q - first);
          for (int64_t r = 0; r < n; ++r) {
            heads[r] = h;
            positions[r] = first + r;
          }
          float* dq_acc = split ? dq_partial[task].data() + ((h - kv_head * group) * len_q + first) * dim
                                : s.acc.data();
          if (!split) std::fill(dq_acc, dq_acc + n * dim, 0.0f);
          // dk_acc / dv_acc hold keys from j_begin on.
          backward_block(p, g, kernels, RowBlock{b, kv_head, n, heads, positions}, j_begin, j_end, s,
                         dk_acc.data() - j_begin * dim, dv_acc.data() - j_begin * dim, dq_acc);
          if (!split) store_dq_rows(p, g, b, h, first, n, dq_acc);
        }
      }
      const int64_t k0 = p.k_begin(b);
      for (int64_t j = j_begin; j < j_end; ++j) {
        store_row(dk_acc.data() + (j - j_begin) * dim, dim, g.dk, g.dk.row(b, kv_head, k0 + j));
        store_row(dv_acc.data() + (j - j_begin) * dim, dim, g.dv, g.dv.row(b, kv_head, k0 + j));
      }
    }
  });
  if (!split) return;
  parallel_for(pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sum;
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / p.kv_heads, kv_head = pair % p.kv_heads, len_q = p.q_length(b);
      sum.assign(group * len_q * dim, 0.0f);
      for (int64_t range = 0; range < ranges; ++range) {
        const std::vector<float>& part = dq_partial[pair * ranges + range];
        for (size_t i = 0; i < part.size(); ++i) sum[i] += part[i];
      }
      for (int64_t h = 0; h < group; ++h)
        store_dq_rows(p, g, b, kv_head * group + h, 0, len_q, sum.data() + h * len_q * dim);
    }
  });
}

}  // namespace

void attention_backward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                        const AttentionOptions& options, const TensorView& out, const TensorView& lse,
                        const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  Problem p = dense_problem(q, k, v, bias, options);
  p.out = bind_like(out, q, "out", false);
  p.lse = bind_lse(p, lse, false);
  const Gradients g{bind_like(dout, q, "grad_out", false), bind_like(dq, q, "dq", false),
                    bind_like(dk, k, "dk", false), bind_like(dv, v, "dv", false)};
  run_backward(p, g);
}

void varlen_attention_backward(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                               const AttentionOptions& options, const TensorView& out, const TensorView& lse,
                               const TensorView& dout, const TensorView& dq, const TensorView& dk,
                               const TensorView& dv) {
  Problem p = varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, options);
  p.out = bind_like(out, q, "out", true);
  p.lse = bind_lse(p, lse, true);
  const Gradients g{bind_like(dout, q, "grad_out", true), bind_like(dq, q, "dq", true),
                    bind_like(dk, k, "dk", true), bind_like(dv, v, "dv", true)};
  run_backward(p, g);
}

}  // namespace pocketml
