// Every conversion variant against the scalar reference, bit for bit, on all
// 16-bit inputs, random fp32 bit patterns (NaN payloads included), lengths
// around each vector width, and fixed vectors of the reference itself.
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "convert/convert_kernels.h"
#include "runtime/cpu_features.h"
#include "runtime/half.h"

using namespace pocketml;

namespace {

struct Case {
  const char* name;
  ConvertFn ConvertKernels::*kernel;
  int in_bytes, out_bytes;
};

const Case kCases[] = {
    {"f32_to_f16", &ConvertKernels::f32_to_f16, 4, 2}, {"f16_to_f32", &ConvertKernels::f16_to_f32, 2, 4},
    {"f32_to_bf16", &ConvertKernels::f32_to_bf16, 4, 2}, {"bf16_to_f32", &ConvertKernels::bf16_to_f32, 2, 4},
    {"f16_to_bf16", &ConvertKernels::f16_to_bf16, 2, 2}, {"bf16_to_f16", &ConvertKernels::bf16_to_f16, 2, 2},
};

std::vector<uint8_t> inputs_for(int in_bytes, size_t n, uint32_t seed) {
  std::vector<uint8_t> bytes(n * in_bytes);
  std::mt19937 gen(seed);
  if (in_bytes == 2 && n >= 65536) {
    for (size_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(bytes.data())[i] = static_cast<uint16_t>(i);
  } else {
    for (auto& b : bytes) b = static_cast<uint8_t>(gen());
  }
  return bytes;
}

}  // namespace

TEST(every_variant_equals_the_scalar_reference) {
  const ConvertKernels& reference = *convert_tables().scalar;
  for (Isa isa : supported_isas()) {
    const ConvertKernels& variant = convert_tables().select(isa);
    for (const Case& c : kCases) {
      for (size_t n : {size_t(0), size_t(1), size_t(3), size_t(8), size_t(15), size_t(16), size_t(17), size_t(33),
                       size_t(65536), size_t(100003)}) {
        const std::vector<uint8_t> in = inputs_for(c.in_bytes, n, static_cast<uint32_t>(n));
        std::vector<uint8_t> expected(n * c.out_bytes + 8, 0xAB), got(n * c.out_bytes + 8, 0xAB);
        (reference.*c.kernel)(in.data(), expected.data(), n);
        (variant.*c.kernel)(in.data(), got.data(), n);
        size_t first_bad = got.size();
        for (size_t i = 0; i < got.size() && first_bad == got.size(); ++i)
          if (got[i] != expected[i]) first_bad = i;
        CHECK(first_bad == got.size(), isa_name(isa) << " " << c.name << " n=" << n << ": byte " << first_bad
                                                     << " differs (or wrote past the end)");
      }
    }
  }
}

TEST(reference_fixed_vectors) {
  struct F16Vector {
    uint32_t fp32_bits;
    uint16_t fp16_bits;
  };
  const F16Vector f16[] = {
      {0x3F800000, 0x3C00},  // 1
      {0x477FE000, 0x7BFF},  // 65504, the largest finite fp16
      {0x477FEFFF, 0x7BFF},  // just below the rounding boundary
      {0x477FF000, 0x7C00},  // 65520 rounds to infinity
      {0x33800000, 0x0001},  // 2^-24, the smallest denormal
      {0x33000000, 0x0000},  // 2^-25, a tie that rounds to even zero
      {0x33000001, 0x0001},  // just above that tie
      {0x3F801000, 0x3C00},  // 1 + 2^-11: tie, stays on even 0x3C00
      {0x3F803000, 0x3C02},  // 1 + 3*2^-11: tie, goes to even 0x3C02
      {0xFF800000, 0xFC00},  // -inf
      {0x7FA00000, 0x7F00},  // signalling NaN is quieted, payload kept
      {0x80000000, 0x8000},  // -0
  };
  for (const F16Vector& v : f16) {
    const uint16_t got = fp32_to_fp16(bits_float(v.fp32_bits));
    CHECK(got == v.fp16_bits, std::hex << v.fp32_bits << " -> " << got << ", expected " << v.fp16_bits);
  }
  struct Bf16Vector {
    uint32_t fp32_bits;
    uint16_t bf16_bits;
  };
  const Bf16Vector bf16[] = {
      {0x3F808000, 0x3F80},  // tie to even (down)
      {0x3F818000, 0x3F82},  // tie to even (up)
      {0x3F808001, 0x3F81},  // above the tie
      {0x7F7FFFFF, 0x7F80},  // the largest float rounds to infinity
      {0x00000001, 0x0000},  // the smallest denormal rounds to zero
      {0x00018000, 0x0002},  // denormal tie goes to even
      {0xFFC00001, 0xFFC0},  // NaN keeps its sign
      {0x7F800001, 0x7FC0},  // signalling NaN is quieted
  };
  for (const Bf16Vector& v : bf16) {
    const uint16_t got = fp32_to_bf16(bits_float(v.fp32_bits));
    CHECK(got == v.bf16_bits, std::hex << v.fp32_bits << " -> " << got << ", expected " << v.bf16_bits);
  }
  CHECK(float_bits(fp16_to_fp32(0x0001)) == 0x33800000, "fp16 denormal widens exactly");
  CHECK(float_bits(fp16_to_fp32(0x7C01)) == 0x7FC02000, "fp16 signalling NaN is quieted when widened");
  CHECK(float_bits(fp16_to_fp32(0xFBFF)) == 0xC77FE000, "-65504");
}
