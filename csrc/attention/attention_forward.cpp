// Forward driver: one task per (sequence, query head, block of 64 queries),
// each streaming over the keys its band allows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_problem.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

using namespace attention_detail;

struct QueryBlock {
  int64_t batch, head, first;
};

void run_forward(const Problem& p) {
  std::vector<QueryBlock> blocks;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t n_blocks = (p.q_length(b) + kBlockQ - 1) / kBlockQ;
    for (int64_t h = 0; h < p.q_heads; ++h)
      // Last blocks first: under a causal mask they are the longest, and the
      // pool's chunk claiming then fills the end with the short ones.
      for (int64_t blk = n_blocks - 1; blk >= 0; --blk) blocks.push_back({b, h, blk * kBlockQ});
  }
  const AttentionKernels& kernels = attention_tables().active();
  const int64_t dim = p.head_dim;
  parallel_for(static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    Scratch& s = thread_scratch(kBlockQ, dim);
    int64_t heads[kBlockQ], positions[kBlockQ];
    for (int64_t t = begin; t < end; ++t) {
      const QueryBlock& blk = blocks[t];
      const int64_t n = std::min(kBlockQ, p.q_length(blk.batch) - blk.first);
      for (int64_t r = 0; r < n; ++r) {
        heads[r] = blk.head;
        positions[r] = blk.first + r;
      }
      RowBlock rows{blk.batch, blk.head / p.group(), n, heads, positions};
      std::fill(s.acc.begin(), s.acc.begin() + n * dim, 0.0f);
      std::fill(s.row_max.begin(), s.row_max.begin() + n, -kInfinity);
      std::fill(s.row_sum.begin(), s.row_sum.begin() + n, 0.0f);
      attend_block(p, kernels, rows, 0, p.k_length(blk.batch), s);
      const int64_t q0 = p.q_begin(blk.batch);
      for (int64_t r = 0; r < n; ++r) {
        const float sum = s.row_sum[r];
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a fully masked row gives zeros
        float* a = s.acc.data() + r * dim;
        for (int64_t d = 0; d < dim; ++d) a[d] *= inv;
        store_row(a, dim, p.out, p.out.row(blk.batch, blk.head, q0 + positions[r]));
        // (max, log sum) apart: their sum rounds to max when max is ~-3e38 (a finfo.min mask).
        float* lse = reinterpret_cast<float*>(p.lse.row(blk.batch, blk.head, q0 + positions[r]));
        lse[0] = sum > 0.0f ? s.row_max[r] : 0.0f;
        lse[1] = sum > 0.0f ? std::log(sum) : kInfinity;
      }
    }
  });
}

}  // namespace

void attention_forward(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                       const AttentionOptions& options, const TensorView& out, const TensorView& lse) {
  Problem p = dense_problem(q, k, v, bias, options);
  p.out = bind_like(out, q, "out", false);
  p.lse = bind_lse(p, lse, false);
  run_forward(p);
}

void varlen_attention_forward(const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const AttentionOptions& options, const TensorView& out, const TensorView& lse) {
  Problem p = varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, options);
  p.out = bind_like(out, q, "out", true);
  p.lse = bind_lse(p, lse, true);
  run_forward(p);
}

}  // namespace pocketml
