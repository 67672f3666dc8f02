#include "attention/attention_problem.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "convert/convert_kernels.h"
#include "runtime/cpu_features.h"
#include "runtime/error.h"
#include "runtime/half.h"

namespace pocketml::attention_detail {

KeyBand key_band(const AttentionOptions& options, int64_t pos, int64_t len_q, int64_t len_k) {
  const int64_t diagonal = pos + (options.bottom_right ? len_k - len_q : 0);
  KeyBand band{0, len_k - 1};
  // A bound reaching past the keys leaves the band as it is; compared first, as
  // diagonal -/+ a bound near 2^63 overflowed and masked every key.
  if (options.window_left >= 0 && options.window_left <= diagonal) band.first = diagonal - options.window_left;
  if (options.window_right >= 0 && options.window_right < band.last - diagonal)
    band.last = diagonal + options.window_right;
  return band;
}

Scratch::Scratch(int64_t max_rows, int64_t head_dim)
    : max_rows(max_rows),
      head_dim(head_dim),
      q_t(max_rows * head_dim),
      q_rows(max_rows * head_dim),
      scores(std::max(kBlockK, kDecodeBlockK) * max_rows),
      tanh_scores(kBlockK * max_rows),
      k_tile(kBlockK * head_dim),
      v_tile(kBlockK * head_dim),
      acc(max_rows * head_dim),
      row_max(max_rows),
      row_sum(max_rows),
      rescale(max_rows),
      d_out(max_rows * head_dim),
      d_out_t(max_rows * head_dim),
      d_scores(kBlockK * max_rows),
      delta(max_rows),
      q_f16(max_rows * head_dim),
      d_out_t_f16(max_rows * head_dim),
      p_f16(kBlockK * max_rows),
      q_pairs(max_rows * (head_dim + 1)),
      p_pairs(2 * (kBlockK / 2 + 1) * max_rows),
      v_pairs(2 * (kBlockK / 2 + 1) * head_dim),
      d_out_pairs(max_rows * (head_dim + 1)) {}

Scratch& thread_scratch(int64_t max_rows, int64_t head_dim) {
  thread_local std::unique_ptr<Scratch> scratch;
  if (!scratch || scratch->max_rows != max_rows || scratch->head_dim != head_dim)
    scratch = std::make_unique<Scratch>(max_rows, head_dim);
  return *scratch;
}

namespace {

float element_f32(const char* p, DType dtype) {
  switch (dtype) {
    case DType::f32: {
      float f;
      std::memcpy(&f, p, sizeof(f));
      return f;
    }
    case DType::f16: {
      uint16_t h;
      std::memcpy(&h, p, sizeof(h));
      return fp16_to_fp32(h);
    }
    case DType::bf16: {
      uint16_t h;
      std::memcpy(&h, p, sizeof(h));
      return bf16_to_fp32(h);
    }
    default:
      return static_cast<float>(*reinterpret_cast<const uint8_t*>(p));
  }
}

}  // namespace

void load_rows(const Operand& src, const Operand* scale, int64_t b, int64_t h, int64_t pos,
               int64_t count, int64_t dim, float* dst, int64_t ld) {
  const AttentionKernels& kernels = attention_tables().active();
  const char* first = src.row(b, h, pos);
  switch (src.dtype) {
    case DType::f32:
      for (int64_t r = 0; r < count; ++r)
        std::memcpy(dst + r * ld, reinterpret_cast<const float*>(first) + r * src.seq_stride, dim * sizeof(float));
      break;
    case DType::f16:
      kernels.widen_f16_rows(reinterpret_cast<const uint16_t*>(first), src.seq_stride, count, dim, dst, ld);
      break;
    case DType::bf16:
      kernels.widen_bf16_rows(reinterpret_cast<const uint16_t*>(first), src.seq_stride, count, dim, dst, ld);
      break;
    case DType::i8:
      kernels.widen_int8_rows(reinterpret_cast<const int8_t*>(first), src.seq_stride,
                              reinterpret_cast<const float*>(scale->row(b, h, pos)), scale->seq_stride, count, dim,
                              dst, ld);
      break;
    default: fail(ErrorKind::Runtime, "attention: unexpected operand dtype");
  }
}

const float* tile_f32(const Problem& p, const Operand& src, const Operand* scale, int64_t b, int64_t h, int64_t pos,
                      int64_t count, float* buffer, int64_t* ld) {
  if (src.dtype == DType::f32) {
    *ld = src.seq_stride;
    return reinterpret_cast<const float*>(src.row(b, h, pos));
  }
  *ld = p.head_dim;
  load_rows(src, scale, b, h, pos, count, p.head_dim, buffer, p.head_dim);
  return buffer;
}

void store_row(const float* src, int64_t dim, const Operand& dst, char* row) {
  const ConvertKernels& convert = convert_tables().active();
  switch (dst.dtype) {
    case DType::f32: std::memcpy(row, src, dim * sizeof(float)); break;
    case DType::f16: convert.f32_to_f16(src, row, dim); break;
    case DType::bf16: convert.f32_to_bf16(src, row, dim); break;
    default: fail(ErrorKind::Runtime, "attention: unexpected output dtype");
  }
}

namespace {

const char* mask_row(const Problem& p, int64_t b, int64_t h, int64_t i) {
  return p.mask + (b * p.mask_strides[0] + h * p.mask_strides[1] + i * p.mask_strides[2]) *
                      static_cast<int64_t>(dtype_size(p.mask_dtype));
}

}  // namespace

bool tile_is_masked_out(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys) {
  if (p.mask == nullptr || p.mask_dtype != DType::u8) return false;
  for (int64_t r = 0; r < rows.count; ++r) {
    const char* m = mask_row(p, rows.batch, rows.head[r], rows.pos[r]);
    for (int64_t j = j0; j < j0 + n_keys; ++j)
      if (m[j * p.mask_strides[3]] != 0) return false;
  }
  return true;
}

bool tile_needs_modifiers(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys) {
  if (p.has_score_modifiers()) return true;
  const int64_t len_q = p.q_length(rows.batch), len_k = p.k_length(rows.batch);
  for (int64_t r = 0; r < rows.count; ++r) {
    const KeyBand band = key_band(p.options, rows.pos[r], len_q, len_k);
    if (band.first > j0 || band.last < j0 + n_keys - 1) return true;
  }
  return false;
}

void apply_score_modifiers(const Problem& p, const RowBlock& rows, int64_t j0, int64_t n_keys, float* scores,
                           int64_t row_stride, int64_t key_stride, float* tanh_out) {
  const int64_t n = rows.count;
  const int64_t len_q = p.q_length(rows.batch), len_k = p.k_length(rows.batch);
  const float cap = p.options.softcap;
  const int64_t mask_size = p.mask ? static_cast<int64_t>(dtype_size(p.mask_dtype)) : 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = rows.pos[r];
    const KeyBand band = key_band(p.options, i, len_q, len_k);
    const int64_t diagonal = i + (p.options.bottom_right ? len_k - len_q : 0);
    const float slope = p.alibi_slopes ? p.alibi_slopes[rows.head[r]] : 0.0f;
    const char* m = p.mask ? mask_row(p, rows.batch, rows.head[r], i) : nullptr;
    for (int64_t jj = 0; jj < n_keys; ++jj) {
      const int64_t j = j0 + jj;
      const int64_t at = r * row_stride + jj * key_stride;
      float s = scores[at];
      if (cap > 0.0f) {
        const float t = std::tanh(s / cap);
        if (tanh_out) tanh_out[at] = t;
        s = cap * t;
      }
      if (p.alibi_slopes) s -= slope * static_cast<float>(std::llabs(diagonal - j));
      if (m) {
        const char* e = m + j * p.mask_strides[3] * mask_size;
        if (p.mask_dtype == DType::u8) {
          if (*e == 0) s = -kInfinity;
        } else {
          s += element_f32(e, p.mask_dtype);
        }
      }
      if (j < band.first || j > band.last) s = -kInfinity;
      scores[at] = s;
    }
  }
}

namespace {

// With few query rows (decode) each K/V tile is used once, straight from DRAM,
// and the work per tile is too short for the hardware prefetcher alone to keep
// enough cache lines in flight. Direct decode kernels prefetch as they go (see
// prefetch_decode_row); for tiles widened first, request the tile
// kPrefetchTiles ahead (and the first ones up front) while this one is computed.
constexpr int64_t kPrefetchTiles = 2;

void prefetch_rows(const char* row, int64_t stride_bytes, int64_t row_bytes, int64_t count) {
  if (stride_bytes == row_bytes) {  // contiguous rows: one range
    for (const char* end = row + count * row_bytes; row < end; row += 64) __builtin_prefetch(row);
    return;
  }
  for (int64_t r = 0; r < count; ++r, row += stride_bytes)
    for (int64_t offset = 0; offset < row_bytes; offset += 64) __builtin_prefetch(row + offset);
}

void prefetch_tile(const Problem& p, int64_t b, int64_t kv_head, int64_t pos, int64_t count) {
  const int64_t element = static_cast<int64_t>(dtype_size(p.k.dtype));
  prefetch_rows(p.k.row(b, kv_head, pos), p.k.seq_stride * element, p.head_dim * element, count);
  prefetch_rows(p.v.row(b, kv_head, pos), p.v.seq_stride * element, p.head_dim * element, count);
}

}  // namespace

bool use_bf16_pairs(const Problem& p, const AttentionKernels& kernels) {
  return p.q.dtype == DType::bf16 && p.k.dtype == DType::bf16 && p.head_dim % 2 == 0 &&
         kernels.gemm_bf16_pairs != nullptr && (cpu_features().avx512bf16 || cpu_features().neon_bf16);
}

bool use_f16_products(const Problem& p, const AttentionKernels& kernels) {
  return p.q.dtype == DType::f16 && p.k.dtype == DType::f16 && kernels.gemm_f16 != nullptr &&
         kernels.dot_rows_f16 != nullptr;
}

Operand dense_operand(const TensorView& t) {
  return Operand{static_cast<char*>(t.data), t.dtype, t.strides[0], t.strides[1], t.strides[2]};
}

KeyBand block_key_range(const Problem& p, const RowBlock& rows, int64_t j_begin, int64_t j_end) {
  const int64_t len_q = p.q_length(rows.batch), len_k = p.k_length(rows.batch);
  KeyBand keys{j_end, j_begin - 1};
  for (int64_t r = 0; r < rows.count; ++r) {
    const KeyBand band = key_band(p.options, rows.pos[r], len_q, len_k);
    keys.first = std::min(keys.first, band.first);
    keys.last = std::max(keys.last, band.last);
  }
  return KeyBand{std::max(keys.first, j_begin), std::min(keys.last, j_end - 1)};
}

void attend_block(const Problem& p, const AttentionKernels& kernels, const RowBlock& rows, int64_t j_begin,
                  int64_t j_end, Scratch& s) {
  const int64_t n = rows.count, dim = p.head_dim, b = rows.batch;
  const int64_t q0 = p.q_begin(b), k0 = p.k_begin(b);
  const Operand* k_scale = p.k.dtype == DType::i8 ? &p.k_scale : nullptr;
  const Operand* v_scale = p.v.dtype == DType::i8 ? &p.v_scale : nullptr;

  const KeyBand keys = block_key_range(p, rows, j_begin, j_end);
  const int64_t first = keys.first, last = keys.last;
  if (first > last) return;

  // Enough rows to fill a vector: scores as a GEMM against Q transposed, in a
  // key-major tile (query rows along the lanes). Few rows (decode): row dot
  // products into a query-major tile (keys along the lanes).
  const bool key_major = n >= kKeyMajorRows;
  // bf16 inputs with AVX512-BF16 or ARM's FEAT_BF16: Q, K, P and V enter
  // vdpbf16ps / BFDOT as bf16 pairs; P is rounded to bf16 as FlashAttention
  // does on GPUs. (The NEON table has the pair kernels only where BFDOT runs.)
  const bool bf16_pairs = key_major && use_bf16_pairs(p, kernels);
  // fp16 queries and keys with ARM's FEAT_FHM (prefill, and decode from an
  // fp16 cache): Q, K, P and V enter FMLAL as fp16; P is rounded to fp16 as
  // FlashAttention does on GPUs (the NEON table has the fp16 kernels only
  // where FMLAL runs).
  const bool f16_products = use_f16_products(p, kernels);
  // Few rows with a direct decode kernel: K and V are read in their storage type.
  const bool direct_rows = !key_major && kernels.decode_scores != nullptr;
  float* q_rows = s.q_rows.data();
  if (f16_products) {
    // Q^T (key-major) or Q's rows, unscaled (exact): the scale multiplies the fp32 scores.
    for (int64_t r = 0; r < n; ++r) {
      const uint16_t* q_row = reinterpret_cast<const uint16_t*>(p.q.row(b, rows.head[r], q0 + rows.pos[r]));
      for (int64_t d = 0; d < dim; ++d) s.q_f16[key_major ? d * n + r : r * dim + d] = q_row[d];
    }
  } else if (bf16_pairs) {
    // q_pairs[d / 2][r] = (q[r][d], q[r][d + 1]): a 32-bit transpose of Q, unscaled (exact).
    uint32_t* q_pairs = reinterpret_cast<uint32_t*>(s.q_pairs.data());
    for (int64_t r = 0; r < n; ++r) {
      const char* q_row = p.q.row(b, rows.head[r], q0 + rows.pos[r]);
      for (int64_t d = 0; d < dim / 2; ++d) std::memcpy(q_pairs + d * n + r, q_row + 4 * d, 4);
    }
  } else {
    for (int64_t r = 0; r < n; ++r) {
      load_rows(p.q, nullptr, b, rows.head[r], q0 + rows.pos[r], 1, dim, q_rows + r * dim, dim);
      for (int64_t d = 0; d < dim; ++d) q_rows[r * dim + d] *= p.options.scale;
    }
    if (key_major)
      for (int64_t r = 0; r < n; ++r)
        for (int64_t d = 0; d < dim; ++d) s.q_t[d * n + r] = q_rows[r * dim + d];
  }
  float* scores = s.scores.data();
  // The 256-key tiles only where the direct kernels run: the fp16-product path
  // (FMLAL) converts P into a kBlockK-key scratch tile.
  const int64_t block_k = direct_rows && !f16_products ? kDecodeBlockK : kBlockK;
  for (int64_t j0 = first; j0 <= last; j0 += block_k) {
    const int64_t n_keys = std::min(block_k, last + 1 - j0);
    if (tile_is_masked_out(p, rows, j0, n_keys)) continue;
    if (!key_major && !direct_rows) {
      const int64_t ahead = j0 + kPrefetchTiles * kBlockK;
      if (j0 == first) prefetch_tile(p, b, rows.kv_head, k0 + j0, std::min(ahead, last + 1) - j0);
      else if (ahead <= last) prefetch_tile(p, b, rows.kv_head, k0 + ahead, std::min(kBlockK, last + 1 - ahead));
    }
    const int64_t row_stride = key_major ? 1 : n_keys, key_stride = key_major ? n : 1;
    int64_t ldk, ldv;
    if (bf16_pairs) {
      std::fill(scores, scores + n_keys * n, 0.0f);
      kernels.gemm_bf16_pairs(n_keys, n, dim / 2, reinterpret_cast<const uint16_t*>(p.k.row(b, rows.kv_head, k0 + j0)),
                              p.k.seq_stride, 2, s.q_pairs.data(), 2 * n, scores, n);
      for (int64_t i = 0; i < n_keys * n; ++i) scores[i] *= p.options.scale;
    } else if (f16_products) {
      const uint16_t* k_rows = reinterpret_cast<const uint16_t*>(p.k.row(b, rows.kv_head, k0 + j0));
      if (key_major) {
        std::fill(scores, scores + n_keys * n, 0.0f);
        kernels.gemm_f16(n_keys, n, dim, k_rows, p.k.seq_stride, 1, s.q_f16.data(), n, scores, n);
      } else {
        kernels.dot_rows_f16(n, n_keys, dim, s.q_f16.data(), dim, k_rows, p.k.seq_stride, scores, n_keys, 1);
      }
      for (int64_t i = 0; i < n_keys * n; ++i) scores[i] *= p.options.scale;
    } else if (direct_rows) {
      kernels.decode_scores(p.k.dtype, n, n_keys, dim, q_rows, p.k.row(b, rows.kv_head, k0 + j0), p.k.seq_stride,
                            k_scale ? reinterpret_cast<const float*>(k_scale->row(b, rows.kv_head, k0 + j0)) : nullptr,
                            k_scale ? k_scale->seq_stride : 0, scores);
    } else {
      const float* k_tile = tile_f32(p, p.k, k_scale, b, rows.kv_head, k0 + j0, n_keys, s.k_tile.data(), &ldk);
      if (key_major) {
        std::fill(scores, scores + n_keys * n, 0.0f);
        kernels.gemm_accumulate(n_keys, n, dim, k_tile, ldk, 1, s.q_t.data(), n, scores, n);
      } else {
        kernels.dot_rows(n, n_keys, dim, q_rows, dim, k_tile, ldk, scores, n_keys, 1);
      }
    }
    if (tile_needs_modifiers(p, rows, j0, n_keys))
      apply_score_modifiers(p, rows, j0, n_keys, scores, row_stride, key_stride, nullptr);
    if (key_major) {
      kernels.softmax_update(scores, n_keys, n, s.row_max.data(), s.row_sum.data(), s.rescale.data());
    } else {
      kernels.softmax_update_rows(scores, n, n_keys, s.row_max.data(), s.row_sum.data(), s.rescale.data());
    }
    kernels.scale_rows(s.acc.data(), n, dim, s.rescale.data());
    if (bf16_pairs) {
      // p_pairs[j / 2][r] and v_pairs[j / 2][d]: pairs of keys, an odd last key paired with zeros.
      kernels.pair_rows_f32_to_bf16(scores, n, n_keys, n, s.p_pairs.data());
      kernels.pair_rows_bf16(reinterpret_cast<const uint16_t*>(p.v.row(b, rows.kv_head, k0 + j0)), p.v.seq_stride,
                             n_keys, dim, s.v_pairs.data());
      kernels.gemm_bf16_pairs(n, dim, (n_keys + 1) / 2, s.p_pairs.data(), 2, 2 * n, s.v_pairs.data(), 2 * dim,
                              s.acc.data(), dim);
    } else if (f16_products) {
      convert_tables().active().f32_to_f16(scores, s.p_f16.data(), n_keys * n);
      kernels.gemm_f16(n, dim, n_keys, s.p_f16.data(), row_stride, key_stride,
                       reinterpret_cast<const uint16_t*>(p.v.row(b, rows.kv_head, k0 + j0)), p.v.seq_stride,
                       s.acc.data(), dim);
    } else if (direct_rows) {
      kernels.decode_accumulate(p.v.dtype, n, n_keys, dim, scores, p.v.row(b, rows.kv_head, k0 + j0), p.v.seq_stride,
                                v_scale ? reinterpret_cast<const float*>(v_scale->row(b, rows.kv_head, k0 + j0))
                                        : nullptr,
                                v_scale ? v_scale->seq_stride : 0, s.acc.data());
    } else {
      const float* v_tile = tile_f32(p, p.v, v_scale, b, rows.kv_head, k0 + j0, n_keys, s.v_tile.data(), &ldv);
      kernels.gemm_accumulate(n, dim, n_keys, scores, row_stride, key_stride, v_tile, ldv, s.acc.data(), dim);
    }
  }
}

// --- argument checks and problem builders ---------------------------------

namespace {

std::string dims_string(const TensorView& t) { return t.shape_string(); }

void require_float_operand(const TensorView& t, const char* arg, int ndim) {
  require_dtype(t, arg, {DType::f32, DType::f16, DType::bf16});
  if (t.ndim != ndim)
    fail_argument(ErrorKind::InvalidArgument, arg, std::to_string(ndim) + " dimensions",
                  std::to_string(t.ndim) + " with shape " + dims_string(t));
  if (t.shape[ndim - 1] == 0)
    fail_argument(ErrorKind::InvalidArgument, arg, "a head dimension D > 0", "shape " + dims_string(t));
  require_contiguous_last_dim(t, arg);
}

void require_same_dtype(const TensorView& t, const char* arg, const TensorView& q) {
  if (t.dtype != q.dtype)
    fail_argument(ErrorKind::Type, arg, std::string("the dtype of q (") + dtype_name(q.dtype) + ")",
                  dtype_name(t.dtype));
}

void require_dim(const TensorView& t, const char* arg, int dim, int64_t expected, const char* what) {
  if (t.shape[dim] != expected)
    fail_argument(ErrorKind::InvalidArgument, arg,
                  std::string(what) + " = " + std::to_string(expected) + " (dimension " + std::to_string(dim) + ")",
                  "shape " + dims_string(t));
}

// No heads at all is an empty problem, as in torch.
void check_heads(int64_t q_heads, int64_t kv_heads) {
  if (q_heads == 0 && kv_heads == 0) return;
  if (kv_heads == 0 || q_heads % kv_heads != 0)
    fail_argument(ErrorKind::InvalidArgument, "k", "a number of heads dividing q's " + std::to_string(q_heads),
                  std::to_string(kv_heads));
}

Operand packed_operand(const TensorView& t) {
  return Operand{static_cast<char*>(t.data), t.dtype, 0, t.strides[1], t.strides[0]};
}

std::vector<int64_t> read_cu_seqlens(const TensorView& cu, const char* arg, int64_t total) {
  require_dtype(cu, arg, {DType::i32, DType::i64});
  if (cu.ndim != 1 || cu.shape[0] < 1)
    fail_argument(ErrorKind::InvalidArgument, arg, "a 1-D tensor of batch + 1 offsets", "shape " + dims_string(cu));
  std::vector<int64_t> offsets(cu.shape[0]);
  for (int64_t i = 0; i < cu.shape[0]; ++i) {
    const char* e = static_cast<const char*>(cu.data) + i * cu.strides[0] * static_cast<int64_t>(dtype_size(cu.dtype));
    offsets[i] = cu.dtype == DType::i32 ? *reinterpret_cast<const int32_t*>(e) : *reinterpret_cast<const int64_t*>(e);
    if ((i == 0 && offsets[0] != 0) || (i > 0 && offsets[i] < offsets[i - 1]))
      fail_argument(ErrorKind::InvalidArgument, arg, "non-decreasing offsets starting at 0",
                    "offset " + std::to_string(offsets[i]) + " at index " + std::to_string(i));
  }
  if (offsets.back() > total)
    fail_argument(ErrorKind::InvalidArgument, arg, "offsets within the " + std::to_string(total) + " packed tokens",
                  "a last offset of " + std::to_string(offsets.back()));
  return offsets;
}

}  // namespace

void check_options(const AttentionOptions& o) {
  if (!std::isfinite(o.scale))
    fail_argument(ErrorKind::InvalidArgument, "scale", "a finite number", std::to_string(o.scale));
  if (!(o.softcap >= 0.0f) || !std::isfinite(o.softcap))
    fail_argument(ErrorKind::InvalidArgument, "softcap", "a finite number >= 0", std::to_string(o.softcap));
  if (o.window_left < -1 || o.window_right < -1)
    fail_argument(ErrorKind::InvalidArgument, "window", "bounds >= 0 or -1 (unbounded)",
                  "(" + std::to_string(o.window_left) + ", " + std::to_string(o.window_right) + ")");
}

Problem dense_problem(const TensorView& q, const TensorView& k, const TensorView& v, const AttentionBias& bias,
                      const AttentionOptions& options) {
  require_float_operand(q, "q", 4);
  require_float_operand(k, "k", 4);
  require_float_operand(v, "v", 4);
  require_same_dtype(k, "k", q);
  require_same_dtype(v, "v", q);
  require_dim(k, "k", 0, q.shape[0], "the batch of q");
  require_dim(k, "k", 3, q.shape[3], "the head dimension of q");
  require_dim(v, "v", 0, k.shape[0], "the batch of k");
  require_dim(v, "v", 1, k.shape[1], "the heads of k");
  require_dim(v, "v", 2, k.shape[2], "the length of k");
  require_dim(v, "v", 3, q.shape[3], "the head dimension of q");
  check_heads(q.shape[1], k.shape[1]);
  check_options(options);
  Problem p;
  p.batch = q.shape[0];
  p.q_heads = q.shape[1];
  p.kv_heads = k.shape[1];
  p.head_dim = q.shape[3];
  p.len_q = q.shape[2];
  p.len_k = k.shape[2];
  p.q = dense_operand(q);
  p.k = dense_operand(k);
  p.v = dense_operand(v);
  p.options = options;
  if (bias.mask) {
    const TensorView& m = *bias.mask;
    require_dtype(m, "attn_mask", {DType::u8, DType::f32, DType::f16, DType::bf16});
    const int64_t expected[4] = {p.batch, p.q_heads, p.len_q, p.len_k};
    bool ok = m.ndim == 4;
    for (int d = 0; ok && d < 4; ++d) ok = m.shape[d] == expected[d];
    if (!ok)
      fail_argument(ErrorKind::InvalidArgument, "attn_mask",
                    "a mask broadcast to (" + std::to_string(p.batch) + ", " + std::to_string(p.q_heads) + ", " +
                        std::to_string(p.len_q) + ", " + std::to_string(p.len_k) + ")",
                    "shape " + dims_string(m));
    p.mask = static_cast<const char*>(m.data);
    p.mask_dtype = m.dtype;
    for (int d = 0; d < 4; ++d) p.mask_strides[d] = m.strides[d];
  }
  if (bias.alibi_slopes) {
    const TensorView& a = *bias.alibi_slopes;
    require_dtype(a, "alibi_slopes", {DType::f32});
    require_contiguous(a, "alibi_slopes");
    if (a.ndim != 1 || a.shape[0] != p.q_heads)
      fail_argument(ErrorKind::InvalidArgument, "alibi_slopes", "shape (" + std::to_string(p.q_heads) + ",)",
                    dims_string(a));
    p.alibi_slopes = static_cast<const float*>(a.data);
  }
  return p;
}

Problem varlen_problem(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& cu_q,
                       const TensorView& cu_k, const AttentionOptions& options) {
  require_float_operand(q, "q", 3);
  require_float_operand(k, "k", 3);
  require_float_operand(v, "v", 3);
  require_same_dtype(k, "k", q);
  require_same_dtype(v, "v", q);
  require_dim(k, "k", 2, q.shape[2], "the head dimension of q");
  require_dim(v, "v", 0, k.shape[0], "the tokens of k");
  require_dim(v, "v", 1, k.shape[1], "the heads of k");
  require_dim(v, "v", 2, q.shape[2], "the head dimension of q");
  check_heads(q.shape[1], k.shape[1]);
  check_options(options);
  Problem p;
  p.cu_q = read_cu_seqlens(cu_q, "cu_seqlens_q", q.shape[0]);
  p.cu_k = read_cu_seqlens(cu_k, "cu_seqlens_k", k.shape[0]);
  if (p.cu_q.size() != p.cu_k.size())
    fail_argument(ErrorKind::InvalidArgument, "cu_seqlens_k",
                  std::to_string(p.cu_q.size()) + " offsets like cu_seqlens_q", std::to_string(p.cu_k.size()));
  p.batch = static_cast<int64_t>(p.cu_q.size()) - 1;
  p.q_heads = q.shape[1];
  p.kv_heads = k.shape[1];
  p.head_dim = q.shape[2];
  p.q = packed_operand(q);
  p.k = packed_operand(k);
  p.v = packed_operand(v);
  p.options = options;
  return p;
}

Operand bind_like(const TensorView& t, const TensorView& like, const char* arg, bool packed) {
  require_writable(t, arg);
  if (t.dtype != like.dtype)
    fail_argument(ErrorKind::Type, arg, std::string("dtype ") + dtype_name(like.dtype), dtype_name(t.dtype));
  require_same_shape(t, arg, like, "its input");
  require_contiguous_last_dim(t, arg);
  return packed ? packed_operand(t) : dense_operand(t);
}

Operand bind_lse(const Problem& p, const TensorView& lse, bool packed) {
  require_dtype(lse, "lse", {DType::f32});
  require_contiguous(lse, "lse");
  const int64_t total_q = packed && lse.ndim >= 2 ? lse.shape[1] : p.len_q;
  const bool ok = packed ? (lse.ndim == 3 && lse.shape[0] == p.q_heads && lse.shape[1] >= p.cu_q.back() &&
                            lse.shape[2] == 2)
                         : (lse.ndim == 4 && lse.shape[0] == p.batch && lse.shape[1] == p.q_heads &&
                            lse.shape[2] == p.len_q && lse.shape[3] == 2);
  if (!ok)
    fail_argument(ErrorKind::InvalidArgument, "lse",
                  packed ? "shape (q_heads, total_q, 2)" : "shape (batch, q_heads, len_q, 2)",
                  "shape " + dims_string(lse));
  Operand o{static_cast<char*>(lse.data), DType::f32, packed ? 0 : 2 * p.q_heads * p.len_q, 2 * total_q, 2};
  return o;
}

}  // namespace pocketml::attention_detail
