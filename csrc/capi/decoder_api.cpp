// C ABI: the transformer decoder as an opaque handle.
#include <string>
#include <vector>

#include "capi/guard.h"
#include "capi/quantized_weight.h"
#include "models/transformer_decoder.h"

using namespace pocketml;

struct pocketml_decoder_s {
  TransformerDecoder decoder;
};

namespace {

TensorView norm_view(const float* data, int64_t size, const std::string& arg) {
  capi::require_pointer(data, arg.c_str());
  return contiguous_view(const_cast<float*>(data), DType::f32, {size}, false, arg);
}

TransformerDecoder& decoder_of(pocketml_decoder handle) {
  capi::require_pointer(handle, "decoder");
  return handle->decoder;
}

}  // namespace

extern "C" pocketml_status pocketml_decoder_new(const pocketml_decoder_config* config,
                                                const pocketml_quantized_weight* embedding,
                                                const pocketml_decoder_layer* layers, const float* final_norm,
                                                pocketml_decoder* out_decoder) {
  return capi::guarded([&] {
    capi::require_pointer(out_decoder, "out_decoder");
    *out_decoder = nullptr;
    capi::require_pointer(config, "config");
    DecoderConfig c;
    c.vocab_size = config->vocab_size;
    c.hidden_size = config->hidden_size;
    c.intermediate_size = config->intermediate_size;
    c.num_layers = config->num_layers;
    c.num_heads = config->num_heads;
    c.num_kv_heads = config->num_kv_heads;
    c.head_dim = config->head_dim;
    c.max_seq_len = config->max_seq_len;
    c.rms_norm_eps = config->rms_norm_eps;
    c.rope_theta = config->rope_theta;
    if (c.num_layers <= 0 || c.hidden_size <= 0)
      fail_argument(ErrorKind::InvalidArgument, "config", "positive num_layers and hidden_size",
                    std::to_string(c.num_layers) + ", " + std::to_string(c.hidden_size));
    const QuantizedViews embedding_views = capi::quantized_views(embedding, "embedding");
    capi::require_pointer(layers, "layers");
    std::vector<DecoderLayerViews> views(static_cast<size_t>(c.num_layers));
    for (size_t i = 0; i < views.size(); ++i) {
      const std::string name = "layers[" + std::to_string(i) + "].";
      const pocketml_decoder_layer& l = layers[i];
      DecoderLayerViews& v = views[i];
      v.attn_norm = norm_view(l.attn_norm, c.hidden_size, name + "attn_norm");
      v.mlp_norm = norm_view(l.mlp_norm, c.hidden_size, name + "mlp_norm");
      v.q_proj = capi::quantized_views(&l.q_proj, name + "q_proj");
      v.k_proj = capi::quantized_views(&l.k_proj, name + "k_proj");
      v.v_proj = capi::quantized_views(&l.v_proj, name + "v_proj");
      v.o_proj = capi::quantized_views(&l.o_proj, name + "o_proj");
      v.gate_proj = capi::quantized_views(&l.gate_proj, name + "gate_proj");
      v.up_proj = capi::quantized_views(&l.up_proj, name + "up_proj");
      v.down_proj = capi::quantized_views(&l.down_proj, name + "down_proj");
    }
    const TensorView final_norm_view = norm_view(final_norm, c.hidden_size, "final_norm");
    *out_decoder = new pocketml_decoder_s{TransformerDecoder(c, embedding_views, views, final_norm_view)};
  });
}

extern "C" pocketml_status pocketml_decoder_free(pocketml_decoder decoder) {
  return capi::guarded([&] { delete decoder; });
}

extern "C" pocketml_status pocketml_decoder_forward(pocketml_decoder decoder, const int32_t* tokens, int64_t count,
                                                    float* out_logits) {
  return capi::guarded([&] { decoder_of(decoder).forward(tokens, count, out_logits); });
}

extern "C" pocketml_status pocketml_decoder_length(pocketml_decoder decoder, int64_t* out_length) {
  return capi::guarded([&] {
    capi::require_pointer(out_length, "out_length");
    *out_length = decoder_of(decoder).length();
  });
}

extern "C" pocketml_status pocketml_decoder_reset(pocketml_decoder decoder) {
  return capi::guarded([&] { decoder_of(decoder).reset(); });
}
