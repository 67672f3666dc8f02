// C ABI: dtype conversion.
#include <limits>
#include <string>

#include "capi/guard.h"
#include "convert/convert.h"

using namespace pocketml;

extern "C" pocketml_status pocketml_convert(const void* src, pocketml_dtype src_dtype, void* dst,
                                            pocketml_dtype dst_dtype, size_t count) {
  return capi::guarded([&] {
    if (count > static_cast<size_t>(std::numeric_limits<int64_t>::max()))
      fail_argument(ErrorKind::InvalidArgument, "count", "at most 2^63 - 1 elements", std::to_string(count));
    const int64_t n = static_cast<int64_t>(count);
    const TensorView from = contiguous_view(const_cast<void*>(src), capi::to_dtype(src_dtype, "src_dtype"), {n}, false,
                                            "count");
    const TensorView to = contiguous_view(dst, capi::to_dtype(dst_dtype, "dst_dtype"), {n}, true, "count");
    // Named as this function's arguments: the core's checks name Python's (x, dtype). The dtypes
    // are checked for count 0 too, as Python refuses an empty int8 array.
    require_dtype(from, "src_dtype", {DType::f32, DType::f16, DType::bf16});
    require_dtype(to, "dst_dtype", {DType::f32, DType::f16, DType::bf16});
    if (n == 0) return;
    capi::require_pointer(src, "src");
    capi::require_pointer(dst, "dst");
    convert(from, to);
  });
}
