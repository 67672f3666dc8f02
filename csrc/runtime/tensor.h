#pragma once
// A non-owning view of a dense array that lives in NumPy, torch, Swift or C
// memory. Kernels take views; the owner keeps the memory alive for the call.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "runtime/dtype.h"

namespace pocketml {

inline constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements, not bytes
  bool writable = true;

  int64_t numel() const;
  bool is_contiguous() const;  // row-major, no gaps (size-1 dims may have any stride)
  int64_t size(int dim) const { return shape[dim < 0 ? dim + ndim : dim]; }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }

  std::string shape_string() const;    // "(2, 3)"
  std::string strides_string() const;  // "(3, 1)"
};

// A contiguous view over raw memory, as the C ABI receives it. `arg` names the
// caller's argument in the error a shape whose byte size overflows int64 raises.
TensorView contiguous_view(void* data, DType dtype, std::initializer_list<int64_t> shape, bool writable = true,
                           std::string_view arg = {});

// Argument checks shared by every kernel entry point. Each throws pocketml::Error
// naming the argument, what was expected and what was given.
void require_dtype(const TensorView& t, std::string_view arg, std::initializer_list<DType> allowed);
void require_contiguous(const TensorView& t, std::string_view arg);
// Stride 1 along the last dimension (any stride when it has one element).
void require_contiguous_last_dim(const TensorView& t, std::string_view arg);
void require_ndim(const TensorView& t, std::string_view arg, int min_ndim, int max_ndim);
void require_writable(const TensorView& t, std::string_view arg);
void require_same_shape(const TensorView& a, std::string_view arg_a, const TensorView& b, std::string_view arg_b);

}  // namespace pocketml
