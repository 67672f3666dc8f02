// Decode: a few new queries against a long KV cache. B * H is often smaller
// than the core count, so the cache length is split into chunks processed in
// parallel (split-K / "flash decoding"); each chunk leaves an unnormalised
// partial output with its softmax max and sum, and a second pass merges them.
// All query heads sharing a KV head form one row block, so each cache byte is
// read once per step whatever the GQA ratio.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_problem.h"
#include "runtime/error.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

using namespace attention_detail;

inline constexpr int64_t kMaxDecodeQueries = 8;
// A chunk of at least 512 positions streams 64 KiB+ of fp16 K and V per head
// at D = 64: long enough that merging partial results costs little.
inline constexpr int64_t kMinChunk = 512;

Operand cache_scale_operand(const TensorView& t, const char* arg, const TensorView& cache) {
  require_dtype(t, arg, {DType::f32});
  if (t.ndim != 3 || t.shape[0] != cache.shape[0] || t.shape[1] != cache.shape[1] || t.shape[2] != cache.shape[2])
    fail_argument(ErrorKind::InvalidArgument, arg, "shape " + cache.shape_string() + " without the last dimension",
                  "shape " + t.shape_string());
  return Operand{static_cast<char*>(t.data), DType::f32, t.strides[0], t.strides[1], t.strides[2]};
}

}  // namespace

void attention_decode(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView* k_scale,
                      const TensorView* v_scale, int64_t length, const AttentionOptions& options,
                      const TensorView& out) {
  require_dtype(q, "q", {DType::f32, DType::f16, DType::bf16});
  require_dtype(k, "cache.k", {DType::f32, DType::f16, DType::bf16, DType::i8});
  if (q.ndim != 4 || k.ndim != 4 || v.ndim != 4)
    fail_argument(ErrorKind::InvalidArgument, "q", "4-D q [B, Hq, Lq, D] and cache [B, Hkv, max_len, D]",
                  "shapes " + q.shape_string() + ", " + k.shape_string());
  if (q.shape[2] < 1 || q.shape[2] > kMaxDecodeQueries)
    fail_argument(ErrorKind::InvalidArgument, "q", "1 to 8 queries per head (dimension 2)",
                  "shape " + q.shape_string());
  if (v.dtype != k.dtype) fail_argument(ErrorKind::Type, "cache.v", dtype_name(k.dtype), dtype_name(v.dtype));
  require_same_shape(v, "cache.v", k, "cache.k");
  if (k.shape[0] != q.shape[0] || k.shape[3] != q.shape[3] || q.shape[3] == 0)
    fail_argument(ErrorKind::InvalidArgument, "q", "batch and head dimension of the cache " + k.shape_string(),
                  "shape " + q.shape_string());
  if (k.shape[1] == 0 || q.shape[1] % k.shape[1] != 0)
    fail_argument(ErrorKind::InvalidArgument, "cache", "KV heads dividing q's " + std::to_string(q.shape[1]),
                  std::to_string(k.shape[1]));
  if (length < q.shape[2] || length > k.shape[2])  // the queries' own positions are already in the cache
    fail_argument(ErrorKind::InvalidArgument, "cache.length",
                  std::to_string(q.shape[2]) + " (the queries, already appended) to " + std::to_string(k.shape[2]),
                  std::to_string(length));
  require_contiguous_last_dim(q, "q");
  require_contiguous_last_dim(k, "cache.k");
  require_contiguous_last_dim(v, "cache.v");
  require_contiguous_last_dim(out, "out");
  check_options(options);
  if (q.shape[0] == 0 || q.shape[1] == 0) return;  // an empty output, as torch gives

  Problem p;
  p.batch = q.shape[0];
  p.q_heads = q.shape[1];
  p.kv_heads = k.shape[1];
  p.head_dim = q.shape[3];
  p.len_q = q.shape[2];
  p.len_k = length;
  p.q = dense_operand(q);
  p.k = dense_operand(k);
  p.v = dense_operand(v);
  p.out = bind_like(out, q, "out", false);
  p.options = options;
  p.options.bottom_right = true;
  if (k.dtype == DType::i8) {
    if (!k_scale || !v_scale) fail_argument(ErrorKind::InvalidArgument, "cache", "scales for an int8 cache", "none");
    p.k_scale = cache_scale_operand(*k_scale, "cache.k_scale", k);
    p.v_scale = cache_scale_operand(*v_scale, "cache.v_scale", k);
  }

  const int64_t dim = p.head_dim, group = p.group(), len_q = p.len_q;
  const int64_t rows_per_head = group * len_q;
  const int64_t pairs = p.batch * p.kv_heads;
  // Enough chunks for ~4 per thread, so threads that got a slower core balance.
  const int64_t threads = ThreadPool::global().num_threads();
  const int64_t wanted = std::max<int64_t>(1, (4 * threads + pairs - 1) / pairs);
  int64_t chunk = std::max(kMinChunk, (length + wanted - 1) / wanted);
  chunk = (chunk + kBlockK - 1) / kBlockK * kBlockK;
  const int64_t n_chunks = std::max<int64_t>(1, (length + chunk - 1) / chunk);

  std::vector<float> partial_out(pairs * n_chunks * rows_per_head * dim);
  std::vector<float> partial_max(pairs * n_chunks * rows_per_head), partial_sum(pairs * n_chunks * rows_per_head);
  const AttentionKernels& kernels = attention_tables().active();
  parallel_for(pairs * n_chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch& s = thread_scratch(rows_per_head, dim);
    std::vector<int64_t> heads(rows_per_head), positions(rows_per_head);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / n_chunks, c = task % n_chunks;
      const int64_t b = pair / p.kv_heads, kv_head = pair % p.kv_heads;
      for (int64_t r = 0; r < rows_per_head; ++r) {
        heads[r] = kv_head * group + r / len_q;
        positions[r] = r % len_q;
      }
      std::fill(s.acc.begin(), s.acc.begin() + rows_per_head * dim, 0.0f);
      std::fill(s.row_max.begin(), s.row_max.begin() + rows_per_head, -kInfinity);
      std::fill(s.row_sum.begin(), s.row_sum.begin() + rows_per_head, 0.0f);
      attend_block(p, kernels, RowBlock{b, kv_head, rows_per_head, heads.data(), positions.data()}, c * chunk,
                   std::min(length, (c + 1) * chunk), s);
      std::copy_n(s.acc.begin(), rows_per_head * dim, partial_out.begin() + task * rows_per_head * dim);
      std::copy_n(s.row_max.begin(), rows_per_head, partial_max.begin() + task * rows_per_head);
      std::copy_n(s.row_sum.begin(), rows_per_head, partial_sum.begin() + task * rows_per_head);
    }
  });
  // Merge: out = sum_c exp(m_c - m) O_c / sum_c exp(m_c - m) l_c with m = max_c m_c.
  // A few microseconds for a batch of one: on the calling thread unless there is
  // enough of it to pay for waking the workers (tens of microseconds).
  const int64_t merge_grain = std::max<int64_t>(1, (int64_t{1} << 16) / (n_chunks * rows_per_head * dim));
  parallel_for(pairs, merge_grain, [&](int64_t begin, int64_t end) {
    std::vector<float> merged(dim);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / p.kv_heads, kv_head = pair % p.kv_heads;
      for (int64_t r = 0; r < rows_per_head; ++r) {
        float m = -kInfinity;
        for (int64_t c = 0; c < n_chunks; ++c) m = std::max(m, partial_max[(pair * n_chunks + c) * rows_per_head + r]);
        const float reference = m == -kInfinity ? 0.0f : m;
        float sum = 0.0f;
        std::fill(merged.begin(), merged.end(), 0.0f);
        for (int64_t c = 0; c < n_chunks; ++c) {
          const int64_t at = (pair * n_chunks + c) * rows_per_head + r;
          const float w = std::exp(partial_max[at] - reference);
          if (w == 0.0f) continue;
          sum += w * partial_sum[at];
          const float* o = partial_out.data() + at * dim;
          for (int64_t d = 0; d < dim; ++d) merged[d] += w * o[d];
        }
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t d = 0; d < dim; ++d) merged[d] *= inv;
        store_row(merged.data(), dim, p.out, p.out.row(b, kv_head * group + r / len_q, r % len_q));
      }
    }
  });
}

void kv_quantize_int8(const TensorView& src, const TensorView& dst, const TensorView& scale, int64_t start) {
  require_dtype(src, "k", {DType::f32, DType::f16, DType::bf16});
  require_dtype(dst, "cache", {DType::i8});
  require_dtype(scale, "cache scale", {DType::f32});
  require_writable(dst, "cache");
  require_writable(scale, "cache scale");
  if (src.ndim != 4 || dst.ndim != 4 || scale.ndim != 3 || src.shape[0] != dst.shape[0] ||
      src.shape[1] != dst.shape[1] || src.shape[3] != dst.shape[3] || scale.shape[0] != dst.shape[0] ||
      scale.shape[1] != dst.shape[1] || scale.shape[2] != dst.shape[2])
    fail_argument(ErrorKind::InvalidArgument, "k", "shape (batch, kv_heads, T, head_dim) of the cache " +
                  dst.shape_string(), "shape " + src.shape_string());
  if (start < 0 || start + src.shape[2] > dst.shape[2])
    fail_argument(ErrorKind::InvalidArgument, "k",
                  "at most " + std::to_string(dst.shape[2] - std::max<int64_t>(start, 0)) + " new positions",
                  std::to_string(src.shape[2]));
  require_contiguous_last_dim(src, "k");
  require_contiguous_last_dim(dst, "cache");
  const Operand in{static_cast<char*>(src.data), src.dtype, src.strides[0], src.strides[1], src.strides[2]};
  const int64_t dim = src.shape[3], tokens = src.shape[2], heads = src.shape[1];
  parallel_for(src.shape[0] * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(dim);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / heads, h = pair % heads;
      for (int64_t t = 0; t < tokens; ++t) {
        load_rows(in, nullptr, b, h, t, 1, dim, row.data(), dim);
        // No int8 scale holds a NaN or an infinity (std::max would also drop a
        // NaN): such a row gets a NaN scale and reads back as NaN throughout,
        // where an infinite scale read its finite elements as 0 * inf = NaN and
        // kept the infinity.
        float amax = 0.0f;
        bool finite = true;
        for (float x : row) {
          amax = std::max(amax, std::fabs(x));
          finite = finite && std::isfinite(x);
        }
        const float s = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
        const double inv = amax > 0.0f ? 127.0 / amax : 0.0;  // double: 127 / a subnormal amax overflows float
        const int64_t pos = start + t;
        int8_t* out = static_cast<int8_t*>(dst.data) + b * dst.strides[0] + h * dst.strides[1] + pos * dst.strides[2];
        for (int64_t d = 0; d < dim; ++d)
          out[d] = static_cast<int8_t>(std::max(-127.0, std::min(127.0, std::nearbyint(row[d] * inv))));
        static_cast<float*>(scale.data)[b * scale.strides[0] + h * scale.strides[1] + pos * scale.strides[2]] = s;
      }
    }
  });
}

}  // namespace pocketml
