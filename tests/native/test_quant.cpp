// The quantization core without Python (runs under qemu-aarch64 and on devices):
// the packed layout's fixed vectors, quantize -> matmul against a plain
// double-precision product of the dequantized weights, and every kernel of
// every variant (ARM extensions included) against the scalar reference.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "quant/quant.h"
#include "quant/quant_kernels.h"
#include "runtime/cpu_features.h"
#include "runtime/half.h"

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

// --- every kernel variant against the scalar reference, kernel by kernel ---

namespace {

// A random quantized weight in any format: codes are random bytes (every byte
// pattern is a valid packing), scales of both signs over many magnitudes.
struct RandomWeights {
  std::vector<uint8_t> packed, zero_points;
  std::vector<uint16_t> scales16;
  std::vector<float> scales32, lut;
  PackedWeights w;

  RandomWeights(QuantKind kind, int bits, int64_t rows, int64_t cols, int64_t group_size, DType scale_dtype,
                bool symmetric, uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> exponent(-6.0f, 2.0f);
    w.kind = kind;
    w.bits = bits;
    w.rows = rows;
    w.cols = cols;
    w.group_size = group_size;
    w.row_bytes = packed_row_bytes(cols, bits);
    packed.resize(static_cast<size_t>(rows * w.row_bytes));
    for (auto& b : packed) b = static_cast<uint8_t>(gen());
    w.packed = packed.data();
    if (kind == QuantKind::affine) {
      const int64_t groups = rows * (cols / group_size);
      scales32.resize(groups);
      scales16.resize(groups);
      for (int64_t g = 0; g < groups; ++g) {
        const float s = normal(gen) * std::pow(10.0f, exponent(gen));
        scales32[g] = s;
        scales16[g] = scale_dtype == DType::f16 ? fp32_to_fp16(s) : fp32_to_bf16(s);
      }
      w.scale_dtype = scale_dtype;
      w.scales = scale_dtype == DType::f32 ? static_cast<const void*>(scales32.data()) : scales16.data();
      if (!symmetric) {
        zero_points.resize(groups);
        for (auto& z : zero_points) z = static_cast<uint8_t>(gen() % (1u << bits));
        w.zero_points = zero_points.data();
      }
    } else {
      lut.resize(static_cast<size_t>((rows / group_size) << bits));
      for (float& v : lut) v = normal(gen) * std::pow(10.0f, exponent(gen));
      lut[1] = -0.0f;
      w.lut = lut.data();
    }
  }
};

// The first two groups' scales become the smallest subnormal and infinity
// (inf * 0 is NaN: the same NaN in every variant, which computes the same product).
void set_edge_scales(RandomWeights& r) {
  if (r.w.kind != QuantKind::affine || r.scales32.size() < 2) return;
  r.scales32[0] = 1e-45f;
  r.scales32[1] = INFINITY;
  r.scales16[0] = 0x0001;
  r.scales16[1] = r.w.scale_dtype == DType::f16 ? 0x7C00 : 0x7F80;
}

struct NamedKernels {
  std::string name;
  const QuantKernels* kernels;
};

// The tables dispatch can pick on this CPU, besides the reference.
std::vector<NamedKernels> optimized_variants() {
  std::vector<NamedKernels> variants;
  for (Isa isa : supported_isas())
    if (isa != Isa::scalar) variants.push_back({isa_name(isa), &quant_tables().select(isa)});
  return variants;
}

// Every int8 dot product this CPU can run: the tables' and, on ARM, each
// extension's (the NEON table holds only the best one).
std::vector<std::pair<std::string, DotInt8Fn>> int8_variants() {
  std::vector<std::pair<std::string, DotInt8Fn>> variants;
  for (const auto& v : optimized_variants())
    if (v.kernels->dot_int8) variants.push_back({v.name, v.kernels->dot_int8});
#if POCKETML_ARCH_ARM
  variants.push_back({"neon (armv8.0)", neon::quant_kernels.dot_int8});
  if (cpu_features().neon_dotprod) variants.push_back({"neon_dotprod", neon_dotprod::dot_int8});
  if (cpu_features().neon_i8mm) variants.push_back({"neon_i8mm", neon_i8mm::dot_int8});
#endif
  return variants;
}

struct Format {
  QuantKind kind;
  int bits;
  int64_t cols, group_size;
  DType scale_dtype;
  bool symmetric;
};

std::vector<Format> all_formats() {
  std::vector<Format> formats;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    formats.push_back({QuantKind::affine, bits, 96, 32, DType::f16, false});
    formats.push_back({QuantKind::affine, bits, 128, 64, DType::bf16, true});
    formats.push_back({QuantKind::affine, bits, 40, 40, DType::f32, false});  // one group, K not a chunk multiple
  }
  for (int bits : {1, 2, 3, 4, 6, 8}) formats.push_back({QuantKind::lut, bits, 96, 1, DType::f32, false});
  return formats;
}

std::string format_name(const Format& f) {
  return std::string(f.kind == QuantKind::lut ? "lut" : "affine") + " bits " + std::to_string(f.bits) + " K " +
         std::to_string(f.cols) + " group " + std::to_string(f.group_size);
}

// Every row of a weight decoded by the reference: [rows, padded_cols].
std::vector<float> decoded_rows(const PackedWeights& w, int64_t padded_cols) {
  std::vector<float> dense(w.rows * padded_cols);
  for (int64_t row = 0; row < w.rows; ++row)
    scalar::quant_kernels.decode_row(w, row, 0, chunks_per_row(w.cols), dense.data() + row * padded_cols);
  return dense;
}

// A GEMV's y [m, rows] against double products of x [.., padded_cols] and the
// decoded weights, for the rows from 1 on: row 0 was not the kernel's to write.
void check_gemv_rows(const std::string& what, const std::vector<float>& y, const std::vector<float>& x,
                     const std::vector<float>& dense, int m, int64_t rows, int64_t padded_cols) {
  for (int i = 0; i < m; ++i) {
    CHECK(y[i * rows] == -1.0f, what << " wrote row 0");
    for (int64_t j = 1; j < rows; ++j) {
      double expected = 0.0, magnitude = 0.0;
      for (int64_t k = 0; k < padded_cols; ++k) {
        expected += double(x[i * padded_cols + k]) * dense[j * padded_cols + k];
        magnitude += std::fabs(double(x[i * padded_cols + k]) * dense[j * padded_cols + k]);
      }
      CHECK(std::fabs(y[i * rows + j] - expected) <= 1e-5 * magnitude,
            what << " m " << m << " [" << i << ", " << j << "]: " << y[i * rows + j] << " vs " << expected);
    }
  }
}

// gemv(row_begin, row_end, y) computes rows [row_begin, row_end) into y [m, rows]:
// each row computed alone equals, bit for bit, its value in y from one call
// over rows 1 .. rows - 1. Kernels work through blocks of rows and the split
// into tasks moves the blocks' edges, so a row's result must not depend on them.
template <class Gemv>
void check_rows_alone_match(const std::string& what, Gemv gemv, const std::vector<float>& y, int m, int64_t rows) {
  for (int64_t j = 1; j < rows; ++j) {
    std::vector<float> alone(m * rows, -1.0f);
    gemv(j, j + 1, alone.data());
    for (int i = 0; i < m; ++i)
      CHECK(std::memcmp(&alone[i * rows + j], &y[i * rows + j], sizeof(float)) == 0,
            what << " m " << m << " row " << j << " alone: " << alone[i * rows + j] << " vs " << y[i * rows + j]);
  }
}

}  // namespace

TEST(every_variant_decodes_and_unpacks_bit_for_bit_like_the_reference) {
  const int64_t rows = 6;
  for (const Format& f : all_formats()) {
    RandomWeights r(f.kind, f.bits, rows, f.cols, f.kind == QuantKind::lut ? 2 : f.group_size, f.scale_dtype,
                    f.symmetric, 11 + f.bits);
    set_edge_scales(r);
    const int64_t chunks = chunks_per_row(f.cols);
    std::vector<float> expected(chunks * kCodesPerChunk), got(expected.size());
    std::vector<uint8_t> expected_codes(expected.size()), got_codes(expected.size());
    for (const auto& v : optimized_variants()) {
      for (int64_t row = 0; row < rows; ++row) {
        for (int64_t begin : {int64_t(0), chunks - 1}) {  // a start inside the row re-reads its group
          scalar::quant_kernels.decode_row(r.w, row, begin, chunks, expected.data());
          v.kernels->decode_row(r.w, row, begin, chunks, got.data());
          const size_t n = static_cast<size_t>((chunks - begin) * kCodesPerChunk);
          CHECK(std::memcmp(expected.data(), got.data(), n * sizeof(float)) == 0,
                v.name << " decode " << format_name(f) << " row " << row << " from chunk " << begin);
          if (v.kernels->unpack_codes == nullptr) continue;
          scalar::quant_kernels.unpack_codes(r.w, row, begin, chunks, expected_codes.data());
          v.kernels->unpack_codes(r.w, row, begin, chunks, got_codes.data());
          CHECK(std::memcmp(expected_codes.data(), got_codes.data(), n) == 0,
                v.name << " unpack " << format_name(f) << " row " << row << " from chunk " << begin);
        }
      }
    }
  }
}

TEST(every_fused_gemv_equals_a_double_product_of_the_decoded_weights) {
  const int64_t rows = 11;  // not a multiple of any variant's row step
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  // Rows long enough to be split into column slices at M >= 4 (past 1024 columns),
  // with more than one block of 64 groups, and one group per row across slices.
  std::vector<Format> formats = all_formats();
  formats.push_back({QuantKind::affine, 8, 2080, 32, DType::f16, false});
  formats.push_back({QuantKind::affine, 8, 2100, 2100, DType::f32, true});
  formats.push_back({QuantKind::affine, 4, 4160, 64, DType::bf16, false});
  for (const Format& f : formats) {
    const RandomWeights r(f.kind, f.bits, rows, f.cols, f.kind == QuantKind::lut ? 1 : f.group_size, f.scale_dtype,
                          f.symmetric, 23 + f.bits);
    const int64_t padded_cols = chunks_per_row(f.cols) * kCodesPerChunk;
    const std::vector<float> dense = decoded_rows(r.w, padded_cols);
    for (int m : {1, 2, 3, 5, 8}) {
      const int x_rows = gemv_padded_rows(m);
      std::vector<float> x(x_rows * padded_cols, 0.0f);
      for (int i = 0; i < m; ++i)
        for (int64_t k = 0; k < f.cols; ++k) x[i * padded_cols + k] = normal(gen);
      for (const auto& v : optimized_variants()) {
        if (v.kernels->gemv == nullptr) continue;
        std::vector<float> y(m * rows, -1.0f);
        const auto gemv = [&](int64_t begin, int64_t end, float* out) {
          v.kernels->gemv(r.w, begin, end, x.data(), padded_cols, m, out, rows);
        };
        gemv(1, rows, y.data());  // row 0 is not its to write
        check_gemv_rows(v.name + " gemv " + format_name(f), y, x, dense, m, rows, padded_cols);
        check_rows_alone_match(v.name + " gemv " + format_name(f), gemv, y, m, rows);
      }
    }
  }
}

TEST(every_dot_tile_equals_a_double_product) {
  const int64_t k = 96, ld = 100;
  std::mt19937 gen(9);
  std::normal_distribution<float> normal;
  std::vector<float> x(4 * ld), w(4 * ld);
  for (float& v : x) v = normal(gen);
  for (float& v : w) v = normal(gen);
  for (const auto& v : optimized_variants()) {
    for (int m = 1; m <= kDotTileRows; ++m) {
      for (int n = 1; n <= kDotTileRows; ++n) {
        std::vector<float> c(m * 5, 1.0f);  // dot_tile adds to c
        v.kernels->dot_tile(x.data(), ld, m, w.data(), ld, n, k, c.data(), 5);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < 5; ++j) {
            double expected = 1.0, magnitude = 1.0;
            for (int64_t t = 0; j < n && t < k; ++t) {
              expected += double(x[i * ld + t]) * w[j * ld + t];
              magnitude += std::fabs(double(x[i * ld + t]) * w[j * ld + t]);
            }
            CHECK(std::fabs(c[i * 5 + j] - expected) <= 1e-5 * magnitude,
                  v.name << " dot_tile " << m << "x" << n << " [" << i << ", " << j << "]");
          }
        }
      }
    }
  }
}

// Full-range codes (0..255) and activations (-127..127): the 32-bit sums are
// exact in every variant, so only the fp32 scaling may round differently.
TEST(every_int8_dot_product_equals_the_exact_sums) {
  const int64_t k = 128, ld = 144;
  std::mt19937 gen(13);
  std::vector<int8_t> xq(kInt8TileRows * ld);
  std::vector<uint8_t> codes(kInt8TileCols * ld);
  for (auto& v : xq) v = static_cast<int8_t>(int(gen() % 255) - 127);
  for (auto& v : codes) v = static_cast<uint8_t>(gen());
  xq[0] = -127;  // extremes side by side
  codes[0] = 255;
  std::normal_distribution<float> normal;
  std::vector<float> scales(kInt8TileCols * 8);
  for (float& s : scales) s = normal(gen) * 1e-3f;
  std::string names;
  for (const auto& variant : int8_variants()) names += " " + variant.first;
  std::printf("    int8 dot products on this CPU:%s\n", names.c_str());
  for (const auto& [name, dot_int8] : int8_variants()) {
    for (int64_t group : {int64_t(32), int64_t(64), k}) {
      for (int m = 1; m <= kInt8TileRows; ++m) {
        for (int n = 1; n <= kInt8TileCols; ++n) {
          std::vector<float> c(m * 3, 0.5f);
          dot_int8(xq.data(), ld, m, codes.data(), ld, n, k, group, scales.data(), 8, c.data(), 3);
          for (int i = 0; i < m; ++i) {
            for (int j = 0; j < 3; ++j) {
              double expected = 0.5, magnitude = 0.5;
              for (int64_t k0 = 0; j < n && k0 < k; k0 += group) {
                int64_t dot = 0;
                for (int64_t t = k0; t < k0 + group; ++t) dot += int64_t(xq[i * ld + t]) * codes[j * ld + t];
                expected += double(scales[j * 8 + k0 / group]) * double(dot);
                magnitude += std::fabs(double(scales[j * 8 + k0 / group]) * double(dot));
              }
              CHECK(std::fabs(c[i * 3 + j] - expected) <= 1e-6 * magnitude,
                    name << " dot_int8 group " << group << " " << m << "x" << n << " [" << i << ", " << j << "]: "
                         << c[i * 3 + j] << " vs " << expected);
            }
          }
        }
      }
    }
  }
}

// The fused int8-activation GEMV against the documented sum in double, for
// every group layout it specialises (32, 64, 128, one per row), rows that end in
// a partial 64-byte block, more groups than one parameter block (64), and the
// extremes of codes and activations side by side.
TEST(every_fused_int8_gemv_equals_the_exact_sums) {
  struct Case {
    int bits;
    int64_t cols, group_size;
    DType scale_dtype;
    bool symmetric;
  };
  const Case cases[] = {
      {4, 96, 32, DType::f16, false},    {4, 448, 64, DType::bf16, true}, {4, 384, 128, DType::f32, false},
      {4, 40, 40, DType::f32, false},    {4, 8192, 32, DType::f16, false}, {8, 96, 32, DType::f16, false},
      {8, 192, 64, DType::bf16, true},   {8, 256, 128, DType::f32, false}, {8, 40, 40, DType::f16, true},
      {8, 4480, 64, DType::f16, false},
  };
  const int64_t rows = 11;  // not a multiple of any row step
  std::mt19937 gen(29);
  int variants = 0;
  for (const Case& c : cases) {
    const RandomWeights r(QuantKind::affine, c.bits, rows, c.cols, c.group_size, c.scale_dtype, c.symmetric, 31 + c.bits);
    const int64_t padded_cols = chunks_per_row(c.cols) * kCodesPerChunk;
    const int64_t block_codes = int8_gemv_block_codes(c.bits);
    const int64_t row_length = (padded_cols + block_codes - 1) / block_codes * block_codes;
    const int64_t group = c.group_size % kCodesPerChunk == 0 ? c.group_size : padded_cols;
    const int64_t groups = padded_cols / group, lds = (groups + 15) / 16 * 16;
    std::vector<uint8_t> codes(rows * padded_cols);
    for (int64_t j = 0; j < rows; ++j) scalar::quant_kernels.unpack_codes(r.w, j, 0, chunks_per_row(c.cols), codes.data() + j * padded_cols);
    for (int m : {1, 2, 3, 5, 8}) {
      const int x_rows = gemv_padded_rows(m);
      std::vector<int8_t> xq(x_rows * padded_cols, 0), placed(x_rows * row_length, 0);
      std::vector<float> sums(x_rows * lds, 0.0f), x_scale(x_rows, 1.0f);
      for (int i = 0; i < m; ++i) {
        for (int64_t k = 0; k < c.cols; ++k) xq[i * padded_cols + k] = static_cast<int8_t>(int(gen() % 255) - 127);
        xq[i * padded_cols] = -127;
        xq[i * padded_cols + 1] = 127;
        x_scale[i] = std::ldexp(1.0f + float(gen() % 1000) / 1000.0f, -int(gen() % 20));
        for (int64_t k = 0; k < padded_cols; ++k) {
          placed[i * row_length + int8_gemv_position(c.bits, k)] = xq[i * padded_cols + k];
          sums[i * lds + k / group] += xq[i * padded_cols + k];
        }
      }
      for (const auto& v : optimized_variants()) {
        if (v.kernels->gemv_int8 == nullptr) continue;
        ++variants;
        std::vector<float> y(m * rows, -1.0f);
        const auto gemv = [&](int64_t begin, int64_t end, float* out) {
          v.kernels->gemv_int8(r.w, begin, end, placed.data(), row_length, sums.data(), lds, x_scale.data(), m, out, rows);
        };
        gemv(1, rows, y.data());
        check_rows_alone_match(v.name + " gemv_int8 bits " + std::to_string(c.bits), gemv, y, m, rows);
        for (int i = 0; i < m; ++i) {
          CHECK(y[i * rows] == -1.0f, v.name << " gemv_int8 wrote row 0");
          for (int64_t j = 1; j < rows; ++j) {
            double expected = 0.0, magnitude = 0.0;
            for (int64_t g = 0; g < groups; ++g) {
              int64_t dot = 0, abs_dot = 0;
              for (int64_t k = g * group; k < (g + 1) * group; ++k) {
                dot += int64_t(xq[i * padded_cols + k]) * codes[j * padded_cols + k];
                abs_dot += std::abs(int64_t(xq[i * padded_cols + k])) * codes[j * padded_cols + k];
              }
              float scale, zero;
              chunk_affine_params(r.w, j, g * group / kCodesPerChunk, &scale, &zero);
              const double zero_share = double(zero) * sums[i * lds + g];
              expected += double(scale) * (double(dot) - zero_share);
              magnitude += std::fabs(double(scale)) * (double(abs_dot) + std::fabs(zero_share));
            }
            expected *= x_scale[i];
            magnitude *= x_scale[i];
            CHECK(std::fabs(y[i * rows + j] - expected) <= 1e-5 * magnitude,
                  v.name << " gemv_int8 bits " << c.bits << " K " << c.cols << " group " << c.group_size << " m " << m
                         << " [" << i << ", " << j << "]: " << y[i * rows + j] << " vs " << expected);
          }
        }
      }
    }
  }
  // The AVX-512 table has the fused path wherever VNNI runs, the NEON one wherever SDOT does.
  bool expected = cpu_features().neon_dotprod;
  for (Isa isa : supported_isas()) expected |= isa == Isa::avx512 && cpu_features().avx512vnni;
  CHECK(!expected || variants > 0, "no variant ran the fused int8 GEMV");
}

// The bf16 GEMV against a double product of the decoded weights, for every
// group layout it specialises (32, 64, 128, one per row), rows that end in a
// partial 64-byte block, more groups than one parameter load (64), zero points
// at both ends, and activations from 1e-30 to 1e30 with zeros.
TEST(every_bf16_gemv_equals_a_double_product_of_the_decoded_weights) {
  const Format formats[] = {
      {QuantKind::affine, 4, 96, 32, DType::f16, false},   {QuantKind::affine, 4, 448, 64, DType::bf16, true},
      {QuantKind::affine, 4, 384, 128, DType::f32, false}, {QuantKind::affine, 4, 40, 40, DType::f32, false},
      {QuantKind::affine, 4, 8192, 32, DType::f16, false}, {QuantKind::affine, 4, 4480, 64, DType::f16, false},
      {QuantKind::affine, 4, 8320, 128, DType::f16, true},
  };
  const int64_t rows = 11;  // not a multiple of any row step
  std::mt19937 gen(37);
  std::normal_distribution<float> normal;
  int variants = 0;
  for (const Format& f : formats) {
    RandomWeights r(f.kind, f.bits, rows, f.cols, f.group_size, f.scale_dtype, f.symmetric, 41);
    if (!f.symmetric) {
      r.zero_points[0] = 0;
      r.zero_points[1] = 15;
    }
    const int64_t padded_cols = chunks_per_row(f.cols) * kCodesPerChunk;
    const int64_t row_length = (padded_cols + kBf16GemvBlockCodes - 1) / kBf16GemvBlockCodes * kBf16GemvBlockCodes;
    const std::vector<float> dense = decoded_rows(r.w, padded_cols);
    for (int m = 1; m <= kMaxBf16GemvRows; ++m) {
      const int x_rows = gemv_padded_rows(m);
      std::vector<float> x(x_rows * padded_cols, 0.0f);
      std::vector<uint16_t> placed(x_rows * row_length, 0);
      for (int i = 0; i < m; ++i) {
        for (int64_t k = 0; k < f.cols; ++k) {
          const float scale = k % 5 == 0 ? std::ldexp(1.0f, int(gen() % 200) - 100) : 1.0f;
          const uint16_t bits = k % 7 == 3 ? 0 : fp32_to_bf16(normal(gen) * scale);
          x[i * padded_cols + k] = bf16_to_fp32(bits);
          placed[i * row_length + bf16_gemv_position(k)] = bits;
        }
      }
      for (const auto& v : optimized_variants()) {
        if (v.kernels->gemv_bf16 == nullptr) continue;
        ++variants;
        std::vector<float> y(m * rows, -1.0f);
        const auto gemv = [&](int64_t begin, int64_t end, float* out) {
          v.kernels->gemv_bf16(r.w, begin, end, placed.data(), row_length, m, out, rows);
        };
        gemv(1, rows, y.data());  // row 0 is not its to write
        check_gemv_rows(v.name + " gemv_bf16 " + format_name(f), y, x, dense, m, rows, padded_cols);
        check_rows_alone_match(v.name + " gemv_bf16 " + format_name(f), gemv, y, m, rows);
      }
    }
  }
  // The AVX-512 table has the bf16 GEMV wherever the CPU has AVX512_BF16.
  bool expected = false;
  for (Isa isa : supported_isas()) expected |= isa == Isa::avx512 && cpu_features().avx512bf16;
  CHECK(!expected || variants > 0, "no variant ran the bf16 GEMV");
}

// The int8-activation path end to end: every ISA within rounding of the scalar
// reference's result (same quantized activations, same exact integer sums).
TEST(int8_activation_matmul_agrees_across_variants) {
  const int64_t n = 9, k = 160, m = 6, group = 32;
  std::mt19937 gen(17);
  std::normal_distribution<float> normal;
  std::vector<float> w(n * k), x(m * k);
  for (float& v : w) v = normal(gen);
  for (float& v : x) v = normal(gen);
  std::vector<uint8_t> packed(static_cast<size_t>(n * packed_row_bytes(k, 8))), zeros(n * k / group);
  std::vector<float> scales(n * k / group), reference(m * n), y(m * n);
  AffineOptions options;
  options.bits = 8;
  options.group_size = group;
  QuantizedViews q;
  q.bits = 8;
  q.cols = k;
  q.group_size = group;
  q.packed = contiguous_view(packed.data(), DType::u8, {n, packed_row_bytes(k, 8)});
  q.scales = contiguous_view(scales.data(), DType::f32, {n, k / group});
  q.zero_points = contiguous_view(zeros.data(), DType::u8, {n, k / group});
  quantize_affine(contiguous_view(w.data(), DType::f32, {n, k}), options, TensorView{}, q.packed, q.scales, q.zero_points);
  set_active_isa(Isa::scalar);
  quantized_matmul(contiguous_view(x.data(), DType::f32, {m, k}), q, contiguous_view(reference.data(), DType::f32, {m, n}), 8);
  for (Isa isa : supported_isas()) {
    set_active_isa(isa);
    quantized_matmul(contiguous_view(x.data(), DType::f32, {m, k}), q, contiguous_view(y.data(), DType::f32, {m, n}), 8);
    for (int64_t i = 0; i < m * n; ++i)
      CHECK(std::fabs(y[i] - reference[i]) <= 1e-5f * (1.0f + std::fabs(reference[i])), isa_name(isa) << " [" << i << "]");
  }
  set_active_isa(best_isa());
}
