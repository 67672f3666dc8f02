#include <memory>
#include <string>
#include <vector>

#include "bindings/quantized_args.h"
#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "bindings/tensor_args.h"
#include "models/transformer_decoder.h"

namespace py = pybind11;

namespace pocketml::bindings {
namespace {

// A quantized weight given as the tuple QuantizedTensor._native_args() returns.
std::unique_ptr<QuantizedArgs> quantized_arg(py::handle obj) {
  const py::tuple t = py::reinterpret_borrow<py::object>(obj).cast<py::tuple>();
  if (t.size() != 8)
    fail_argument(ErrorKind::Type, "weight", "a tuple (kind, bits, cols, group_size, packed, scales, zero_points, lut)",
                  "a tuple of " + std::to_string(t.size()));
  return std::make_unique<QuantizedArgs>(t[0].cast<std::string>(), t[1].cast<int>(), t[2].cast<int64_t>(),
                                         t[3].cast<int64_t>(), t[4], t[5], t[6], t[7]);
}

DecoderConfig make_config(const py::dict& c) {
  DecoderConfig config;
  config.vocab_size = c["vocab_size"].cast<int64_t>();
  config.hidden_size = c["hidden_size"].cast<int64_t>();
  config.intermediate_size = c["intermediate_size"].cast<int64_t>();
  config.num_layers = c["num_layers"].cast<int64_t>();
  config.num_heads = c["num_heads"].cast<int64_t>();
  config.num_kv_heads = c["num_kv_heads"].cast<int64_t>();
  config.head_dim = c["head_dim"].cast<int64_t>();
  config.max_seq_len = c["max_seq_len"].cast<int64_t>();
  config.rms_norm_eps = c["rms_norm_eps"].cast<float>();
  config.rope_theta = c["rope_theta"].cast<float>();
  return config;
}

// config: dict of DecoderConfig fields; embedding and every projection: native-args
// tuples; layers: list of dicts {attn_norm, mlp_norm, q_proj, ..., down_proj}.
std::unique_ptr<TransformerDecoder> make_decoder(const py::dict& config, py::handle embedding, const py::list& layers,
                                                 py::handle final_norm) {
  static const char* const kProjections[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"};
  std::vector<std::unique_ptr<QuantizedArgs>> held;
  std::vector<std::unique_ptr<TensorArg>> norms;
  std::vector<DecoderLayerViews> views(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const py::dict layer = layers[i].cast<py::dict>();
    norms.push_back(std::make_unique<TensorArg>(layer["attn_norm"], "attn_norm"));
    views[i].attn_norm = norms.back()->view();
    norms.push_back(std::make_unique<TensorArg>(layer["mlp_norm"], "mlp_norm"));
    views[i].mlp_norm = norms.back()->view();
    QuantizedViews* targets[] = {&views[i].q_proj, &views[i].k_proj, &views[i].v_proj, &views[i].o_proj,
                                 &views[i].gate_proj, &views[i].up_proj, &views[i].down_proj};
    for (int p = 0; p < 7; ++p) {
      held.push_back(quantized_arg(layer[kProjections[p]]));
      *targets[p] = held.back()->views;
    }
  }
  const std::unique_ptr<QuantizedArgs> emb = quantized_arg(embedding);
  const TensorArg norm(final_norm, "final_norm");
  const DecoderConfig c = make_config(config);
  ReleasedGil release;
  return std::make_unique<TransformerDecoder>(c, emb->views, views, norm.view());
}

}  // namespace

void register_models(py::module_& m) {
  py::class_<TransformerDecoder>(m, "TransformerDecoder")
      .def(py::init(&make_decoder), py::arg("config"), py::arg("embedding"), py::arg("layers"), py::arg("final_norm"))
      .def("forward",
           [](TransformerDecoder& self, py::handle tokens, py::handle logits) {
             TensorArg t(tokens, "tokens"), l(logits, "logits");
             const TensorView& tv = t.view();
             const TensorView& lv = l.view();
             require_dtype(tv, "tokens", {DType::i32});
             require_contiguous(tv, "tokens");
             require_ndim(tv, "tokens", 1, 1);
             require_dtype(lv, "logits", {DType::f32});
             require_contiguous(lv, "logits");
             require_writable(lv, "logits");
             if (lv.ndim != 2 || lv.shape[0] != tv.shape[0] || lv.shape[1] != self.config().vocab_size)
               fail_argument(ErrorKind::InvalidArgument, "logits", "shape (" + std::to_string(tv.shape[0]) + ", " +
                             std::to_string(self.config().vocab_size) + ")", lv.shape_string());
             ReleasedGil release;
             self.forward(tv.ptr<const int32_t>(), tv.shape[0], lv.ptr<float>());
           },
           py::arg("tokens"), py::arg("logits"), "Appends tokens int32 [T]; writes logits fp32 [T, vocab].")
      // Both wait for a forward running on another thread: without the GIL, so Python keeps running.
      .def("reset", &TransformerDecoder::reset, py::call_guard<ReleasedGil>())
      .def_property_readonly("length", [](const TransformerDecoder& self) {
        ReleasedGil release;
        return self.length();
      });
}

}  // namespace pocketml::bindings
