#include "convert/convert.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "convert/convert_kernels.h"
#include "runtime/error.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

ConvertFn select_kernel(const ConvertKernels& k, DType from, DType to) {
  if (from == DType::f32 && to == DType::f16) return k.f32_to_f16;
  if (from == DType::f16 && to == DType::f32) return k.f16_to_f32;
  if (from == DType::f32 && to == DType::bf16) return k.f32_to_bf16;
  if (from == DType::bf16 && to == DType::f32) return k.bf16_to_f32;
  if (from == DType::f16 && to == DType::bf16) return k.f16_to_bf16;
  if (from == DType::bf16 && to == DType::f16) return k.bf16_to_f16;
  return nullptr;
}

// Below this a chunk would cost less than waking a thread (~10 us).
constexpr int64_t kMinElementsPerChunk = 1 << 16;

}  // namespace

const IsaTables<ConvertKernels>& convert_tables() {
  static const IsaTables<ConvertKernels> tables = {
      &scalar::convert_kernels,
#if POCKETML_ARCH_X86
      &avx2::convert_kernels,
      &avx512::convert_kernels,
#else
      nullptr,
      nullptr,
#endif
#if POCKETML_ARCH_ARM
      &neon::convert_kernels,
#else
      nullptr,
#endif
  };
  return tables;
}

void convert(const TensorView& src, const TensorView& dst) {
  require_dtype(src, "x", {DType::f32, DType::f16, DType::bf16});
  require_dtype(dst, "dtype", {DType::f32, DType::f16, DType::bf16});
  require_contiguous(src, "x");
  require_contiguous(dst, "out");
  require_writable(dst, "out");
  require_same_shape(src, "x", dst, "out");

  const int64_t n = src.numel();
  const char* in = static_cast<const char*>(src.data);
  char* out = static_cast<char*>(dst.data);
  const size_t in_size = dtype_size(src.dtype), out_size = dtype_size(dst.dtype);
  ConvertFn kernel = select_kernel(convert_tables().active(), src.dtype, dst.dtype);
  // One contiguous range per thread: a fresh output is first touched (page
  // faulted) by one thread per region, which keeps the kernel's page-table
  // locking uncontended.
  const int64_t threads = ThreadPool::global().num_threads();
  const int64_t grain = std::max(kMinElementsPerChunk, (n + threads - 1) / threads);
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    if (kernel == nullptr) {
      std::memcpy(out + begin * out_size, in + begin * in_size, (end - begin) * in_size);
    } else {
      kernel(in + begin * in_size, out + begin * out_size, static_cast<size_t>(end - begin));
    }
  });
}

}  // namespace pocketml
