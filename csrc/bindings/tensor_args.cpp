#include "bindings/tensor_args.h"

#include <pybind11/numpy.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "runtime/error.h"

namespace pocketml::bindings {
namespace {

// The DLPack ABI (dmlc/dlpack, versions 0.8 and 1.x), declared here because it
// is a fixed binary interface with no header shipped by NumPy or torch.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr uint64_t kDLFlagReadOnly = 1;
constexpr int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLMetal = 8, kDLROCM = 10;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4;

std::string device_name(int32_t type, int32_t id) {
  switch (type) {
    case kDLCUDA: return "cuda:" + std::to_string(id);
    case kDLROCM: return "rocm:" + std::to_string(id);
    case kDLMetal: return "mps:" + std::to_string(id);
    default: return "DLPack device type " + std::to_string(type);
  }
}

std::string dtype_description(DLDataType t) {
  static const char* codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  // Codes past bool are DLPack 1.x's float8 / float4 variants: "DLPack code 10, 8 bits".
  if (t.code >= 7) return "DLPack code " + std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits";
  std::string s = codes[t.code];
  s += std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

DType to_dtype(DLDataType t, const char* arg) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return DType::f32;
    if (t.code == kDLFloat && t.bits == 16) return DType::f16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::bf16;
    if (t.code == kDLInt && t.bits == 8) return DType::i8;
    if (t.code == kDLUInt && t.bits == 8) return DType::u8;
    if (t.code == kDLInt && t.bits == 32) return DType::i32;
    if (t.code == kDLInt && t.bits == 64) return DType::i64;
  }
  fail_argument(ErrorKind::Type, arg, "dtype fp32, fp16, bf16, int8, uint8, int32 or int64", dtype_description(t));
}

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__qualname__")); }

// Asks for a DLPack 1.x capsule (which can carry read-only arrays) and falls
// back to the 0.x protocol for producers that do not take max_version.
py::object export_capsule(py::handle obj) {
  try {
    return obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
  }
  return obj.attr("__dlpack__")();
}

// NumPy's own dtypes that map one to one onto ours; anything else (bf16 from
// ml_dtypes, bool, float64) takes the DLPack path and its messages.
bool numpy_dtype(const py::dtype& dtype, DType* out) {
  const int size = static_cast<int>(dtype.itemsize());
  switch (dtype.kind()) {
    case 'f': if (size == 4) *out = DType::f32; else if (size == 2) *out = DType::f16; else return false; return true;
    case 'i': if (size == 1) *out = DType::i8; else if (size == 4) *out = DType::i32; else if (size == 8) *out = DType::i64;
              else return false; return true;
    case 'u': if (size == 1) { *out = DType::u8; return true; } return false;
    default: return false;
  }
}

// torch's tensor types and its C DLPack exporter, looked up once torch is imported
// (pocketml never imports it). Tensor.__dlpack__ wraps the same exporter in ~3 us
// of Python checks per call; the fast path makes the ones that matter here itself.
struct TorchExport {
  PyObject* tensor_type = nullptr;
  PyObject* parameter_type = nullptr;
  PyObject* strided = nullptr;
  PyObject* to_dlpack = nullptr;
};

const TorchExport* torch_export() {
  static const TorchExport* found = nullptr;  // leaked: lives until the interpreter exits
  if (found == nullptr && PyDict_GetItemString(PyImport_GetModuleDict(), "torch") != nullptr) {
    py::module_ torch = py::module_::import("torch");
    auto* t = new TorchExport;
    auto keep = [](py::object o) { return o.release().ptr(); };
    t->tensor_type = keep(torch.attr("Tensor"));
    t->parameter_type = keep(torch.attr("nn").attr("Parameter"));
    t->strided = keep(torch.attr("strided"));
    t->to_dlpack = keep(torch.attr("_C").attr("_to_dlpack"));
    found = t;
  }
  return found;
}

// A capsule for a plain strided CPU tensor through torch's C exporter, or a null
// object when `obj` is anything else (the caller then takes the general path).
py::object torch_capsule(py::handle obj) {
  PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  const char* name = Py_TYPE(obj.ptr())->tp_name;
  if (std::strcmp(name, "Tensor") != 0 && std::strcmp(name, "Parameter") != 0) return py::object();
  const TorchExport* torch = torch_export();
  if (torch == nullptr || (type != torch->tensor_type && type != torch->parameter_type)) return py::object();
  if (!py::bool_(obj.attr("is_cpu")) || obj.attr("layout").ptr() != torch->strided ||
      py::bool_(obj.attr("is_neg")()))
    return py::object();
  PyObject* capsule = PyObject_CallOneArg(torch->to_dlpack, obj.ptr());
  if (capsule == nullptr) throw py::error_already_set();  // torch's own reason (vmap, quantized dtypes, ...)
  return py::reinterpret_steal<py::object>(capsule);
}

}  // namespace

bool TensorArg::from_numpy(py::handle obj, const char* arg) {
  if (!py::isinstance<py::array>(obj)) return false;
  auto array = py::reinterpret_borrow<py::array>(obj);
  const py::ssize_t itemsize = array.itemsize();
  if (array.dtype().byteorder() == '>')
    fail_argument(ErrorKind::Type, arg, "native (little-endian) byte order", "a big-endian array");
  if (array.ndim() > kMaxDims || !numpy_dtype(array.dtype(), &view_.dtype)) return false;
  for (py::ssize_t i = 0; i < array.ndim(); ++i)
    if (array.strides(i) % itemsize != 0)
      fail_argument(ErrorKind::InvalidArgument, arg, "strides that are multiples of the element size",
                    "a stride of " + std::to_string(array.strides(i)) + " bytes for " + std::to_string(itemsize) +
                    "-byte elements");
  view_.data = const_cast<void*>(array.data());
  view_.ndim = static_cast<int>(array.ndim());
  for (int i = 0; i < view_.ndim; ++i) {
    view_.shape[i] = array.shape(i);
    view_.strides[i] = array.strides(i) / itemsize;
  }
  view_.writable = array.writeable();
  capsule_ = py::reinterpret_borrow<py::object>(obj);  // keeps the array alive like a capsule would
  return true;
}

TensorArg::TensorArg(py::handle obj, const char* arg) {
  if (from_numpy(obj, arg)) return;
  capsule_ = torch_capsule(obj);
  if (!capsule_) {
    if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
      fail_argument(ErrorKind::Type, arg, "a NumPy array or torch tensor", type_name(obj));

    py::tuple device = obj.attr("__dlpack_device__")();
    const int32_t device_type = device[0].cast<int32_t>(), device_id = device[1].cast<int32_t>();
    if (device_type != kDLCPU && device_type != kDLCUDAHost)
      fail_argument(ErrorKind::InvalidArgument, arg, "a CPU tensor", "a tensor on " + device_name(device_type, device_id));

    // torch refuses to export a tensor that requires grad; its detached view shares
    // the memory, and autograd around the kernel is the Python layer's business.
    py::object source = py::reinterpret_borrow<py::object>(obj);
    if (py::hasattr(source, "requires_grad") && py::bool_(source.attr("requires_grad")))
      source = source.attr("detach")();
    // torch exports a negated view's memory without its sign: refuse it rather than read it wrong.
    if (py::hasattr(source, "is_neg") && py::bool_(source.attr("is_neg")()))
      fail_argument(ErrorKind::InvalidArgument, arg, "a tensor without torch's negative bit (call .resolve_neg())",
                    "a negated view");
    try {
      capsule_ = export_capsule(source);
    } catch (py::error_already_set& e) {  // object, str, datetime, longdouble ... have no DLPack form
      if (!e.matches(PyExc_BufferError)) throw;
      const std::string dtype = py::hasattr(source, "dtype") ? py::str(source.attr("dtype")).cast<std::string>()
                                                             : type_name(obj);
      fail_argument(ErrorKind::Type, arg, "a floating-point or integer dtype of at most 64 bits", dtype);
    }
  }

  const DLTensor* t = nullptr;
  PyObject* capsule = capsule_.ptr();
  if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
    auto* managed = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule, "dltensor_versioned"));
    if (managed->version.major > 1)
      fail_argument(ErrorKind::Type, arg, "DLPack version 1.x", "version " + std::to_string(managed->version.major));
    t = &managed->dl_tensor;
    view_.writable = (managed->flags & kDLFlagReadOnly) == 0;
  } else if (PyCapsule_IsValid(capsule, "dltensor")) {
    t = &static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"))->dl_tensor;
  } else {
    fail_argument(ErrorKind::Type, arg, "a DLPack capsule from __dlpack__", "something else");
  }

  if (t->ndim > kMaxDims)
    fail_argument(ErrorKind::InvalidArgument, arg, "at most " + std::to_string(kMaxDims) + " dimensions",
                  std::to_string(t->ndim));
  view_.dtype = to_dtype(t->dtype, arg);
  view_.data = static_cast<char*>(t->data) + t->byte_offset;
  view_.ndim = t->ndim;
  int64_t compact_stride = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    view_.shape[i] = t->shape[i];
    view_.strides[i] = t->strides ? t->strides[i] : compact_stride;
    compact_stride *= t->shape[i];
  }
  // torch's zero tensors have elements but no memory: a kernel would read address 0.
  if (t->data == nullptr && view_.numel() > 0)
    fail_argument(ErrorKind::InvalidArgument, arg, "a tensor with memory", "one without (a torch zero tensor? .clone() it)");
}

// The capsule is never renamed to "used_dltensor": its own destructor, run when
// capsule_ is released, calls the producer's deleter. That is the protocol's
// rule for a consumer that only borrows the memory during a call.
TensorArg::~TensorArg() = default;

void register_tensor_args(py::module_& m) {
  // Lets tests and the Python layer see exactly what the kernels will see.
  m.def("describe_tensor", [](py::handle obj, const char* arg) {
    TensorArg t(obj, arg);
    const TensorView& v = t.view();
    py::list shape, strides;
    for (int i = 0; i < v.ndim; ++i) {
      shape.append(v.shape[i]);
      strides.append(v.strides[i]);
    }
    py::dict d;
    d["dtype"] = dtype_name(v.dtype);
    d["shape"] = py::tuple(shape);
    d["strides"] = py::tuple(strides);
    d["contiguous"] = v.is_contiguous();
    d["writable"] = v.writable;
    d["data_ptr"] = reinterpret_cast<uintptr_t>(v.data);
    return d;
  }, py::arg("x"), py::arg("arg") = "x");
}

}  // namespace pocketml::bindings
