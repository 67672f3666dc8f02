#pragma once
// Software prefetches for the GEMV kernels, which stream rows too short for the
// hardware prefetcher to pick up in time. (GCC's __builtin_prefetch measured
// no gain here where _mm_prefetch did, so x86 uses the intrinsic.)
#include <cstdint>

#include "quant/quant_format.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace pocketml {

static inline void prefetch_line(const void* p) {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#else
  __builtin_prefetch(p);
#endif
}

// Starts fetching the scales and zero points of rows [row, row + count), which
// live in their own arrays, away from the packed codes.
static inline void prefetch_group_params(const PackedWeights& w, int64_t row, int64_t count) {
  if (row + count > w.rows) return;
  const int64_t groups = w.groups_per_row();
  const int64_t scale_size = static_cast<int64_t>(dtype_size(w.scale_dtype));
  const char* scales = static_cast<const char*>(w.scales) + row * groups * scale_size;
  for (int64_t b = 0; b < count * groups * scale_size; b += 64) prefetch_line(scales + b);
  if (w.zero_points)
    for (int64_t b = 0; b < count * groups; b += 64) prefetch_line(w.zero_points + row * groups + b);
}

}  // namespace pocketml
