#pragma once
// Internal: one attention problem (dense batch, packed sequences or decode)
// described uniformly, so forward, backward and decode share one driver.
#include <cstdint>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_kernels.h"
#include "runtime/dtype.h"

namespace pocketml::attention_detail {

// Query rows per block and keys per tile. 64 x 64 fp32 score tiles (16 KiB) and
// the 64-row Q / O blocks stay in L1/L2 for every D up to 256, and 64 is a
// whole number of vectors for AVX2 (8) and AVX-512 (16).
inline constexpr int64_t kBlockQ = 64;
inline constexpr int64_t kBlockK = 64;
// Keys per tile of the direct decode kernels (few query rows, K / V read in
// their storage type): the per-tile work (the online-softmax rescale of the
// output, the row maxima and sums, the kernel calls) is paid once per 256 keys.
inline constexpr int64_t kDecodeBlockK = 256;
// Query rows from which a block's scores are a GEMM against Q transposed (rows
// along the lanes, a whole AVX-512 vector); fewer are scored by row dot
// products. The backward recomputes a block's scores the way the forward did.
inline constexpr int64_t kKeyMajorRows = 16;

inline constexpr float kInfinity = std::numeric_limits<float>::infinity();

// A [batch, head, position, dim] operand; strides in elements, dim stride 1.
struct Operand {
  char* data = nullptr;
  DType dtype = DType::f32;
  int64_t batch_stride = 0, head_stride = 0, seq_stride = 0;

  char* row(int64_t b, int64_t h, int64_t pos) const {
    return data + (b * batch_stride + h * head_stride + pos * seq_stride) * static_cast<int64_t>(dtype_size(dtype));
  }
};

// A [B, H, L, D] tensor (D contiguous) as an operand.
Operand dense_operand(const TensorView& t);

struct Problem {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  Operand q, k, v, out, lse;  // lse: fp32 pairs (row max, log of the row's sum), seq_stride 2
  Operand k_scale, v_scale;   // int8 caches only: fp32 per (batch, head, position)
  // Packed sequences: sequence b covers [cu_q[b], cu_q[b+1]); empty: every
  // sequence starts at 0 with lengths len_q, len_k.
  std::vector<int64_t> cu_q, cu_k;
  int64_t len_q = 0, len_k = 0;
  AttentionOptions options;
  // Dense masks, broadcast: element (b, h, i, j) at mask + sum(index * stride).
  const char* mask = nullptr;
  DType mask_dtype = DType::u8;
  int64_t mask_strides[4] = {};
  const float* alibi_slopes = nullptr;

  int64_t group() const { return q_heads / kv_heads; }
  int64_t q_begin(int64_t b) const { return cu_q.empty() ? 0 : cu_q[b]; }
  int64_t k_begin(int64_t b) const { return cu_k.empty() ? 0 : cu_k[b]; }
  int64_t q_length(int64_t b) const { return cu_q.empty() ? len_q : cu_q[b + 1] - cu_q[b]; }
  int64_t k_length(int64_t b) const { return cu_k.empty() ? len_k : cu_k[b + 1] - cu_k[b]; }
  bool has_score_modifiers() const { return mask != nullptr || alibi_slopes != nullptr || options.softcap > 0.0f; }
};

// The keys [first, last] a query at `pos` may see by the window / causal band
// (first > last when none).
struct KeyBand {
  int64_t first, last;
};
KeyBand key_band(const AttentionOptions& options, int64_t pos, int64_t len_q, int64_t len_k);

// A block of query rows of one sequence: row r is query position pos[r] of head head[r].
struct RowBlock {
  int64_t batch = 0;
  int64_t kv_head = 0;
  int64_t count = 0;
  const int64_t* head = nullptr;
  const int64_t* pos = nullptr;
};

// fp32 scratch of one thread for blocks of up to `max_rows` rows.
struct Scratch {
  Scratch(int64_t max_rows, int64_t head_dim);
  int64_t max_rows, head_dim;
  std::vector<float> q_t, q_rows, scores, tanh_scores, k_tile, v_tile, acc, row_max, row_sum, rescale;
  std::vector<float> d_out, d_out_t, d_scores, delta;
  std::vector<uint16_t> q_f16, d_out_t_f16, p_f16;  // fp16 operands of the FMLAL path (ARM FEAT_FHM)
  std::vector<uint16_t> q_pairs, p_pairs, v_pairs, d_out_pairs;  // bf16 pair-packed operands (AVX512-BF16 path)
};

// The calling thread's scratch, kept between tasks and calls: one task (a block
// of 64 queries over 512 keys is ~50 us) is too short to pay for ~200 KiB of
// fresh zeroed buffers.
Scratch& thread_scratch(int64_t max_rows, int64_t head_dim);

// Widened rows: `count` rows of `dim` elements, `ld` apart in dst.
void load_rows(const Operand& src, const Operand* scale, int64_t b, int64_t h, int64_t pos,
               int64_t count, int64_t dim, float* dst, int64_t ld);
// A K or V tile as fp32: points into the operand itself when it already is fp32.
const float* tile_f32(const Problem& p, const Operand& src, const Operand* scale, int64_t b, int64_t h, int64_t pos,
                      int64_t count, float* buffer, int64_t* ld);
void store_row(const float* src, int64_t dim, const Operand& dst, char* row);

// True when a boolean mask removes every (row, key) of the tile: it is skipped.
bool tile_is_masked_out(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys);
// False when the tile's raw scores are final: no softcap, ALiBi or mask, and
// the window / causal band covers the whole tile for every row.
bool tile_needs_modifiers(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys);
// Applies softcap, ALiBi, masks and the band to the scaled scores of the block
// rows against keys [j0, j0 + n_keys); score (row r, key jj) lives at
// scores[r * row_stride + jj * key_stride]. Writes tanh(s / softcap) at the
// same place in tanh_out when given (the backward pass needs it).
void apply_score_modifiers(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys, float* scores,
                           int64_t row_stride, int64_t key_stride, float* tanh_out);

// bf16 Q, K, V with AVX512-BF16 or ARM's FEAT_BF16: blocks of enough rows feed
// them to gemm_bf16_pairs (vdpbf16ps / BFDOT) as bf16 pairs instead of widening.
bool use_bf16_pairs(const Problem& p, const AttentionKernels& kernels);

// fp16 Q, K, V where the table has the FMLAL kernels (ARM's FEAT_FHM): products
// of fp16 operands accumulated in fp32 instead of widened tiles.
bool use_f16_products(const Problem& p, const AttentionKernels& kernels);

// The keys of [j_begin, j_end) that some row of the block may see by the window /
// causal band (first > last when none).
KeyBand block_key_range(const Problem& p, const RowBlock& rows, int64_t j_begin, int64_t j_end);

// Forward over keys [j_begin, j_end) of the block's sequence: acc (unnormalised
// output, rows x D), row_max and row_sum hold the online-softmax state.
void attend_block(const Problem& p, const AttentionKernels& kernels, const RowBlock& rows, int64_t j_begin,
                  int64_t j_end, Scratch& s);

// Problem builders; they validate every argument.
Problem dense_problem(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                      const AttentionOptions& options);
Problem varlen_problem(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& cu_q,
                       const TensorView& cu_k, const AttentionOptions& options);
// Validates the scale, softcap and window of any attention call.
void check_options(const AttentionOptions& o);
// Checks an output / gradient tensor against its input and binds it as an operand.
Operand bind_like(const TensorView& t, const TensorView& like, const char* arg, bool packed);
Operand bind_lse(const Problem& p, const TensorView& lse, bool packed);

}  // namespace pocketml::attention_detail
