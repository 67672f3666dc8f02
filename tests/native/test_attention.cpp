// Attention without Python (runs under qemu-aarch64 and on devices): every tile
// operation of every variant against the scalar reference on odd sizes and
// edge values (-inf scores, fully masked rows), the bf16 pair kernels where
// the CPU has them, then forward, backward and decode end to end on every ISA
// against the scalar ISA's results (odd head dims, grouped-query heads, a fully
// masked row, fp32 / fp16 / bf16 / int8 caches, bf16 prefill), and the fp16
// product kernels (FMLAL) with fp16 forward, backward and decode against
// float64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_kernels.h"
#include "check.h"
#include "runtime/cpu_features.h"
#include "runtime/half.h"

using namespace pocketml;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct NamedKernels {
  std::string name;
  const AttentionKernels* kernels;
};

std::vector<NamedKernels> optimized_variants() {
  std::vector<NamedKernels> variants;
  for (Isa isa : supported_isas())
    if (isa != Isa::scalar) variants.push_back({isa_name(isa), &attention_tables().select(isa)});
  return variants;
}

std::vector<float> normal_values(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) bits[i] = fp32_to_fp16(x[i]);
  return bits;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) bits[i] = fp32_to_bf16(x[i]);
  return bits;
}

// |a - b| within rel * (|b| + 1e-6): equal infinities and zeros pass.
bool close(float a, float b, float rel) {
  if (a == b) return true;
  return std::fabs(a - b) <= rel * (std::fabs(b) + 1e-6f);
}

const AttentionKernels& reference() { return scalar::attention_kernels; }

}  // namespace

TEST(every_gemm_and_dot_product_variant_equals_the_reference) {
  const auto a = normal_values(16 * 80, 1), b = normal_values(80 * 40, 2), c0 = normal_values(16 * 40, 3);
  // The same products of absolute values bound each result's rounding error.
  std::vector<float> abs_a(a), abs_b(b), abs_c0(c0);
  for (auto* x : {&abs_a, &abs_b, &abs_c0})
    for (float& e : *x) e = std::fabs(e);
  auto within = [](float got, float expected, float magnitude) { return std::fabs(got - expected) <= 1e-5f * magnitude; };
  for (const auto& v : optimized_variants()) {
    for (int64_t M : {1, 5, 7, 13}) {
      for (int64_t N : {1, 3, 16, 19, 33}) {
        for (int64_t K : {1, 7, 70}) {  // 70: more than one reduction slice
          for (bool transposed : {false, true}) {  // A read by rows, or by columns (P^T in backward)
            const int64_t row_stride = transposed ? 1 : 80, col_stride = transposed ? 16 : 1;
            std::vector<float> expected(c0), got(c0), magnitude(abs_c0);
            reference().gemm_accumulate(M, N, K, a.data(), row_stride, col_stride, b.data(), 40, expected.data(), 40);
            reference().gemm_accumulate(M, N, K, abs_a.data(), row_stride, col_stride, abs_b.data(), 40, magnitude.data(), 40);
            v.kernels->gemm_accumulate(M, N, K, a.data(), row_stride, col_stride, b.data(), 40, got.data(), 40);
            for (size_t i = 0; i < got.size(); ++i)
              CHECK(within(got[i], expected[i], magnitude[i]), v.name << " gemm " << M << "x" << N << "x" << K << " at " << i
                                                               << ": " << got[i] << " vs " << expected[i]);
          }
        }
      }
    }
    for (int64_t M : {1, 3}) {
      for (int64_t N : {1, 5, 9}) {
        for (int64_t K : {1, 7, 33}) {
          std::vector<float> expected(2 * 16 * 9, 7.0f), got(expected), magnitude(expected);
          reference().dot_rows(M, N, K, a.data(), 80, b.data(), 40, expected.data(), 1, 16);  // c column-major
          reference().dot_rows(M, N, K, abs_a.data(), 80, abs_b.data(), 40, magnitude.data(), 1, 16);
          v.kernels->dot_rows(M, N, K, a.data(), 80, b.data(), 40, got.data(), 1, 16);
          for (size_t i = 0; i < got.size(); ++i)
            CHECK(within(got[i], expected[i], magnitude[i]), v.name << " dot_rows " << M << "x" << N << "x" << K << " at " << i);
        }
      }
    }
  }
}

// Scores with -inf entries, one row entirely -inf, and running maxima that
// are -inf (first block) or finite (later blocks).
TEST(every_online_softmax_variant_equals_the_reference) {
  for (const auto& v : optimized_variants()) {
    for (bool key_major : {true, false}) {
      for (int64_t rows : {1, 3, 4, 9}) {
        for (int64_t keys : {1, 5, 8, 13}) {
          auto scores = normal_values(rows * keys, static_cast<uint32_t>(rows * 31 + keys), 4.0f);
          for (size_t i = 0; i < scores.size(); i += 3) scores[i] = -kInf;
          const int64_t masked_row = rows - 1;
          for (int64_t j = 0; j < keys; ++j) scores[key_major ? j * rows + masked_row : masked_row * keys + j] = -kInf;
          for (bool first_block : {true, false}) {
            std::vector<float> row_max(rows), row_sum(rows), rescale(rows, -1.0f);
            for (int64_t r = 0; r < rows; ++r) {
              row_max[r] = first_block || r == masked_row ? -kInf : 0.5f * static_cast<float>(r);
              row_sum[r] = first_block || r == masked_row ? 0.0f : 1.5f;
            }
            std::vector<float> st_e(scores), st_g(scores), max_e(row_max), max_g(row_max), sum_e(row_sum),
                sum_g(row_sum), re_e(rescale), re_g(rescale);
            if (key_major) {
              reference().softmax_update(st_e.data(), keys, rows, max_e.data(), sum_e.data(), re_e.data());
              v.kernels->softmax_update(st_g.data(), keys, rows, max_g.data(), sum_g.data(), re_g.data());
            } else {
              reference().softmax_update_rows(st_e.data(), rows, keys, max_e.data(), sum_e.data(), re_e.data());
              v.kernels->softmax_update_rows(st_g.data(), rows, keys, max_g.data(), sum_g.data(), re_g.data());
            }
            const std::string what = v.name + (key_major ? " softmax_update " : " softmax_update_rows ") +
                                     std::to_string(rows) + " rows " + std::to_string(keys) + " keys";
            for (size_t i = 0; i < st_g.size(); ++i) CHECK(close(st_g[i], st_e[i], 1e-6f), what << " p at " << i);
            for (int64_t r = 0; r < rows; ++r) {
              CHECK(max_g[r] == max_e[r], what << " max of row " << r);
              CHECK(close(sum_g[r], sum_e[r], 1e-6f), what << " sum of row " << r << ": " << sum_g[r] << " vs " << sum_e[r]);
              CHECK(close(re_g[r], re_e[r], 1e-6f), what << " rescale of row " << r);
            }
            CHECK(sum_g[masked_row] == 0.0f, what << " a fully masked row sums to 0");
          }
        }
      }
    }
  }
}

TEST(every_rescale_exp_and_widening_variant_equals_the_reference) {
  std::mt19937 gen(4);
  for (const auto& v : optimized_variants()) {
    for (int64_t dim : {7, 16, 21}) {
      const int64_t rows = 5;
      auto acc = normal_values(rows * dim, 5);
      const std::vector<float> rescale = {1.0f, 0.25f, 0.0f, 1.0f, 3.0f};
      std::vector<float> expected(acc), got(acc);
      reference().scale_rows(expected.data(), rows, dim, rescale.data());
      v.kernels->scale_rows(got.data(), rows, dim, rescale.data());
      CHECK(expected == got, v.name << " scale_rows dim " << dim);

      auto st = normal_values(rows * dim, 6, 3.0f);
      st[0] = -kInf;
      st[1] = -200.0f;  // underflows to 0
      auto row_max = normal_values(rows, 7), log_sum = normal_values(rows, 9);
      row_max[4] = -3.0e38f;  // a finfo.min-masked row: its scores equal its max
      st[4] = st[4 + rows] = -3.0e38f;
      std::vector<float> st_e(st), st_g(st);
      reference().exp_minus_lse(st_e.data(), dim, rows, row_max.data(), log_sum.data());
      v.kernels->exp_minus_lse(st_g.data(), dim, rows, row_max.data(), log_sum.data());
      CHECK(st_e[4] == std::exp(-log_sum[4]), "reference exp_minus_lse subtracts the max first");
      for (size_t i = 0; i < st.size(); ++i) CHECK(close(st_g[i], st_e[i], 1e-6f), v.name << " exp_minus_lse at " << i);

      // Widening is exact: every variant gives the reference's bits.
      const int64_t stride = dim + 3;
      std::vector<uint16_t> half(rows * stride);
      for (auto& h : half) h = static_cast<uint16_t>(gen());
      std::vector<int8_t> bytes(rows * stride);
      for (auto& b : bytes) b = static_cast<int8_t>(gen());
      const auto scales = normal_values(rows * 2, 8);
      std::vector<float> wide_e(rows * (dim + 1)), wide_g(wide_e.size());
      reference().widen_f16_rows(half.data(), stride, rows, dim, wide_e.data(), dim + 1);
      v.kernels->widen_f16_rows(half.data(), stride, rows, dim, wide_g.data(), dim + 1);
      CHECK(std::memcmp(wide_e.data(), wide_g.data(), wide_e.size() * 4) == 0, v.name << " widen_f16_rows dim " << dim);
      reference().widen_bf16_rows(half.data(), stride, rows, dim, wide_e.data(), dim + 1);
      v.kernels->widen_bf16_rows(half.data(), stride, rows, dim, wide_g.data(), dim + 1);
      CHECK(std::memcmp(wide_e.data(), wide_g.data(), wide_e.size() * 4) == 0, v.name << " widen_bf16_rows dim " << dim);
      reference().widen_int8_rows(bytes.data(), stride, scales.data(), 2, rows, dim, wide_e.data(), dim + 1);
      v.kernels->widen_int8_rows(bytes.data(), stride, scales.data(), 2, rows, dim, wide_g.data(), dim + 1);
      CHECK(std::memcmp(wide_e.data(), wide_g.data(), wide_e.size() * 4) == 0, v.name << " widen_int8_rows dim " << dim);
    }
  }
}

// The direct decode kernels (K / V read in their cache type) against double
// sums over the exactly widened rows: every row count a few-row block can have
// (so every split into register blocks), key counts around the 16-key blocks,
// the 64-key int8 weight tiles and the 256-key decode tile, head dims around
// the vector blocks, strided rows and scales, fp16's largest values and int8's
// full range.
TEST(every_decode_kernel_equals_a_double_reference) {
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (const auto& v : optimized_variants()) {
    if (!v.kernels->decode_scores) continue;
    for (DType type : {DType::f32, DType::f16, DType::bf16, DType::i8}) {
      for (int64_t dim : {1, 17, 64, 80, 128, 200, 256}) {
        for (int64_t keys : {1, 15, 16, 33, 64, 65, 256}) {
          const int64_t stride = dim + 5, scale_stride = 2;
          auto values = normal_values(keys * stride, static_cast<uint32_t>(dim * 100 + keys), 2.0f);
          values[0] = 65504.0f;
          if (keys > 1) values[stride + dim - 1] = -65504.0f;
          std::vector<uint16_t> halves(values.size());
          std::vector<int8_t> bytes(values.size());
          for (size_t i = 0; i < values.size(); ++i) {
            halves[i] = type == DType::f16 ? fp32_to_fp16(values[i]) : fp32_to_bf16(values[i]);
            bytes[i] = static_cast<int8_t>(gen());
          }
          const auto scales = normal_values(keys * scale_stride, 12, 0.01f);
          const void* cache = type == DType::f32 ? static_cast<const void*>(values.data())
                              : type == DType::i8 ? static_cast<const void*>(bytes.data())
                                                  : static_cast<const void*>(halves.data());
          std::vector<float> wide(keys * dim);  // the exact fp32 value of every element (int8 times its scale)
          switch (type) {
            case DType::f16: reference().widen_f16_rows(halves.data(), stride, keys, dim, wide.data(), dim); break;
            case DType::bf16: reference().widen_bf16_rows(halves.data(), stride, keys, dim, wide.data(), dim); break;
            case DType::i8:
              reference().widen_int8_rows(bytes.data(), stride, scales.data(), scale_stride, keys, dim, wide.data(), dim);
              break;
            default:
              for (int64_t j = 0; j < keys; ++j) std::copy_n(values.data() + j * stride, dim, wide.data() + j * dim);
          }
          for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 15}) {
            const std::string what = v.name + " " + dtype_name(type) + " rows " + std::to_string(rows) + " keys " +
                                     std::to_string(keys) + " dim " + std::to_string(dim);
            const auto q = normal_values(rows * dim, 13, 0.1f);
            std::vector<float> scores(rows * keys, std::numeric_limits<float>::quiet_NaN());
            v.kernels->decode_scores(type, rows, keys, dim, q.data(), cache, stride, scales.data(), scale_stride,
                                     scores.data());
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t j = 0; j < keys; ++j) {
                double exact = 0.0, magnitude = 0.0;
                for (int64_t d = 0; d < dim; ++d) {
                  exact += static_cast<double>(q[r * dim + d]) * wide[j * dim + d];
                  magnitude += std::fabs(static_cast<double>(q[r * dim + d]) * wide[j * dim + d]);
                }
                CHECK(std::fabs(scores[r * keys + j] - exact) <= 1e-6 * magnitude,
                      what << " score " << r << "," << j << ": " << scores[r * keys + j] << " vs " << exact);
              }

            std::vector<float> p(rows * keys);
            for (float& x : p) x = unit(gen);
            const auto acc0 = normal_values(rows * dim, 14);
            std::vector<float> acc(acc0);
            v.kernels->decode_accumulate(type, rows, keys, dim, p.data(), cache, stride, scales.data(), scale_stride,
                                         acc.data());
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t d = 0; d < dim; ++d) {
                double exact = acc0[r * dim + d], magnitude = std::fabs(exact);
                for (int64_t j = 0; j < keys; ++j) {
                  exact += static_cast<double>(p[r * keys + j]) * wide[j * dim + d];
                  magnitude += std::fabs(static_cast<double>(p[r * keys + j]) * wide[j * dim + d]);
                }
                // A sum of `keys` rounded steps: its error bound grows with the key count.
                CHECK(std::fabs(acc[r * dim + d] - exact) <= 1e-6 * std::max<double>(1.0, keys / 64.0) * magnitude,
                      what << " acc " << r << "," << d << ": " << acc[r * dim + d] << " vs " << exact);
              }
          }
        }
      }
    }
  }
}

// The bf16 pair kernels, on the variants whose instructions this CPU has
// (AVX512-BF16, ARM FEAT_BF16): products of bf16 values against a double sum,
// and the pair interleaves bit for bit.
TEST(every_bf16_pair_variant_equals_a_double_product) {
  std::vector<NamedKernels> variants;
  for (const auto& v : optimized_variants())
    if (v.kernels->gemm_bf16_pairs && (cpu_features().avx512bf16 || cpu_features().neon_bf16)) variants.push_back(v);
  std::printf("    bf16 pair kernels on this CPU:");
  for (const auto& v : variants) std::printf(" %s", v.name.c_str());
  std::printf("\n");
  const auto a = to_bf16(normal_values(8 * 70, 31)), b = to_bf16(normal_values(33 * 40, 32));
  const auto c0 = normal_values(8 * 20, 33);
  for (const auto& v : variants) {
    for (int64_t M : {1, 5, 7}) {
      for (int64_t N : {1, 4, 13, 18}) {
        for (int64_t pairs : {1, 8, 33}) {
          std::vector<float> c(c0);
          v.kernels->gemm_bf16_pairs(M, N, pairs, a.data(), 70, 2, b.data(), 40, c.data(), 20);
          for (int64_t m = 0; m < 8; ++m) {
            for (int64_t n = 0; n < 20; ++n) {
              double expected = c0[m * 20 + n], magnitude = std::fabs(expected);
              for (int64_t p = 0; m < M && n < N && p < pairs; ++p) {
                for (int h = 0; h < 2; ++h) {
                  const double product = double(bf16_to_fp32(a[m * 70 + 2 * p + h])) * bf16_to_fp32(b[p * 40 + 2 * n + h]);
                  expected += product;
                  magnitude += std::fabs(product);
                }
              }
              CHECK(std::fabs(c[m * 20 + n] - expected) <= 1e-5 * magnitude,
                    v.name << " gemm_bf16_pairs " << M << "x" << N << "x" << pairs << " [" << m << ", " << n << "]");
            }
          }
        }
      }
    }
    for (int64_t rows : {1, 4, 5}) {
      for (int64_t cols : {3, 8, 13}) {
        auto x = normal_values(rows * 16, 34);
        x[0] = std::numeric_limits<float>::quiet_NaN();
        x[1] = kInf;
        x[2] = 1.00390625f;  // halfway between two bf16 values: rounds to even
        std::vector<uint16_t> got(((rows + 1) / 2) * 2 * cols, 7), expected(got.size(), 7);
        for (int64_t r = 0; r < rows; r += 2)
          for (int64_t c = 0; c < cols; ++c) {
            expected[r * cols + 2 * c] = fp32_to_bf16(x[r * 16 + c]);
            expected[r * cols + 2 * c + 1] = r + 1 < rows ? fp32_to_bf16(x[(r + 1) * 16 + c]) : 0;
          }
        v.kernels->pair_rows_f32_to_bf16(x.data(), 16, rows, cols, got.data());
        CHECK(got == expected, v.name << " pair_rows_f32_to_bf16 " << rows << "x" << cols);
        const auto xb = to_bf16(x);
        std::fill(got.begin(), got.end(), 7);
        v.kernels->pair_rows_bf16(xb.data(), 16, rows, cols, got.data());
        CHECK(got == expected, v.name << " pair_rows_bf16 " << rows << "x" << cols);
      }
    }
  }
}

// --- the drivers on every ISA: the same problem, the scalar ISA's answer ---

namespace {

struct Problem {
  int64_t batch = 1, q_heads = 4, kv_heads = 2, len_q = 7, len_k = 11, dim = 33;
};

// Runs f once per supported ISA (scalar first) and restores the best ISA.
template <class F>
void for_every_isa(F f) {
  for (Isa isa : supported_isas()) {
    set_active_isa(isa);
    f(isa);
  }
  set_active_isa(best_isa());
}

}  // namespace

TEST(forward_and_backward_agree_across_isas_with_gqa_odd_dims_and_a_masked_row) {
  for (int64_t dim : {33, 64}) {
    Problem p;
    p.dim = dim;
    const int64_t nq = p.batch * p.q_heads * p.len_q * p.dim, nk = p.batch * p.kv_heads * p.len_k * p.dim;
    const auto q = normal_values(nq, 11), k = normal_values(nk, 12), v = normal_values(nk, 13), dout = normal_values(nq, 14);
    // Boolean mask [B, Hq, Lq, Lk]: random, row 2 fully masked in every head.
    std::vector<uint8_t> mask(p.q_heads * p.len_q * p.len_k);
    std::mt19937 gen(15);
    for (auto& m : mask) m = gen() % 4 != 0;
    for (int64_t h = 0; h < p.q_heads; ++h)
      for (int64_t j = 0; j < p.len_k; ++j) mask[(h * p.len_q + 2) * p.len_k + j] = 0;
    TensorView mask_view = contiguous_view(mask.data(), DType::u8, {p.batch, p.q_heads, p.len_q, p.len_k}, false);
    AttentionBias bias;
    bias.mask = &mask_view;
    AttentionOptions options;
    options.scale = 1.0f / std::sqrt(static_cast<float>(dim));
    options.window_right = 0;  // causal as well
    std::vector<float> out_ref, lse_ref, dq_ref, dk_ref, dv_ref;
    for_every_isa([&](Isa isa) {
      std::vector<float> out(nq), lse(2 * p.batch * p.q_heads * p.len_q), dq(nq), dk(nk), dv(nk);
      auto view = [&](const std::vector<float>& x, int64_t heads, int64_t len) {
        return contiguous_view(const_cast<float*>(x.data()), DType::f32, {p.batch, heads, len, p.dim});
      };
      attention_forward(view(q, p.q_heads, p.len_q), view(k, p.kv_heads, p.len_k), view(v, p.kv_heads, p.len_k), bias,
                        options, view(out, p.q_heads, p.len_q),
                        contiguous_view(lse.data(), DType::f32, {p.batch, p.q_heads, p.len_q, 2}));
      attention_backward(view(q, p.q_heads, p.len_q), view(k, p.kv_heads, p.len_k), view(v, p.kv_heads, p.len_k), bias,
                         options, view(out, p.q_heads, p.len_q),
                         contiguous_view(lse.data(), DType::f32, {p.batch, p.q_heads, p.len_q, 2}),
                         view(dout, p.q_heads, p.len_q), view(dq, p.q_heads, p.len_q), view(dk, p.kv_heads, p.len_k),
                         view(dv, p.kv_heads, p.len_k));
      for (int64_t h = 0; h < p.q_heads; ++h) {
        CHECK(lse[2 * (h * p.len_q + 2) + 1] == kInf, isa_name(isa) << " lse of the masked row, head " << h);
        for (int64_t d = 0; d < p.dim; ++d)
          CHECK(out[(h * p.len_q + 2) * p.dim + d] == 0.0f && dq[(h * p.len_q + 2) * p.dim + d] == 0.0f,
                isa_name(isa) << " masked row output and gradient are zero");
      }
      if (isa == Isa::scalar) {
        out_ref = out, lse_ref = lse, dq_ref = dq, dk_ref = dk, dv_ref = dv;
        return;
      }
      const std::string what = std::string(isa_name(isa)) + " D " + std::to_string(dim);
      for (int64_t i = 0; i < nq; ++i) {
        CHECK(std::fabs(out[i] - out_ref[i]) <= 1e-5f * (1.0f + std::fabs(out_ref[i])), what << " out at " << i);
        CHECK(std::fabs(dq[i] - dq_ref[i]) <= 1e-4f * (1.0f + std::fabs(dq_ref[i])), what << " dq at " << i);
      }
      for (size_t i = 0; i < lse.size(); i += 2)  // the max alone may sit near 0, where relative error means little
        CHECK(close(lse[i] + lse[i + 1], lse_ref[i] + lse_ref[i + 1], 1e-5f), what << " lse of row " << i / 2);
      for (int64_t i = 0; i < nk; ++i) {
        CHECK(std::fabs(dk[i] - dk_ref[i]) <= 1e-4f * (1.0f + std::fabs(dk_ref[i])), what << " dk at " << i);
        CHECK(std::fabs(dv[i] - dv_ref[i]) <= 1e-4f * (1.0f + std::fabs(dv_ref[i])), what << " dv at " << i);
      }
    });
  }
}

TEST(decode_agrees_across_isas_for_every_cache_type_and_odd_dims) {
  for (int64_t dim : {19, 20}) {
    const int64_t q_heads = 6, kv_heads = 2, len_q = 2, max_len = 40, length = 37;
    const auto q = normal_values(q_heads * len_q * dim, 21), k = normal_values(kv_heads * max_len * dim, 22),
               v = normal_values(kv_heads * max_len * dim, 23);
    std::vector<uint16_t> k16(k.size()), v16(v.size()), kb16(k.size()), vb16(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k16[i] = fp32_to_fp16(k[i]), v16[i] = fp32_to_fp16(v[i]);
      kb16[i] = fp32_to_bf16(k[i]), vb16[i] = fp32_to_bf16(v[i]);
    }
    std::vector<int8_t> k8(k.size()), v8(v.size());
    std::vector<float> k_scale(kv_heads * max_len), v_scale(kv_heads * max_len);
    kv_quantize_int8(contiguous_view(const_cast<float*>(k.data()), DType::f32, {1, kv_heads, max_len, dim}, false),
                     contiguous_view(k8.data(), DType::i8, {1, kv_heads, max_len, dim}),
                     contiguous_view(k_scale.data(), DType::f32, {1, kv_heads, max_len}), 0);
    kv_quantize_int8(contiguous_view(const_cast<float*>(v.data()), DType::f32, {1, kv_heads, max_len, dim}, false),
                     contiguous_view(v8.data(), DType::i8, {1, kv_heads, max_len, dim}),
                     contiguous_view(v_scale.data(), DType::f32, {1, kv_heads, max_len}), 0);
    AttentionOptions options;
    options.scale = 0.3f;
    for (DType cache : {DType::f32, DType::f16, DType::bf16, DType::i8}) {
      auto pick = [&](const std::vector<float>& f32, const std::vector<uint16_t>& f16, const std::vector<uint16_t>& bf16,
                      const std::vector<int8_t>& i8) -> const void* {
        switch (cache) {
          case DType::f16: return f16.data();
          case DType::bf16: return bf16.data();
          case DType::i8: return i8.data();
          default: return f32.data();
        }
      };
      const void* k_data = pick(k, k16, kb16, k8);
      const void* v_data = pick(v, v16, vb16, v8);
      const TensorView ks = contiguous_view(k_scale.data(), DType::f32, {1, kv_heads, max_len}, false);
      const TensorView vs = contiguous_view(v_scale.data(), DType::f32, {1, kv_heads, max_len}, false);
      std::vector<float> reference;
      for_every_isa([&](Isa isa) {
        std::vector<float> out(q.size());
        attention_decode(contiguous_view(const_cast<float*>(q.data()), DType::f32, {1, q_heads, len_q, dim}, false),
                         contiguous_view(const_cast<void*>(k_data), cache, {1, kv_heads, max_len, dim}, false),
                         contiguous_view(const_cast<void*>(v_data), cache, {1, kv_heads, max_len, dim}, false),
                         cache == DType::i8 ? &ks : nullptr, cache == DType::i8 ? &vs : nullptr, length, options,
                         contiguous_view(out.data(), DType::f32, {1, q_heads, len_q, dim}));
        if (isa == Isa::scalar) {
          reference = out;
          return;
        }
        for (size_t i = 0; i < out.size(); ++i)
          CHECK(std::fabs(out[i] - reference[i]) <= 1e-5f * (1.0f + std::fabs(reference[i])),
                isa_name(isa) << " decode " << dtype_name(cache) << " D " << dim << " at " << i << ": " << out[i]
                              << " vs " << reference[i]);
      });
    }
  }
}

// bf16 prefill (enough query rows for the key-major path, where BFDOT /
// vdpbf16ps multiply bf16 pairs and P is rounded to bf16): within bf16's
// rounding of the scalar ISA's output.
TEST(bf16_forward_agrees_across_isas) {
  const int64_t q_heads = 4, kv_heads = 2, len_q = 20, len_k = 37, dim = 32;
  const auto q = to_bf16(normal_values(q_heads * len_q * dim, 41)), k = to_bf16(normal_values(kv_heads * len_k * dim, 42)),
             v = to_bf16(normal_values(kv_heads * len_k * dim, 43));
  AttentionOptions options;
  options.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  options.window_right = 0;
  options.bottom_right = true;
  std::vector<uint16_t> reference;
  for_every_isa([&](Isa isa) {
    std::vector<uint16_t> out(q.size());
    std::vector<float> lse(2 * q_heads * len_q);
    auto view = [&](const std::vector<uint16_t>& x, int64_t heads, int64_t len) {
      return contiguous_view(const_cast<uint16_t*>(x.data()), DType::bf16, {1, heads, len, dim});
    };
    attention_forward(view(q, q_heads, len_q), view(k, kv_heads, len_k), view(v, kv_heads, len_k), AttentionBias{},
                      options, view(out, q_heads, len_q), contiguous_view(lse.data(), DType::f32, {1, q_heads, len_q, 2}));
    if (isa == Isa::scalar) {
      reference = out;
      return;
    }
    for (size_t i = 0; i < out.size(); ++i) {
      const float got = bf16_to_fp32(out[i]), expected = bf16_to_fp32(reference[i]);
      CHECK(std::fabs(got - expected) <= 2e-2f * (0.1f + std::fabs(expected)),
            isa_name(isa) << " bf16 forward at " << i << ": " << got << " vs " << expected);
    }
  });
}

// --- fp16 products (ARM FEAT_FHM's FMLAL / FMLAL2) ---

namespace {

std::vector<NamedKernels> f16_product_variants() {
  std::vector<NamedKernels> variants;
  for (const auto& v : optimized_variants())
    if (v.kernels->gemm_f16) variants.push_back(v);
  return variants;
}

std::vector<float> widen(const std::vector<uint16_t>& bits) {
  std::vector<float> x(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) x[i] = fp16_to_fp32(bits[i]);
  return x;
}

}  // namespace

// The NEON table carries gemm_f16 exactly where the CPU has FEAT_FHM (under
// qemu: -cpu max yes, cortex-a53 no); no other table does.
TEST(fp16_products_are_chosen_exactly_where_the_cpu_has_fhm) {
  for (Isa isa : supported_isas()) {
    const bool expected = isa == Isa::neon && cpu_features().neon_fhm;
    CHECK((attention_tables().select(isa).gemm_f16 != nullptr) == expected, isa_name(isa) << " gemm_f16");
    CHECK((attention_tables().select(isa).dot_rows_f16 != nullptr) == expected, isa_name(isa) << " dot_rows_f16");
  }
  std::printf("    fp16 product kernels (FMLAL) on this CPU:%s\n", f16_product_variants().empty() ? " none" : " neon");
}

// FMLAL adds an exact fp16 x fp16 product to an fp32 lane with one rounding,
// and the kernel sums over k in order, as the scalar reference does on the
// widened values: the results must be equal bit for bit, and within K
// roundings of a float64 sum. Odd shapes cover the 6 x 16 block's row and
// column remainders, the half-register (4-column) load and the reduction
// slices; edge values: fp16 subnormals (which FMLAL must not flush), +-65504,
// -0.
TEST(every_fp16_product_variant_equals_the_reference_and_a_double_sum) {
  const int64_t lda = 300, ldb = 40, ldc = 40;
  auto a = to_f16(normal_values(16 * lda, 51)), b = to_f16(normal_values(lda * ldb, 52));
  const uint16_t edges[] = {0x0001, 0x83FF, 0x0200, 0x7BFF, 0xFBFF, 0x8000, 0x0400};
  for (size_t i = 0; i < a.size(); i += 37) a[i] = edges[(i / 37) % 7];
  for (size_t i = 0; i < b.size(); i += 41) b[i] = edges[(i / 41) % 7];
  const auto a32 = widen(a), b32 = widen(b);
  const auto c0 = normal_values(16 * ldc, 53);
  for (const auto& v : f16_product_variants()) {
    for (int64_t M : {1, 5, 7, 13}) {
      for (int64_t N : {1, 3, 4, 8, 12, 19, 33}) {
        for (int64_t K : {1, 7, 130, 300}) {  // 130, 300: more than one reduction slice
          for (bool transposed : {false, true}) {
            const int64_t row_stride = transposed ? 1 : lda, col_stride = transposed ? 16 : 1;
            std::vector<float> expected(c0), got(c0);
            reference().gemm_accumulate(M, N, K, a32.data(), row_stride, col_stride, b32.data(), ldb, expected.data(), ldc);
            v.kernels->gemm_f16(M, N, K, a.data(), row_stride, col_stride, b.data(), ldb, got.data(), ldc);
            const std::string what = v.name + " gemm_f16 " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                                     std::to_string(K) + (transposed ? " (A by columns)" : "");
            CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0, what << " differs from the reference");
            for (int64_t m = 0; m < 16; ++m) {
              for (int64_t n = 0; n < ldc; ++n) {
                double exact = c0[m * ldc + n], magnitude = std::fabs(exact);
                for (int64_t k = 0; m < M && n < N && k < K; ++k) {
                  const double product = double(a32[m * row_stride + k * col_stride]) * b32[k * ldb + n];
                  exact += product;
                  magnitude += std::fabs(product);
                }
                const double bound = (K + 1) * std::ldexp(1.0, -24) * magnitude;
                CHECK(std::fabs(got[m * ldc + n] - exact) <= bound, what << " [" << m << ", " << n << "]: "
                                                                         << got[m * ldc + n] << " vs " << exact);
              }
            }
          }
        }
      }
    }
    // Decode's row dot products sum in vector lanes: within 2 (K + 1) roundings
    // of the reference, K + 1 of the double sum.
    for (int64_t M : {1, 3}) {
      for (int64_t N : {1, 4, 5, 9}) {
        for (int64_t K : {1, 4, 7, 8, 33, 300}) {
          std::vector<float> expected(2 * 16 * 9, 7.0f), got(expected);
          reference().dot_rows(M, N, K, a32.data(), lda, b32.data(), ldb, expected.data(), 1, 16);  // c column-major
          v.kernels->dot_rows_f16(M, N, K, a.data(), lda, b.data(), ldb, got.data(), 1, 16);
          for (int64_t m = 0; m < M; ++m) {
            for (int64_t n = 0; n < N; ++n) {
              double exact = 0.0, magnitude = 0.0;
              for (int64_t k = 0; k < K; ++k) {
                const double product = double(a32[m * lda + k]) * b32[n * ldb + k];
                exact += product;
                magnitude += std::fabs(product);
              }
              const float g = got[m + n * 16], e = expected[m + n * 16];
              const double u = std::ldexp(1.0, -24);
              CHECK(std::fabs(g - exact) <= (K + 1) * u * magnitude && std::fabs(g - e) <= 2 * (K + 1) * u * magnitude,
                    v.name << " dot_rows_f16 " << M << "x" << N << "x" << K << " [" << m << ", " << n << "]: " << g
                           << " vs " << e << " (float64 " << exact << ")");
            }
          }
          for (size_t i = 0; i < got.size(); ++i)
            if (i % 16 >= static_cast<size_t>(M) || i / 16 >= static_cast<size_t>(N))
              CHECK(got[i] == 7.0f, v.name << " dot_rows_f16 wrote outside C at " << i);
        }
      }
    }
    // Every pair of special values in a single product, against the widened
    // product: infinities, NaN (any NaN), subnormals both ways.
    const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x03FF, 0x8400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x7E00};
    for (uint16_t x : specials) {
      std::vector<uint16_t> row(8, x);
      for (uint16_t y : specials) {
        std::vector<uint16_t> col(8, y);
        float c[8] = {}, expected = 0.0f + fp16_to_fp32(x) * fp16_to_fp32(y);
        v.kernels->gemm_f16(1, 8, 1, row.data(), 1, 1, col.data(), 8, c, 8);
        for (float got : c)
          CHECK(std::isnan(expected) ? std::isnan(got) : got == expected,
                v.name << " " << std::hex << x << " x " << y << std::dec << ": " << got << " vs " << expected);
      }
    }
  }
}

namespace {

// Attention and its gradients in float64 on the fp16 inputs' exact values:
// q, dout [Hq][Lq][D], k, v [Hkv][Lk][D], causal aligned to the bottom right.
struct DoubleAttention {
  std::vector<double> out, dq, dk, dv;
};

DoubleAttention double_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                 const std::vector<float>& dout, int64_t q_heads, int64_t kv_heads, int64_t len_q,
                                 int64_t len_k, int64_t dim, double scale) {
  DoubleAttention r{std::vector<double>(q.size()), std::vector<double>(q.size()), std::vector<double>(k.size()),
                    std::vector<double>(k.size())};
  std::vector<double> p(len_k), dp(len_k);
  for (int64_t h = 0; h < q_heads; ++h) {
    const int64_t kh = h / (q_heads / kv_heads);
    for (int64_t i = 0; i < len_q; ++i) {
      const float* qi = &q[(h * len_q + i) * dim];
      const float* doi = &dout[(h * len_q + i) * dim];
      const int64_t keys = std::min(len_k, i + len_k - len_q + 1);
      double max = -kInf, sum = 0.0;
      for (int64_t j = 0; j < keys; ++j) {
        double s = 0.0;
        for (int64_t d = 0; d < dim; ++d) s += double(qi[d]) * k[(kh * len_k + j) * dim + d];
        p[j] = scale * s;
        max = std::max(max, p[j]);
      }
      for (int64_t j = 0; j < keys; ++j) sum += p[j] = std::exp(p[j] - max);
      double* oi = &r.out[(h * len_q + i) * dim];
      for (int64_t j = 0; j < keys; ++j) {
        p[j] /= sum;
        for (int64_t d = 0; d < dim; ++d) oi[d] += p[j] * v[(kh * len_k + j) * dim + d];
      }
      double delta = 0.0;
      for (int64_t d = 0; d < dim; ++d) delta += double(doi[d]) * oi[d];
      for (int64_t j = 0; j < keys; ++j) {
        double dpj = 0.0;
        for (int64_t d = 0; d < dim; ++d) dpj += double(doi[d]) * v[(kh * len_k + j) * dim + d];
        const double ds = p[j] * (dpj - delta);
        for (int64_t d = 0; d < dim; ++d) {
          r.dq[(h * len_q + i) * dim + d] += scale * ds * k[(kh * len_k + j) * dim + d];
          r.dk[(kh * len_k + j) * dim + d] += scale * ds * qi[d];
          r.dv[(kh * len_k + j) * dim + d] += p[j] * doi[d];
        }
      }
    }
  }
  return r;
}

double max_error(const std::vector<uint16_t>& got, const std::vector<double>& exact) {
  double e = 0.0;
  for (size_t i = 0; i < got.size(); ++i) e = std::max(e, std::fabs(fp16_to_fp32(got[i]) - exact[i]));
  return e;
}

}  // namespace

// fp16 forward and backward on every ISA against float64, FlashAttention's
// rule: each variant's largest error is at most twice the scalar ISA's (which
// widens everything to fp32), plus 1e-5. On a CPU with FEAT_FHM the NEON ISA
// takes the FMLAL path (P rounded to fp16, as on GPUs). 75 query rows: one
// block that uses the key-major GEMMs and one of 11 rows that uses row dot
// products; 70 keys: a whole tile and a partial one; causal from the bottom
// right, so the first 5 rows see no key (zero output and gradient); D 33 and
// 64; grouped heads; a zero query row (uniform weights), fp16 subnormals and
// -8 in V.
TEST(fp16_forward_and_backward_are_as_close_to_float64_as_the_scalar_isa) {
  const int64_t q_heads = 4, kv_heads = 2, len_q = 75, len_k = 70;
  for (int64_t dim : {33, 64}) {
    const int64_t nq = q_heads * len_q * dim, nk = kv_heads * len_k * dim;
    auto q = to_f16(normal_values(nq, 61)), k = to_f16(normal_values(nk, 62)), v = to_f16(normal_values(nk, 63)),
         dout = to_f16(normal_values(nq, 64));
    std::fill(q.begin() + 20 * dim, q.begin() + 21 * dim, 0);
    for (int64_t i = 0; i < nk; i += 29) v[i] = (i / 29) % 2 ? 0x0003 : 0xC800;  // a subnormal, -8
    const auto q32 = widen(q), k32 = widen(k), v32 = widen(v), dout32 = widen(dout);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    const DoubleAttention exact = double_attention(q32, k32, v32, dout32, q_heads, kv_heads, len_q, len_k, dim, scale);
    AttentionOptions options;
    options.scale = static_cast<float>(scale);
    options.window_right = 0;
    options.bottom_right = true;
    double scalar_error[4] = {};
    for_every_isa([&](Isa isa) {
      std::vector<uint16_t> out(nq), dq(nq), dk(nk), dv(nk);
      std::vector<float> lse(2 * q_heads * len_q);
      auto view = [&](const std::vector<uint16_t>& x, int64_t heads, int64_t len) {
        return contiguous_view(const_cast<uint16_t*>(x.data()), DType::f16, {1, heads, len, dim});
      };
      const TensorView lse_view = contiguous_view(lse.data(), DType::f32, {1, q_heads, len_q, 2});
      attention_forward(view(q, q_heads, len_q), view(k, kv_heads, len_k), view(v, kv_heads, len_k), AttentionBias{},
                        options, view(out, q_heads, len_q), lse_view);
      attention_backward(view(q, q_heads, len_q), view(k, kv_heads, len_k), view(v, kv_heads, len_k), AttentionBias{},
                         options, view(out, q_heads, len_q), lse_view, view(dout, q_heads, len_q),
                         view(dq, q_heads, len_q), view(dk, kv_heads, len_k), view(dv, kv_heads, len_k));
      const double error[4] = {max_error(out, exact.out), max_error(dq, exact.dq), max_error(dk, exact.dk),
                               max_error(dv, exact.dv)};
      const char* names[4] = {"out", "dq", "dk", "dv"};
      for (int64_t i = 0; i < 5 * dim; ++i)
        CHECK(out[i] == 0 && dq[i] == 0, isa_name(isa) << " a row that sees no key has zero output and gradient");
      const bool fmlal = attention_tables().select(isa).gemm_f16 != nullptr;
      std::printf("    fp16 D %lld %s%s: max error vs float64 out %.2e dq %.2e dk %.2e dv %.2e\n",
                  static_cast<long long>(dim), isa_name(isa), fmlal ? " (FMLAL)" : "", error[0], error[1], error[2],
                  error[3]);
      for (int t = 0; t < 4; ++t) {
        if (isa == Isa::scalar) {
          scalar_error[t] = error[t];
          continue;
        }
        CHECK(error[t] <= 2.0 * scalar_error[t] + 1e-5, isa_name(isa) << " fp16 D " << dim << " " << names[t] << ": error "
                                                                      << error[t] << ", scalar ISA " << scalar_error[t]);
      }
    });
  }
}

// Decode with fp16 queries against an fp16 cache (on FEAT_FHM: FMLAL row dot
// products and P V), every ISA against float64 with FlashAttention's rule as
// above: 600 cached positions (split into chunks that are merged), 6 query
// rows per KV head, an odd and an even head dimension.
TEST(fp16_decode_is_as_close_to_float64_as_the_scalar_isa) {
  const int64_t q_heads = 6, kv_heads = 2, len_q = 2, length = 600, max_len = 610;
  for (int64_t dim : {19, 64}) {
    const auto q = to_f16(normal_values(q_heads * len_q * dim, 71));
    const auto k = to_f16(normal_values(kv_heads * length * dim, 72)), v = to_f16(normal_values(kv_heads * length * dim, 73));
    std::vector<uint16_t> k_cache(kv_heads * max_len * dim, 0x7E00), v_cache(k_cache);  // NaN past the length
    for (int64_t h = 0; h < kv_heads; ++h) {
      std::copy_n(k.begin() + h * length * dim, length * dim, k_cache.begin() + h * max_len * dim);
      std::copy_n(v.begin() + h * length * dim, length * dim, v_cache.begin() + h * max_len * dim);
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    const std::vector<float> no_grad(q.size(), 0.0f);
    const DoubleAttention exact =
        double_attention(widen(q), widen(k), widen(v), no_grad, q_heads, kv_heads, len_q, length, dim, scale);
    AttentionOptions options;
    options.scale = static_cast<float>(scale);
    options.window_right = 0;  // the two new queries are causal among themselves
    double scalar_error = 0.0;
    for_every_isa([&](Isa isa) {
      std::vector<uint16_t> out(q.size());
      attention_decode(contiguous_view(const_cast<uint16_t*>(q.data()), DType::f16, {1, q_heads, len_q, dim}, false),
                       contiguous_view(k_cache.data(), DType::f16, {1, kv_heads, max_len, dim}, false),
                       contiguous_view(v_cache.data(), DType::f16, {1, kv_heads, max_len, dim}, false), nullptr, nullptr,
                       length, options, contiguous_view(out.data(), DType::f16, {1, q_heads, len_q, dim}));
      const double error = max_error(out, exact.out);
      const bool fmlal = attention_tables().select(isa).dot_rows_f16 != nullptr;
      std::printf("    fp16 decode D %lld %s%s: max error vs float64 %.2e\n", static_cast<long long>(dim), isa_name(isa),
                  fmlal ? " (FMLAL)" : "", error);
      if (isa == Isa::scalar) {
        scalar_error = error;
        return;
      }
      CHECK(error <= 2.0 * scalar_error + 1e-5,
            isa_name(isa) << " fp16 decode D " << dim << ": error " << error << ", scalar ISA " << scalar_error);
    });
  }
}

// bf16 backward (S, dP and dQ from bf16 pairs where the CPU has them, dS rounded
// to bf16): every ISA's gradients within bf16 rounding of the scalar ISA's, with
// grouped-query heads, an odd key count (a zero-padded last pair) and a causal mask.
TEST(bf16_backward_agrees_across_isas) {
  const int64_t q_heads = 4, kv_heads = 2, len_q = 20, len_k = 37, dim = 32;
  const auto q = to_bf16(normal_values(q_heads * len_q * dim, 51)), k = to_bf16(normal_values(kv_heads * len_k * dim, 52)),
             v = to_bf16(normal_values(kv_heads * len_k * dim, 53)), d_out = to_bf16(normal_values(q.size(), 54));
  AttentionOptions options;
  options.scale = 1.0f / std::sqrt(static_cast<float>(dim));
  options.window_right = 0;
  options.bottom_right = true;
  auto view = [&](const std::vector<uint16_t>& x, int64_t heads, int64_t len) {
    return contiguous_view(const_cast<uint16_t*>(x.data()), DType::bf16, {1, heads, len, dim});
  };
  std::vector<uint16_t> reference[3];
  for_every_isa([&](Isa isa) {
    std::vector<uint16_t> out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
    std::vector<float> lse(2 * q_heads * len_q);
    const TensorView lse_view = contiguous_view(lse.data(), DType::f32, {1, q_heads, len_q, 2});
    attention_forward(view(q, q_heads, len_q), view(k, kv_heads, len_k), view(v, kv_heads, len_k), AttentionBias{},
                      options, view(out, q_heads, len_q), lse_view);
    attention_backward(view(q, q_heads, len_q), view(k, kv_heads, len_k), view(v, kv_heads, len_k), AttentionBias{},
                       options, view(out, q_heads, len_q), lse_view, view(d_out, q_heads, len_q),
                       view(dq, q_heads, len_q), view(dk, kv_heads, len_k), view(dv, kv_heads, len_k));
    const std::vector<uint16_t>* grads[3] = {&dq, &dk, &dv};
    if (isa == Isa::scalar) {
      for (int i = 0; i < 3; ++i) reference[i] = *grads[i];
      return;
    }
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      float largest = 0.0f;
      for (uint16_t x : reference[i]) largest = std::max(largest, std::fabs(bf16_to_fp32(x)));
      for (size_t e = 0; e < reference[i].size(); ++e) {
        const float got = bf16_to_fp32((*grads[i])[e]), expected = bf16_to_fp32(reference[i][e]);
        CHECK(std::fabs(got - expected) <= 2e-2f * (std::fabs(expected) + 0.1f * largest),
              isa_name(isa) << " bf16 " << names[i] << " at " << e << ": " << got << " vs " << expected);
      }
    }
  });
}
