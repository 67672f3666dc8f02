// C ABI: dtype conversion.
#include <limits>
#include <string>

#include "capi/guard.h"
#include "convert/convert.h"

using namespace pocketml;

extern "C" pocketml_status pocketml_convert(const void* src, pocketml_dtype src_dtype, void* dst,
                                            pocketml_dtype dst_dtype, size_t count) {
  return capi::guarded([&] {
    if (count == 0) return;
    capi::require_pointer(src, "src");
    capi::require_pointer(dst, "dst");
    if (count > static_cast<size_t>(std::numeric_limits<int64_t>::max()))
      fail_argument(ErrorKind::InvalidArgument, "count", "at most 2^63 - 1 elements", std::to_string(count));
    const int64_t n = static_cast<int64_t>(count);
    convert(contiguous_view(const_cast<void*>(src), capi::to_dtype(src_dtype, "src_dtype"), {n}, false),
            contiguous_view(dst, capi::to_dtype(dst_dtype, "dst_dtype"), {n}));
  });
}
