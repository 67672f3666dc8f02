#include "models/transformer_decoder.h"

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <new>
#include <string>

#include "attention/attention.h"
#include "quant/quant.h"
#include "runtime/error.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

void require_positive(int64_t value, const char* arg) {
  if (value <= 0) fail_argument(ErrorKind::InvalidArgument, arg, "a positive value", std::to_string(value));
}

// The product of config sizes, refused when it overflows int64 (a wrapped size
// would let small weights pass the shape checks and buffers be too short).
int64_t checked_product(std::initializer_list<int64_t> factors, const char* what) {
  int64_t product = 1;
  for (int64_t f : factors)
    if (__builtin_mul_overflow(product, f, &product))
      fail_argument(ErrorKind::InvalidArgument, "config", std::string(what) + " that fits in 64 bits", "an overflow");
  return product;
}

std::vector<float> copy_norm(const TensorView& weight, const std::string& arg, int64_t size) {
  require_dtype(weight, arg, {DType::f32});
  require_contiguous(weight, arg);
  if (weight.ndim != 1 || weight.shape[0] != size)
    fail_argument(ErrorKind::InvalidArgument, arg, "shape (" + std::to_string(size) + ")", weight.shape_string());
  const float* data = weight.ptr<const float>();
  return std::vector<float>(data, data + size);
}

// A 4-D fp32 view [1, heads, len, head_dim] with explicit strides (in floats).
TensorView heads_view(float* data, int64_t heads, int64_t len, int64_t head_dim, int64_t head_stride,
                      int64_t position_stride, bool writable) {
  TensorView v;
  v.data = data;
  v.dtype = DType::f32;
  v.ndim = 4;
  const int64_t shape[4] = {1, heads, len, head_dim};
  const int64_t strides[4] = {heads * head_stride, head_stride, position_stride, 1};
  for (int d = 0; d < 4; ++d) {
    v.shape[d] = shape[d];
    v.strides[d] = strides[d];
  }
  v.writable = writable;
  return v;
}

// x [rows, size] <- x / sqrt(mean(x^2) + eps) * weight, into out.
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t size, float eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * size;
    double sum_squares = 0.0;
    for (int64_t i = 0; i < size; ++i) sum_squares += double(row[i]) * row[i];
    const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / size + eps));
    for (int64_t i = 0; i < size; ++i) out[r * size + i] = row[i] * inv_rms * weight[i];
  }
}

// Rotates each head of x [rows, heads, head_dim] by its position (rotate_half layout):
// (a, b) -> (a cos - b sin, b cos + a sin) for a = x[i], b = x[i + head_dim / 2].
void apply_rope(float* x, int64_t rows, int64_t heads, int64_t head_dim, int64_t first_position,
                const std::vector<float>& inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const double position = static_cast<double>(first_position + r);
    for (int64_t i = 0; i < half; ++i) {
      const double angle = position * inv_freq[i];
      const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < heads; ++h) {
        float* head = x + (r * heads + h) * head_dim;
        const float a = head[i], b = head[i + half];
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
      }
    }
  }
}

void project(const float* x, int64_t rows, const OwnedQuantizedWeight& w, float* out) {
  quantized_matmul(contiguous_view(const_cast<float*>(x), DType::f32, {rows, w.cols()}, false), w.views(),
                   contiguous_view(out, DType::f32, {rows, w.rows()}));
}

}  // namespace

TransformerDecoder::TransformerDecoder(const DecoderConfig& config, const QuantizedViews& embedding,
                                       const std::vector<DecoderLayerViews>& layers, const TensorView& final_norm)
    : config_(config) {
  const DecoderConfig& c = config;
  require_positive(c.vocab_size, "config.vocab_size");
  require_positive(c.hidden_size, "config.hidden_size");
  require_positive(c.intermediate_size, "config.intermediate_size");
  require_positive(c.num_layers, "config.num_layers");
  require_positive(c.num_heads, "config.num_heads");
  require_positive(c.num_kv_heads, "config.num_kv_heads");
  require_positive(c.max_seq_len, "config.max_seq_len");
  if (c.head_dim <= 0 || c.head_dim % 2)
    fail_argument(ErrorKind::InvalidArgument, "config.head_dim", "a positive even value", std::to_string(c.head_dim));
  if (c.num_heads % c.num_kv_heads)
    fail_argument(ErrorKind::InvalidArgument, "config.num_kv_heads", "a divisor of num_heads = " +
                  std::to_string(c.num_heads), std::to_string(c.num_kv_heads));
  if (!(c.rms_norm_eps > 0.0f) || !std::isfinite(c.rms_norm_eps) || !(c.rope_theta > 0.0f) ||
      !std::isfinite(c.rope_theta))
    fail_argument(ErrorKind::InvalidArgument, "config", "a finite rms_norm_eps > 0 and a finite rope_theta > 0",
                  shortest_text(c.rms_norm_eps) + ", " + shortest_text(c.rope_theta));
  if (static_cast<int64_t>(layers.size()) != c.num_layers)
    fail_argument(ErrorKind::InvalidArgument, "layers", std::to_string(c.num_layers) + " layers (config.num_layers)",
                  std::to_string(layers.size()));

  const int64_t hidden = c.hidden_size;
  const int64_t q_size = checked_product({c.num_heads, c.head_dim}, "num_heads * head_dim");
  const int64_t kv_size = checked_product({c.num_kv_heads, c.head_dim}, "num_kv_heads * head_dim");
  checked_product({c.vocab_size, hidden}, "vocab_size * hidden_size");
  // Every per-call buffer holds at most max_seq_len rows of one of these widths.
  for (int64_t width : {hidden, q_size, c.intermediate_size})
    checked_product({c.max_seq_len, width}, "max_seq_len * (hidden_size, num_heads * head_dim, intermediate_size)");
  checked_product({c.num_layers, kv_size, c.max_seq_len, 2}, "the KV cache size");
  embedding_ = OwnedQuantizedWeight(embedding, "embedding", c.vocab_size, hidden);
  embedding_table_.resize(static_cast<size_t>(c.vocab_size * hidden));
  dequantize(embedding_.views(), contiguous_view(embedding_table_.data(), DType::f32, {c.vocab_size, hidden}));
  final_norm_ = copy_norm(final_norm, "final_norm", hidden);

  layers_.resize(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string name = "layers[" + std::to_string(i) + "].";
    const DecoderLayerViews& in = layers[i];
    Layer& l = layers_[i];
    l.attn_norm = copy_norm(in.attn_norm, name + "attn_norm", hidden);
    l.mlp_norm = copy_norm(in.mlp_norm, name + "mlp_norm", hidden);
    l.q_proj = OwnedQuantizedWeight(in.q_proj, name + "q_proj", q_size, hidden);
    l.k_proj = OwnedQuantizedWeight(in.k_proj, name + "k_proj", kv_size, hidden);
    l.v_proj = OwnedQuantizedWeight(in.v_proj, name + "v_proj", kv_size, hidden);
    l.o_proj = OwnedQuantizedWeight(in.o_proj, name + "o_proj", hidden, q_size);
    l.gate_proj = OwnedQuantizedWeight(in.gate_proj, name + "gate_proj", c.intermediate_size, hidden);
    l.up_proj = OwnedQuantizedWeight(in.up_proj, name + "up_proj", c.intermediate_size, hidden);
    l.down_proj = OwnedQuantizedWeight(in.down_proj, name + "down_proj", hidden, c.intermediate_size);
    try {
      l.k_cache.assign(static_cast<size_t>(kv_size * c.max_seq_len), 0.0f);
      l.v_cache.assign(static_cast<size_t>(kv_size * c.max_seq_len), 0.0f);
    } catch (const std::bad_alloc&) {
      // Name the setting that sized it: a bare "out of memory" gave no hint.
      fail(ErrorKind::OutOfMemory,
           "config.max_seq_len = " + std::to_string(c.max_seq_len) + ": the KV cache needs " +
               std::to_string(2 * c.num_layers * kv_size * c.max_seq_len) +
               " fp32 values (2 x num_layers x num_kv_heads x head_dim x max_seq_len), more than could be allocated");
    }
  }
  rope_inv_freq_.resize(static_cast<size_t>(c.head_dim / 2));
  for (int64_t i = 0; i < c.head_dim / 2; ++i)
    rope_inv_freq_[i] = static_cast<float>(std::pow(double(c.rope_theta), -2.0 * double(i) / double(c.head_dim)));
}

void TransformerDecoder::forward(const int32_t* tokens, int64_t count, float* logits) {
  std::lock_guard<std::mutex> lock(mutex_);  // the cache and the activation buffers are the object's
  ThreadPool::KeepWarm warm;  // dozens of kernels per token, back to back
  const DecoderConfig& c = config_;
  // Named 'tokens': the Python and Swift callers' parameter, and the C caller's array that count measures.
  if (count <= 0) fail_argument(ErrorKind::InvalidArgument, "tokens", "at least one token", std::to_string(count));
  if (tokens == nullptr || logits == nullptr)
    fail_argument(ErrorKind::InvalidArgument, tokens == nullptr ? "tokens" : "logits", "a non-NULL pointer", "NULL");
  if (count > c.max_seq_len - length_)
    fail_argument(ErrorKind::InvalidArgument, "tokens", "at most " + std::to_string(c.max_seq_len - length_) +
                  " tokens (the KV cache holds max_seq_len = " + std::to_string(c.max_seq_len) + ", " +
                  std::to_string(length_) + " used)", std::to_string(count));
  for (int64_t t = 0; t < count; ++t)
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      fail_argument(ErrorKind::InvalidArgument, "tokens[" + std::to_string(t) + "]",
                    "a token id in [0, " + std::to_string(c.vocab_size) + ")", std::to_string(tokens[t]));

  const int64_t hidden = c.hidden_size;
  hidden_.resize(static_cast<size_t>(count * hidden));
  normed_.resize(hidden_.size());
  proj_.resize(hidden_.size());
  q_.resize(static_cast<size_t>(count * c.num_heads * c.head_dim));
  attn_out_.resize(q_.size());
  k_.resize(static_cast<size_t>(count * c.num_kv_heads * c.head_dim));
  v_.resize(k_.size());
  gate_.resize(static_cast<size_t>(count * c.intermediate_size));
  up_.resize(gate_.size());

  for (int64_t t = 0; t < count; ++t)
    std::memcpy(&hidden_[t * hidden], &embedding_table_[tokens[t] * hidden], sizeof(float) * hidden);
  for (Layer& layer : layers_) {
    attention(layer, count);
    mlp(layer, count);
  }
  length_ += count;
  rms_norm(hidden_.data(), final_norm_.data(), count, hidden, c.rms_norm_eps, normed_.data());
  project(normed_.data(), count, embedding_, logits);
}

void TransformerDecoder::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  length_ = 0;
}

int64_t TransformerDecoder::length() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return length_;
}

void TransformerDecoder::attention(Layer& layer, int64_t count) {
  const DecoderConfig& c = config_;
  const int64_t hidden = c.hidden_size, d = c.head_dim, hq = c.num_heads, hkv = c.num_kv_heads;
  rms_norm(hidden_.data(), layer.attn_norm.data(), count, hidden, c.rms_norm_eps, normed_.data());
  project(normed_.data(), count, layer.q_proj, q_.data());
  project(normed_.data(), count, layer.k_proj, k_.data());
  project(normed_.data(), count, layer.v_proj, v_.data());
  apply_rope(q_.data(), count, hq, d, length_, rope_inv_freq_);
  apply_rope(k_.data(), count, hkv, d, length_, rope_inv_freq_);
  for (int64_t t = 0; t < count; ++t)
    for (int64_t h = 0; h < hkv; ++h) {
      const size_t cache_row = static_cast<size_t>((h * c.max_seq_len + length_ + t) * d);
      std::memcpy(&layer.k_cache[cache_row], &k_[(t * hkv + h) * d], sizeof(float) * d);
      std::memcpy(&layer.v_cache[cache_row], &v_[(t * hkv + h) * d], sizeof(float) * d);
    }

  // q and out stay [tokens, heads, head_dim]; the views transpose them without copies.
  const int64_t total = length_ + count;
  const TensorView q = heads_view(q_.data(), hq, count, d, d, hq * d, false);
  const TensorView out = heads_view(attn_out_.data(), hq, count, d, d, hq * d, true);
  const TensorView k = heads_view(layer.k_cache.data(), hkv, total, d, c.max_seq_len * d, d, false);
  const TensorView v = heads_view(layer.v_cache.data(), hkv, total, d, c.max_seq_len * d, d, false);
  AttentionOptions options;
  options.scale = static_cast<float>(1.0 / std::sqrt(double(d)));
  if (count == 1) {
    const TensorView k_cache = heads_view(layer.k_cache.data(), hkv, c.max_seq_len, d, c.max_seq_len * d, d, false);
    const TensorView v_cache = heads_view(layer.v_cache.data(), hkv, c.max_seq_len, d, c.max_seq_len * d, d, false);
    attention_decode(q, k_cache, v_cache, nullptr, nullptr, total, options, out);
  } else {
    options.window_right = 0;  // causal, aligned to the end of the cache
    options.bottom_right = true;
    std::vector<float> lse(static_cast<size_t>(2 * hq * count));
    attention_forward(q, k, v, AttentionBias{}, options, out,
                      contiguous_view(lse.data(), DType::f32, {1, hq, count, 2}));
  }
  project(attn_out_.data(), count, layer.o_proj, proj_.data());
  for (size_t i = 0; i < proj_.size(); ++i) hidden_[i] += proj_[i];
}

void TransformerDecoder::mlp(const Layer& layer, int64_t count) {
  const DecoderConfig& c = config_;
  rms_norm(hidden_.data(), layer.mlp_norm.data(), count, c.hidden_size, c.rms_norm_eps, normed_.data());
  project(normed_.data(), count, layer.gate_proj, gate_.data());
  project(normed_.data(), count, layer.up_proj, up_.data());
  for (size_t i = 0; i < gate_.size(); ++i) {
    const float g = gate_[i];
    gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];  // silu(gate) * up
  }
  project(gate_.data(), count, layer.down_proj, proj_.data());
  for (size_t i = 0; i < proj_.size(); ++i) hidden_[i] += proj_[i];
}

}  // namespace pocketml
