// C ABI: dense attention and KV-cache decode over contiguous caller buffers.
#include <string>
#include <vector>

#include "attention/attention.h"
#include "capi/guard.h"

using namespace pocketml;

namespace {

void require_positive(int64_t value, const char* arg) {
  if (value <= 0) fail_argument(ErrorKind::InvalidArgument, arg, "a positive size", std::to_string(value));
}

const pocketml_attention_shape& checked_shape(const pocketml_attention_shape* shape) {
  capi::require_pointer(shape, "shape");
  require_positive(shape->batch, "shape.batch");
  require_positive(shape->query_heads, "shape.query_heads");
  require_positive(shape->kv_heads, "shape.kv_heads");
  require_positive(shape->query_len, "shape.query_len");
  require_positive(shape->kv_len, "shape.kv_len");
  require_positive(shape->head_dim, "shape.head_dim");
  return *shape;
}

TensorView view(const void* data, DType dtype, int64_t b, int64_t h, int64_t l, int64_t d, bool writable,
                const char* arg) {
  capi::require_pointer(data, arg);
  return contiguous_view(const_cast<void*>(data), dtype, {b, h, l, d}, writable, arg);
}

}  // namespace

extern "C" pocketml_status pocketml_attention_forward(const void* q, const void* k, const void* v,
                                                      pocketml_dtype dtype, const pocketml_attention_shape* shape,
                                                      float scale, pocketml_attention_mask mask, void* out) {
  return capi::guarded([&] {
    const pocketml_attention_shape& s = checked_shape(shape);
    const DType t = capi::to_dtype(dtype, "dtype");
    AttentionOptions options;
    options.scale = scale;
    switch (mask) {
      case POCKETML_MASK_NONE: break;
      case POCKETML_MASK_CAUSAL: options.window_right = 0; break;
      case POCKETML_MASK_CAUSAL_BOTTOM_RIGHT: options.window_right = 0; options.bottom_right = true; break;
      default:
        fail_argument(ErrorKind::InvalidArgument, "mask", "a pocketml_attention_mask value (0..2)",
                      std::to_string(static_cast<int>(mask)));
    }
    // Views in argument order, so the first bad pointer is the one reported.
    const TensorView qv = view(q, t, s.batch, s.query_heads, s.query_len, s.head_dim, false, "q");
    const TensorView kv = view(k, t, s.batch, s.kv_heads, s.kv_len, s.head_dim, false, "k");
    const TensorView vv = view(v, t, s.batch, s.kv_heads, s.kv_len, s.head_dim, false, "v");
    const TensorView out_view = view(out, t, s.batch, s.query_heads, s.query_len, s.head_dim, true, "out");
    std::vector<float> lse(static_cast<size_t>(2 * s.batch * s.query_heads * s.query_len));
    attention_forward(qv, kv, vv, AttentionBias{}, options, out_view,
                      contiguous_view(lse.data(), DType::f32, {s.batch, s.query_heads, s.query_len, 2}));
  });
}

extern "C" pocketml_status pocketml_attention_decode(const void* q, const void* k_cache, const void* v_cache,
                                                     pocketml_dtype dtype, const pocketml_attention_shape* shape,
                                                     int64_t length, float scale, void* out) {
  return capi::guarded([&] {
    const pocketml_attention_shape& s = checked_shape(shape);
    const DType t = capi::to_dtype(dtype, "dtype");
    AttentionOptions options;
    options.scale = scale;
    options.window_right = 0;  // causal: each query sees the cache up to its own position
    const TensorView qv = view(q, t, s.batch, s.query_heads, s.query_len, s.head_dim, false, "q");
    const TensorView kv = view(k_cache, t, s.batch, s.kv_heads, s.kv_len, s.head_dim, false, "k_cache");
    const TensorView vv = view(v_cache, t, s.batch, s.kv_heads, s.kv_len, s.head_dim, false, "v_cache");
    const TensorView out_view = view(out, t, s.batch, s.query_heads, s.query_len, s.head_dim, true, "out");
    attention_decode(qv, kv, vv, nullptr, nullptr, length, options, out_view);
  });
}
