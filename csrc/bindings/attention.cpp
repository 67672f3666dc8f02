#include "attention/attention.h"

#include <memory>

#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "bindings/tensor_args.h"

namespace py = pybind11;

namespace pocketml::bindings {
namespace {

AttentionOptions make_options(float scale, int64_t window_left, int64_t window_right, bool bottom_right,
                              float softcap) {
  AttentionOptions o;
  o.scale = scale;
  o.window_left = window_left;
  o.window_right = window_right;
  o.bottom_right = bottom_right;
  o.softcap = softcap;
  return o;
}

// A view of an optional tensor argument (None gives no view).
std::unique_ptr<TensorArg> optional_arg(py::handle obj, const char* name) {
  return obj.is_none() ? nullptr : std::make_unique<TensorArg>(obj, name);
}

// The tensors of a Python KVCache, exported once: a decode step then converts
// only q and out (each DLPack export costs microseconds, a sizeable share of a
// step whose cache streams from DRAM in a few hundred).
struct KVCacheViews {
  KVCacheViews(py::handle k, py::handle v, py::handle k_scale, py::handle v_scale)
      : k(k, "cache.k"), v(v, "cache.v"), k_scale(optional_arg(k_scale, "cache.k_scale")),
        v_scale(optional_arg(v_scale, "cache.v_scale")) {}
  TensorArg k, v;
  std::unique_ptr<TensorArg> k_scale, v_scale;
};

}  // namespace

void register_attention(py::module_& m) {
  py::class_<KVCacheViews>(m, "KVCacheViews")
      .def(py::init<py::handle, py::handle, py::handle, py::handle>(), py::arg("k"), py::arg("v"),
           py::arg("k_scale"), py::arg("v_scale"));
  m.def("attention_forward",
        [](py::handle q, py::handle k, py::handle v, py::handle mask, py::handle alibi, py::handle out, py::handle lse,
           float scale, int64_t window_left, int64_t window_right, bool bottom_right, float softcap) {
          TensorArg tq(q, "q"), tk(k, "k"), tv(v, "v"), tout(out, "out"), tlse(lse, "lse");
          auto tmask = optional_arg(mask, "attn_mask");
          auto talibi = optional_arg(alibi, "alibi_slopes");
          AttentionBias bias{tmask ? &tmask->view() : nullptr, talibi ? &talibi->view() : nullptr};
          ReleasedGil release;
          attention_forward(tq, tk, tv, bias, make_options(scale, window_left, window_right, bottom_right, softcap),
                            tout, tlse);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("alibi_slopes"), py::arg("out"),
        py::arg("lse"), py::arg("scale"), py::arg("window_left"), py::arg("window_right"), py::arg("bottom_right"),
        py::arg("softcap"), "Fused attention forward into out [B, Hq, Lq, D] and lse [B, Hq, Lq, 2] (row max, log sum).");
  m.def("attention_backward",
        [](py::handle q, py::handle k, py::handle v, py::handle mask, py::handle alibi, py::handle out, py::handle lse,
           py::handle dout, py::handle dq, py::handle dk, py::handle dv, float scale, int64_t window_left,
           int64_t window_right, bool bottom_right, float softcap) {
          TensorArg tq(q, "q"), tk(k, "k"), tv(v, "v"), tout(out, "out"), tlse(lse, "lse"), tdout(dout, "grad_out"),
              tdq(dq, "dq"), tdk(dk, "dk"), tdv(dv, "dv");
          auto tmask = optional_arg(mask, "attn_mask");
          auto talibi = optional_arg(alibi, "alibi_slopes");
          AttentionBias bias{tmask ? &tmask->view() : nullptr, talibi ? &talibi->view() : nullptr};
          ReleasedGil release;
          attention_backward(tq, tk, tv, bias, make_options(scale, window_left, window_right, bottom_right, softcap),
                             tout, tlse, tdout, tdq, tdk, tdv);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("alibi_slopes"), py::arg("out"),
        py::arg("lse"), py::arg("grad_out"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("scale"),
        py::arg("window_left"), py::arg("window_right"), py::arg("bottom_right"), py::arg("softcap"),
        "Fused attention backward: dq, dk, dv from the forward's out and lse.");
  m.def("varlen_attention_forward",
        [](py::handle q, py::handle k, py::handle v, py::handle cu_q, py::handle cu_k, py::handle out, py::handle lse,
           float scale, int64_t window_left, int64_t window_right, bool bottom_right, float softcap) {
          TensorArg tq(q, "q"), tk(k, "k"), tv(v, "v"), tcq(cu_q, "cu_seqlens_q"), tck(cu_k, "cu_seqlens_k"),
              tout(out, "out"), tlse(lse, "lse");
          ReleasedGil release;
          varlen_attention_forward(tq, tk, tv, tcq, tck,
                                   make_options(scale, window_left, window_right, bottom_right, softcap), tout, tlse);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("out"),
        py::arg("lse"), py::arg("scale"), py::arg("window_left"), py::arg("window_right"), py::arg("bottom_right"),
        py::arg("softcap"), "Attention over packed sequences [T, H, D] into out and lse [Hq, Tq, 2].");
  m.def("varlen_attention_backward",
        [](py::handle q, py::handle k, py::handle v, py::handle cu_q, py::handle cu_k, py::handle out, py::handle lse,
           py::handle dout, py::handle dq, py::handle dk, py::handle dv, float scale, int64_t window_left,
           int64_t window_right, bool bottom_right, float softcap) {
          TensorArg tq(q, "q"), tk(k, "k"), tv(v, "v"), tcq(cu_q, "cu_seqlens_q"), tck(cu_k, "cu_seqlens_k"),
              tout(out, "out"), tlse(lse, "lse"), tdout(dout, "grad_out"), tdq(dq, "dq"), tdk(dk, "dk"),
              tdv(dv, "dv");
          ReleasedGil release;
          varlen_attention_backward(tq, tk, tv, tcq, tck,
                                    make_options(scale, window_left, window_right, bottom_right, softcap), tout, tlse,
                                    tdout, tdq, tdk, tdv);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("out"),
        py::arg("lse"), py::arg("grad_out"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("scale"),
        py::arg("window_left"), py::arg("window_right"), py::arg("bottom_right"), py::arg("softcap"),
        "Backward of varlen_attention_forward.");
  m.def("attention_decode",
        [](py::handle q, const KVCacheViews& cache, int64_t length, py::handle out, float scale, int64_t window_left,
           int64_t window_right, float softcap) {
          TensorArg tq(q, "q"), tout(out, "out");
          ReleasedGil release;
          attention_decode(tq, cache.k, cache.v, cache.k_scale ? &cache.k_scale->view() : nullptr,
                           cache.v_scale ? &cache.v_scale->view() : nullptr, length,
                           make_options(scale, window_left, window_right, true, softcap), tout);
        },
        py::arg("q"), py::arg("cache"), py::arg("length"), py::arg("out"), py::arg("scale"), py::arg("window_left"),
        py::arg("window_right"), py::arg("softcap"),
        "Decode step: q [B, Hq, Lq <= 8, D] against the first `length` positions of a KVCacheViews.");
  m.def("kv_quantize_int8",
        [](py::handle src, py::handle dst, py::handle scale, int64_t start) {
          TensorArg tsrc(src, "k"), tdst(dst, "cache"), tscale(scale, "cache scale");
          ReleasedGil release;
          kv_quantize_int8(tsrc, tdst, tscale, start);
        },
        py::arg("src"), py::arg("dst"), py::arg("scale"), py::arg("start"),
        "Quantizes src [B, H, T, D] into int8 cache rows start.. with per-token, per-head scales.");
}

}  // namespace pocketml::bindings
