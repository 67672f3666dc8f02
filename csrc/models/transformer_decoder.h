#pragma once
// A small Llama-style transformer decoder on pocketml's own kernels: token
// embedding, per layer RMSNorm -> GQA attention with RoPE and a KV cache ->
// residual -> RMSNorm -> SwiGLU MLP -> residual, then a final RMSNorm and the
// logits of a tied (embedding) LM head. Every projection is a quantized weight
// (quantized_matmul); attention runs attention_forward over the prompt and
// attention_decode for single-token steps against the cache.
//
// Conventions follow Hugging Face's LlamaForCausalLM: weights are [out, in];
// RoPE rotates the two halves of each head (rotate_half), frequency
// theta^(-2i / head_dim) for i < head_dim / 2; RMSNorm is
// x / sqrt(mean(x^2) + eps) * weight; the MLP is down(silu(gate(x)) * up(x)).
#include <cstdint>
#include <mutex>
#include <vector>

#include "models/owned_quantized_weight.h"
#include "runtime/tensor.h"

namespace pocketml {

struct DecoderConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // divides num_heads (grouped-query attention)
  int64_t head_dim = 0;      // even
  int64_t max_seq_len = 0;   // KV cache capacity in tokens
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
};

// One layer's weights as the caller holds them; norms are fp32 [hidden_size].
struct DecoderLayerViews {
  TensorView attn_norm, mlp_norm;
  QuantizedViews q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
};

class TransformerDecoder {
 public:
  // Validates the config and every weight's shape, then copies the weights.
  // embedding: [vocab_size, hidden_size], also the LM head (tied).
  TransformerDecoder(const DecoderConfig& config, const QuantizedViews& embedding,
                     const std::vector<DecoderLayerViews>& layers, const TensorView& final_norm);

  // Appends `count` tokens at positions length() .. length() + count - 1 and
  // writes their logits [count, vocab_size] (fp32). A prompt is one call; each
  // decode step is a call with count 1.
  void forward(const int32_t* tokens, int64_t count, float* logits);

  // forward and reset may be called from several threads: calls run one at a time.
  void reset();  // forget the cached tokens
  int64_t length() const;
  const DecoderConfig& config() const { return config_; }

 private:
  struct Layer {
    std::vector<float> attn_norm, mlp_norm;
    OwnedQuantizedWeight q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
    std::vector<float> k_cache, v_cache;  // [num_kv_heads, max_seq_len, head_dim]
  };

  void attention(Layer& layer, int64_t count);
  void mlp(const Layer& layer, int64_t count);

  DecoderConfig config_;
  OwnedQuantizedWeight embedding_;
  std::vector<float> embedding_table_;  // the dequantized embedding, for token lookup
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  std::vector<float> rope_inv_freq_;  // [head_dim / 2]
  mutable std::mutex mutex_;
  int64_t length_ = 0;
  // Activations of the current call, sized for `count` rows.
  std::vector<float> hidden_, normed_, q_, k_, v_, attn_out_, proj_, gate_, up_;
};

}  // namespace pocketml
