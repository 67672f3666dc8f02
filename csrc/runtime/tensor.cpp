#include "runtime/tensor.h"

#include "runtime/error.h"

namespace pocketml {
namespace {

std::string tuple_string(const int64_t* values, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  if (n == 1) s += ",";
  return s + ")";
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::is_contiguous() const {
  if (numel() == 0) return true;  // nothing to address, whatever the strides say
  int64_t expected = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string TensorView::shape_string() const { return tuple_string(shape, ndim); }
std::string TensorView::strides_string() const { return tuple_string(strides, ndim); }

TensorView contiguous_view(void* data, DType dtype, std::initializer_list<int64_t> shape, bool writable,
                           std::string_view arg) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.writable = writable;
  if (shape.size() > kMaxDims) fail(ErrorKind::InvalidArgument, "too many dimensions");
  for (int64_t extent : shape) t.shape[t.ndim++] = extent;
  // Sizes come from C callers too: a shape whose byte size wraps would read a few
  // rows of a buffer meant to be huge and report success.
  int64_t stride = 1, bytes = 0;
  bool fits = true;
  for (int i = t.ndim - 1; i >= 0 && fits; --i) {
    t.strides[i] = stride;
    fits = t.shape[i] >= 0 && !__builtin_mul_overflow(stride, t.shape[i], &stride);
  }
  fits = fits && !__builtin_mul_overflow(stride, static_cast<int64_t>(dtype_size(dtype)), &bytes);
  if (!fits) {
    if (arg.empty()) fail(ErrorKind::InvalidArgument, "a shape of " + t.shape_string() + " elements: negative or too large");
    fail_argument(ErrorKind::InvalidArgument, arg, "sizes whose byte count fits int64", "shape " + t.shape_string());
  }
  return t;
}

void require_dtype(const TensorView& t, std::string_view arg, std::initializer_list<DType> allowed) {
  std::string expected;
  for (DType d : allowed) {
    if (d == t.dtype) return;
    if (!expected.empty()) expected += ", ";
    expected += dtype_name(d);
  }
  fail_argument(ErrorKind::Type, arg, "dtype " + expected, dtype_name(t.dtype));
}

void require_contiguous(const TensorView& t, std::string_view arg) {
  if (!t.is_contiguous())
    fail_argument(ErrorKind::InvalidArgument, arg, "contiguous memory (call .contiguous() or np.ascontiguousarray)",
                  "shape " + t.shape_string() + " with element strides " + t.strides_string());
}

void require_contiguous_last_dim(const TensorView& t, std::string_view arg) {
  // An empty tensor has nothing to read (torch gives expanded empty gradients all-zero strides).
  if (t.ndim > 0 && t.strides[t.ndim - 1] != 1 && t.shape[t.ndim - 1] != 1 && t.numel() != 0)
    fail_argument(ErrorKind::InvalidArgument, arg, "a contiguous last dimension (stride 1)",
                  "strides " + t.strides_string());
}

void require_ndim(const TensorView& t, std::string_view arg, int min_ndim, int max_ndim) {
  if (t.ndim >= min_ndim && t.ndim <= max_ndim) return;
  std::string expected = min_ndim == max_ndim ? std::to_string(min_ndim) + " dimensions"
                                              : std::to_string(min_ndim) + " to " + std::to_string(max_ndim) +
                                                    " dimensions";
  fail_argument(ErrorKind::InvalidArgument, arg, expected, std::to_string(t.ndim) + " (shape " + t.shape_string() + ")");
}

void require_writable(const TensorView& t, std::string_view arg) {
  if (!t.writable) fail_argument(ErrorKind::InvalidArgument, arg, "a writable array", "a read-only one");
}

void require_same_shape(const TensorView& a, std::string_view arg_a, const TensorView& b, std::string_view arg_b) {
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.shape[i] == b.shape[i];
  if (!same)
    fail_argument(ErrorKind::InvalidArgument, arg_b, "the shape of '" + std::string(arg_a) + "' " + a.shape_string(),
                  b.shape_string());
}

}  // namespace pocketml
