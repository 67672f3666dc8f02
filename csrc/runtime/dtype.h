#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pocketml {

// The element types that cross the Python and C boundaries. The numeric values
// are part of the C ABI (pocketml_dtype) and must not change.
enum class DType : uint8_t { f32 = 0, f16 = 1, bf16 = 2, i8 = 3, u8 = 4, i32 = 5, i64 = 6 };

inline constexpr int kNumDTypes = 7;

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "fp32", "fp16", "bf16", "int8", ...
DType parse_dtype(const std::string& name);  // accepts the names above and "float32", "float16", "bfloat16", ...
bool is_floating(DType dtype);

}  // namespace pocketml
