// The quantization core without Python (runs under qemu-aarch64 and on devices):
// the packed layout's fixed vectors, and quantize -> matmul against a plain
// double-precision product of the dequantized weights, on every variant here.
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "quant/quant.h"
#include "runtime/cpu_features.h"

using namespace pocketml;

namespace {

std::string hex(const std::vector<uint8_t>& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : bytes) s += {digits[b >> 4], digits[b & 15]};
  return s;
}

}  // namespace

// docs/formats.md: codes (7i + 3) mod 2^bits for i = 0..31.
TEST(packed_layout_matches_the_documented_vectors) {
  const std::pair<int, const char*> vectors[] = {
      {1, "ff00ff00"}, {3, "ffaa5500ffaa5500aaaaaaaa"}, {4, "33aa1188ff66dd44bb22990077ee55cc"},
      {6, "33aa1188ff66dd44bb22990077ee55ccbcf0c10505165a6b"}};
  for (const auto& [bits, expected] : vectors) {
    std::vector<uint8_t> codes(32), packed(static_cast<size_t>(packed_row_bytes(32, bits)));
    for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>((7 * i + 3) % (1 << bits));
    pack_codes(contiguous_view(codes.data(), DType::u8, {1, 32}), bits, contiguous_view(packed.data(), DType::u8, {1, int64_t(packed.size())}));
    CHECK(hex(packed) == expected, "bits " << bits << ": " << hex(packed));
  }
}

TEST(matmul_equals_a_double_product_of_the_dequantized_weights) {
  const int64_t n = 19, k = 96, m = 5, group = 32;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<float> w(n * k), x(m * k);
  for (float& v : w) v = normal(gen);
  for (float& v : x) v = normal(gen);
  std::vector<uint8_t> packed(static_cast<size_t>(n * packed_row_bytes(k, 4))), zeros(n * k / group);
  std::vector<float> scales(n * k / group), dense(n * k), y(m * n);
  AffineOptions options;
  options.bits = 4;
  options.group_size = group;
  QuantizedViews q;
  q.bits = 4;
  q.cols = k;
  q.group_size = group;
  q.packed = contiguous_view(packed.data(), DType::u8, {n, packed_row_bytes(k, 4)});
  q.scales = contiguous_view(scales.data(), DType::f32, {n, k / group});
  q.zero_points = contiguous_view(zeros.data(), DType::u8, {n, k / group});
  quantize_affine(contiguous_view(w.data(), DType::f32, {n, k}), options, TensorView{}, q.packed, q.scales, q.zero_points);
  for (Isa isa : supported_isas()) {
    set_active_isa(isa);
    dequantize(q, contiguous_view(dense.data(), DType::f32, {n, k}));
    quantized_matmul(contiguous_view(x.data(), DType::f32, {m, k}), q, contiguous_view(y.data(), DType::f32, {m, n}));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double expected = 0.0, magnitude = 0.0;
        for (int64_t t = 0; t < k; ++t) {
          expected += double(x[i * k + t]) * dense[j * k + t];
          magnitude += std::fabs(double(x[i * k + t]) * dense[j * k + t]);
        }
        CHECK(std::fabs(y[i * n + j] - expected) <= 1e-5 * magnitude, isa_name(isa) << " [" << i << ", " << j << "]");
      }
    }
  }
  set_active_isa(best_isa());
}
