#pragma once
// The conversion kernel family: one table per instruction set, each entry
// converting `n` contiguous elements. Every variant must equal the scalar
// reference (runtime/half.h) bit for bit.
#include <cstddef>

#include "runtime/dispatch.h"

namespace pocketml {

using ConvertFn = void (*)(const void* src, void* dst, size_t n);

struct ConvertKernels {
  ConvertFn f32_to_f16;
  ConvertFn f16_to_f32;
  ConvertFn f32_to_bf16;
  ConvertFn bf16_to_f32;
  ConvertFn f16_to_bf16;
  ConvertFn bf16_to_f16;
};

namespace scalar { extern const ConvertKernels convert_kernels; }
namespace avx2 { extern const ConvertKernels convert_kernels; }
namespace avx512 { extern const ConvertKernels convert_kernels; }
namespace neon { extern const ConvertKernels convert_kernels; }

const IsaTables<ConvertKernels>& convert_tables();

}  // namespace pocketml
