// Dequantize and quantized matmul: argument checks, blocking and threading.
//
// Both decode packed rows into fp32 tiles with the active variant's decode_row
// and never materialise the whole fp32 weight. The matmul splits N into blocks
// of kRowsPerBlock weight rows and M into blocks of at most kMaxRowsPerXBlock
// activation rows; each task decodes its weight rows kChunkCodes columns at a
// time into a tile that stays in L1/L2 and multiplies every activation row of
// its block against it. For M <= kMaxRowsPerXBlock there is one block over M,
// so the packed weights stream from memory exactly once. For M <= kMaxGemvRows
// (decode) a variant's fused GEMV, when it has one, decodes in registers and
// skips the tile.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "convert/convert.h"
#include "quant/quant.h"
#include "quant/quant_kernels.h"
#include "quant/weight_rows.h"
#include "runtime/aligned_buffer.h"
#include "runtime/error.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

constexpr int64_t kRowsPerBlock = 16;        // weight rows per task: 16 x 512 fp32 = a 32 KiB tile
constexpr int64_t kChunkCodes = 512;         // columns decoded per tile
constexpr int64_t kMaxRowsPerXBlock = 128;   // x rows per task: 128 x 512 fp32 = 256 KiB, in L2
constexpr int64_t kGemvMinRowsPerTask = 32;  // 32 rows of 4096 4-bit codes = 64 KiB streamed per task
constexpr int64_t kGemvTasksPerThread = 4;
// Below these many packed bytes a GEMV runs on the calling thread: waking the
// workers costs more than they save (2 threads, this VM: ~40 us per call against
// ~25 us for a 1 MiB GEMV alone; inside keep_warm(), where workers spin, a few us).
constexpr int64_t kGemvMinParallelBytes = int64_t(1) << 20, kGemvMinParallelBytesWarm = int64_t(64) << 10;

// Rows per task of the fused GEMVs: each thread streams a few long, contiguous
// row ranges, which the hardware prefetchers follow, instead of hopping between
// short ones; a few per thread so that a worker woken late still finds work.
int64_t gemv_rows_per_task(const PackedWeights& w) {
  const int64_t n = w.rows;
  const int64_t min_parallel = ThreadPool::global().warm_scopes() > 0 ? kGemvMinParallelBytesWarm : kGemvMinParallelBytes;
  if (n * w.row_bytes < min_parallel) return n;
  const int64_t tasks = kGemvTasksPerThread * ThreadPool::global().num_threads();
  return std::max(kGemvMinRowsPerTask, ((n + tasks - 1) / tasks + 7) / 8 * 8);
}

// The fp32 copy of a float matrix [m, cols], padded with zeros to [rows,
// padded_cols] (rows >= m: the fused GEMVs read whole blocks of activation rows).
AlignedBuffer<float> widened_rows(const TensorView& src, int64_t m, int64_t rows, int64_t cols, int64_t padded_cols) {
  AlignedBuffer<float> dst(static_cast<size_t>(rows * padded_cols));
  parallel_for(m, std::max<int64_t>(1, (int64_t(1) << 15) / padded_cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = dst.data() + r * padded_cols;
      const char* in = static_cast<const char*>(src.data) + r * cols * dtype_size(src.dtype);
      TensorView from = contiguous_view(const_cast<char*>(in), src.dtype, {cols}, false);
      TensorView to = contiguous_view(row, DType::f32, {cols});
      convert(from, to);
      std::fill(row + cols, row + padded_cols, 0.0f);
    }
  });
  std::fill(dst.data() + m * padded_cols, dst.data() + rows * padded_cols, 0.0f);
  return dst;
}

struct WeightsWithLut {
  std::vector<float> lut;
  PackedWeights w;
  explicit WeightsWithLut(const QuantizedViews& q) : lut(static_cast<size_t>(lut_entries(q))) {
    w = make_packed_weights(q, lut.data());
  }
};

// out32 [m, n] = x32 [m, padded_cols] @ W^T through decoded tiles (see the top).
void tiled_matmul(const QuantKernels& kernels, const PackedWeights& w, const float* x32, int64_t m, int64_t padded_cols,
                  float* out32) {
  const int64_t n = w.rows;
  std::fill(out32, out32 + m * n, 0.0f);
  const int64_t x_blocks = (m + kMaxRowsPerXBlock - 1) / kMaxRowsPerXBlock;
  const int64_t x_rows_per_block = (m + x_blocks - 1) / x_blocks;
  const int64_t w_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  // Tasks run weight block by weight block so that threads share an x block in L3.
  parallel_for(w_blocks * x_blocks, 1, [&](int64_t begin, int64_t end) {
    AlignedBuffer<float> tile(static_cast<size_t>(kRowsPerBlock * kChunkCodes));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = (task / x_blocks) * kRowsPerBlock, n1 = std::min(n, n0 + kRowsPerBlock);
      const int64_t m0 = (task % x_blocks) * x_rows_per_block, m1 = std::min(m, m0 + x_rows_per_block);
      for (int64_t k0 = 0; k0 < padded_cols; k0 += kChunkCodes) {
        const int64_t k1 = std::min(padded_cols, k0 + kChunkCodes);
        for (int64_t r = n0; r < n1; ++r)
          kernels.decode_row(w, r, k0 / kCodesPerChunk, k1 / kCodesPerChunk, tile.data() + (r - n0) * kChunkCodes);
        for (int64_t i = m0; i < m1; i += kDotTileRows) {
          for (int64_t j = n0; j < n1; j += kDotTileRows) {
            kernels.dot_tile(x32 + i * padded_cols + k0, padded_cols, static_cast<int>(std::min<int64_t>(kDotTileRows, m1 - i)),
                             tile.data() + (j - n0) * kChunkCodes, kChunkCodes,
                             static_cast<int>(std::min<int64_t>(kDotTileRows, n1 - j)), k1 - k0, out32 + i * n + j, n);
          }
        }
      }
    }
  });
}

// The kernels of the int8 path, falling back to the reference where a variant lacks them.
const QuantKernels& int8_kernels() {
  const QuantKernels& active = quant_tables().active();
  return active.dot_int8 != nullptr ? active : *quant_tables().scalar;
}

// The activations of the int8 path (see quantized_matmul's act_bits = 8 in
// quant.h): one scale per row, int8 codes in the order a kernel reads them
// (int8_gemv_position for `layout_bits`; 8 is column order), and their sums per
// group of `group` columns.
struct Int8Activations {
  int64_t row_length, padded_groups;  // the strides of codes and group_sums
  std::vector<float> row_scale;
  AlignedBuffer<int8_t> codes;
  AlignedBuffer<float> group_sums;

  // Rows [m, rows) are zeros; a row holds `row_length` codes.
  Int8Activations(const float* x32, int64_t m, int64_t rows, int64_t padded_cols, int64_t group, int64_t row_length,
                  int layout_bits)
      : row_length(row_length),
        padded_groups((padded_cols / group + kCodesPerChunk - 1) / kCodesPerChunk * kCodesPerChunk),
        row_scale(static_cast<size_t>(rows), 1.0f),
        codes(static_cast<size_t>(rows * row_length)),
        group_sums(static_cast<size_t>(rows * padded_groups)) {
    std::fill(codes.data(), codes.data() + rows * row_length, int8_t(0));
    std::fill(group_sums.data(), group_sums.data() + rows * padded_groups, 0.0f);
    parallel_for(m, 16, [&](int64_t begin, int64_t end) {
      std::vector<int8_t> scratch(layout_bits == 8 ? 0 : static_cast<size_t>(padded_cols));
      for (int64_t i = begin; i < end; ++i) {
        const float* row = x32 + i * padded_cols;
        // max |x| on the bit patterns, whose integer order is that of the magnitudes
        // (a NaN's is above infinity's), in a loop the compiler vectorises.
        int32_t max_bits = 0;  // sign bits cleared: the signed order is the unsigned one
        for (int64_t k = 0; k < padded_cols; ++k) {
          int32_t bits;
          std::memcpy(&bits, row + k, sizeof bits);
          bits &= 0x7FFFFFFF;
          max_bits = bits > max_bits ? bits : max_bits;
        }
        float max_abs;
        std::memcpy(&max_abs, &max_bits, sizeof max_abs);
        // A NaN or infinity has no int8 code: its row's codes stay 0 and its
        // results become NaN.
        if (max_bits >= 0x7F800000) {
          row_scale[i] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        // The floor keeps x / scale finite for rows of tiny subnormals.
        const float scale = std::max(max_abs / 127.0f, std::numeric_limits<float>::min());
        row_scale[i] = scale;
        // Rounded in column order (a loop the compiler vectorises), then, in
        // another layout, moved to their places in runs of kRun columns, which
        // stay together in every layout.
        int8_t* q = codes.data() + i * row_length;
        int8_t* natural = layout_bits == 8 ? q : scratch.data();
        const int64_t cols = padded_cols;  // a local: stores through int8_t* may alias the captured one
        for (int64_t k = 0; k < cols; ++k) {
          // |x / scale| <= 127 (1 + 2^-22): rounding to nearest even (round_half_even's
          // addition) needs no clamp to stay in [-127, 127].
          natural[k] = static_cast<int8_t>(static_cast<int32_t>((row[k] / scale + 0x1.8p23f) - 0x1.8p23f));
        }
        if (natural != q)
          for (int64_t run = 0; run < padded_cols; run += kRun)
            std::memcpy(q + int8_gemv_position(layout_bits, run), natural + run, kRun);
        float* sums = group_sums.data() + i * padded_groups;
        for (int64_t k0 = 0; k0 < padded_cols; k0 += group) {
          int32_t sum = 0;
          for (int64_t k = k0; k < k0 + group; ++k) sum += natural[k];
          sums[k0 / group] = static_cast<float>(sum);
        }
      }
    });
  }
  static constexpr int kRun = 16;
};

// Columns per group of the int8 path: a group that is not a whole number of
// chunks is the whole (padded) row.
int64_t int8_group_columns(const PackedWeights& w, int64_t padded_cols) {
  return w.group_size % kCodesPerChunk == 0 ? w.group_size : padded_cols;
}

// The int8 path for few rows: the fused GEMV, tasks as in the fp32 one.
void int8_activation_gemv(const QuantKernels& kernels, const PackedWeights& w, const float* x32, int64_t m,
                          int64_t padded_cols, float* out32) {
  const int64_t block_codes = int8_gemv_block_codes(w.bits);
  const int64_t row_length = (padded_cols + block_codes - 1) / block_codes * block_codes;
  const Int8Activations x(x32, m, gemv_padded_rows(static_cast<int>(m)), padded_cols,
                          int8_group_columns(w, padded_cols), row_length, w.bits);
  const int64_t n = w.rows;
  parallel_for(n, gemv_rows_per_task(w), [&](int64_t begin, int64_t end) {
    kernels.gemv_int8(w, begin, end, x.codes.data(), x.row_length, x.group_sums.data(), x.padded_groups,
                      x.row_scale.data(), static_cast<int>(m), out32, n);
  });
}

// Whether every zero point of the row is below 16, so that code - zero of 4-bit
// codes lies in the bf16 GEMV's table.
bool zero_points_fit_bf16_table(const PackedWeights& w, int64_t row) {
  if (w.zero_points == nullptr) return true;
  const int64_t groups = w.groups_per_row();
  uint8_t bits = 0;
  for (const uint8_t* z = w.zero_points + row * groups; z < w.zero_points + (row + 1) * groups; ++z) bits |= *z;
  return bits < 16;
}

// vdpbf16ps reads a subnormal bf16 as zero and flushes a partial sum below
// 2^-126 to zero (tiny activations of 1e-37 gave 24% errors). With every
// nonzero |x| at least 2^-110, each product and partial sum is zero or a
// multiple of 2^-117 (x has 8 significant bits, code - zero is an integer):
// nothing reaches the flush. Activations holding a smaller one take the fp32
// GEMV, which keeps them.
bool holds_bf16_below_exact_range(const TensorView& x) {
  constexpr uint16_t kSmallestExponent = 127 - 110;  // of 2^-110, in bf16's biased exponent field
  const uint16_t* bits = x.ptr<uint16_t>();
  const int64_t count = x.shape[0] * x.shape[1];
  bool found = false;
  for (int64_t i = 0; i < count; ++i) found |= (bits[i] >> 7 & 0xFF) < kSmallestExponent && (bits[i] & 0x7FFF) != 0;
  return found;
}

// The GEMVs that scale per group (8-bit codes with fp32 activations, the bf16
// GEMV) sum x * (code - zero) over a group before multiplying by its scale: a
// sum up to 2^bits times the group's length times max|x|, larger than any
// product of x and a decoded weight. Activations large enough to overflow it
// (|x| near 1e35 for 4-bit groups of 64) take the tiled path, which multiplies
// decoded weights, as the float64 reference does (AVX-512 gave inf and NaN for
// finite results). Non-finite x make NaN or inf on every path alike.
bool group_sums_could_overflow(const PackedWeights& w, const TensorView& x) {
  if (w.kind != QuantKind::affine) return false;  // LUT GEMVs read the table's final values
  const int64_t count = x.shape[0] * x.shape[1];
  float largest = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    const float value = load_scale(x.data, x.dtype, i);  // widens any fp32 / fp16 / bf16 element, not only scales
    if (std::isfinite(value)) largest = std::max(largest, std::fabs(value));
  }
  const double group_length = w.group_size > 0 ? double(w.group_size) : double(w.cols);
  return double(largest) * std::ldexp(group_length, w.bits) >= 0x1p127;
}

// The bf16 GEMV for m <= kMaxBf16GemvRows bf16 activation rows, placed at
// bf16_gemv_position; tasks as in the fp32 GEMV.
void bf16_activation_gemv(const QuantKernels& kernels, const PackedWeights& w, const TensorView& x, float* out32) {
  const int64_t m = x.shape[0], cols = x.shape[1];
  const int64_t row_length = (cols + kBf16GemvBlockCodes - 1) / kBf16GemvBlockCodes * kBf16GemvBlockCodes;
  const int64_t rows = gemv_padded_rows(static_cast<int>(m));
  AlignedBuffer<uint16_t> placed(static_cast<size_t>(rows * row_length));
  std::fill(placed.data(), placed.data() + rows * row_length, uint16_t(0));
  const int64_t full_chunks = cols / kCodesPerChunk;
  for (int64_t i = 0; i < m; ++i) {
    const uint16_t* row = x.ptr<uint16_t>() + i * cols;
    uint16_t* out = placed.data() + i * row_length;
    // bf16_gemv_position chunk by chunk: the even and odd columns of each half
    // of a chunk go to 8 consecutive words of passes 0 / 2 (low half) and 1 / 3.
    for (int64_t c = 0; c < full_chunks; ++c) {
      const uint16_t* in = row + c * kCodesPerChunk;
      uint16_t* block = out + c / 4 * kBf16GemvBlockCodes + c % 4 * 8;
      for (int t = 0; t < 8; ++t) {
        block[t] = in[2 * t];
        block[32 + t] = in[16 + 2 * t];
        block[64 + t] = in[2 * t + 1];
        block[96 + t] = in[17 + 2 * t];
      }
    }
    for (int64_t k = full_chunks * kCodesPerChunk; k < cols; ++k) out[bf16_gemv_position(k)] = row[k];
  }
  // Zero points above 15 (uint8 holds them; Core ML's 4-bit offsets do not) put
  // code - zero outside the kernel's table (-16 .. 15): rows holding one take the
  // fp32 GEMV, on activations widened once by the first such run. Chosen row by
  // row, so a row's result does not depend on how rows are split into tasks.
  std::once_flag widened;
  AlignedBuffer<float> x32;
  const int64_t padded_cols = chunks_per_row(cols) * kCodesPerChunk;
  const int64_t n = w.rows;
  parallel_for(n, gemv_rows_per_task(w), [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end;) {
      const bool fits = zero_points_fit_bf16_table(w, run);
      int64_t run_end = run + 1;
      while (run_end < end && zero_points_fit_bf16_table(w, run_end) == fits) ++run_end;
      if (fits) {
        kernels.gemv_bf16(w, run, run_end, placed.data(), row_length, static_cast<int>(m), out32, n);
      } else {
        std::call_once(widened, [&] { x32 = widened_rows(x, m, rows, cols, padded_cols); });
        kernels.gemv(w, run, run_end, x32.data(), padded_cols, static_cast<int>(m), out32, n);
      }
      run = run_end;
    }
  });
}

// dot_int8 sums a group exactly in int32, where 2^15 products of |xq| <= 127 and
// a code <= 255 fit with room to spare (also the NEON kernels' sign-shifted
// form); a longer group (one group per row, K > 32768) goes span by span, each
// span's sum times the group's scale.
constexpr int64_t kMaxInt8Span = int64_t(1) << 15;

// The int8 path for many rows. Tasks as in tiled_matmul, each with whole rows of
// codes (K bytes each) unpacked once.
void int8_activation_matmul(const PackedWeights& w, const float* x32, int64_t m, int64_t padded_cols, float* out32) {
  const QuantKernels& kernels = int8_kernels();
  const int64_t n = w.rows;
  const int64_t group = int8_group_columns(w, padded_cols);
  const int64_t groups = padded_cols / group;
  const Int8Activations x(x32, m, m, padded_cols, group, padded_cols, 8);
  const int64_t padded_groups = x.padded_groups;
  std::fill(out32, out32 + m * n, 0.0f);
  const int64_t x_blocks = (m + kMaxRowsPerXBlock - 1) / kMaxRowsPerXBlock;
  const int64_t x_rows_per_block = (m + x_blocks - 1) / x_blocks;
  const int64_t w_blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t chunks = padded_cols / kCodesPerChunk;
  parallel_for(w_blocks * x_blocks, 1, [&](int64_t begin, int64_t end) {
    AlignedBuffer<uint8_t> codes(static_cast<size_t>(kRowsPerBlock * padded_cols));
    std::vector<float> scales(static_cast<size_t>(kRowsPerBlock * groups));
    AlignedBuffer<float> minus_scaled_zero(static_cast<size_t>(kRowsPerBlock * padded_groups));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = (task / x_blocks) * kRowsPerBlock, n1 = std::min(n, n0 + kRowsPerBlock);
      const int64_t m0 = (task % x_blocks) * x_rows_per_block, m1 = std::min(m, m0 + x_rows_per_block);
      std::fill(minus_scaled_zero.data(), minus_scaled_zero.data() + kRowsPerBlock * padded_groups, 0.0f);
      for (int64_t r = n0; r < n1; ++r) {
        kernels.unpack_codes(w, r, 0, chunks, codes.data() + (r - n0) * padded_cols);
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t index = r * w.groups_per_row() + g;
          const float s = load_scale(w.scales, w.scale_dtype, index);
          const float z = static_cast<float>(w.zero_points ? w.zero_points[index] : w.symmetric_zero_point());
          scales[(r - n0) * groups + g] = s;
          minus_scaled_zero[(r - n0) * padded_groups + g] = -(s * z);
        }
      }
      for (int64_t i = m0; i < m1; i += kInt8TileRows) {
        const int mi = static_cast<int>(std::min<int64_t>(kInt8TileRows, m1 - i));
        for (int64_t j = n0; j < n1; j += kInt8TileCols) {
          const int nj = static_cast<int>(std::min<int64_t>(kInt8TileCols, n1 - j));
          const int8_t* xq = x.codes.data() + i * padded_cols;
          const uint8_t* wq = codes.data() + (j - n0) * padded_cols;
          const float* tile_scales = scales.data() + (j - n0) * groups;
          if (group <= kMaxInt8Span) {
            kernels.dot_int8(xq, padded_cols, mi, wq, padded_cols, nj, padded_cols, group, tile_scales, groups,
                             out32 + i * n + j, n);
          } else {
            for (int64_t g = 0; g < groups; ++g)
              for (int64_t s0 = g * group; s0 < (g + 1) * group; s0 += kMaxInt8Span) {
                const int64_t span = std::min(kMaxInt8Span, (g + 1) * group - s0);
                kernels.dot_int8(xq + s0, padded_cols, mi, wq + s0, padded_cols, nj, span, span, tile_scales + g, groups,
                                 out32 + i * n + j, n);
              }
          }
        }
        // The zero points' share, sum_g (-scale_g zero_g) * sum_{k in g} xq, is a small fp32 product.
        for (int64_t j = n0; j < n1; j += kDotTileRows)
          kernels.dot_tile(x.group_sums.data() + i * padded_groups, padded_groups, std::min(mi, kDotTileRows),
                           minus_scaled_zero.data() + (j - n0) * padded_groups, padded_groups,
                           static_cast<int>(std::min<int64_t>(kDotTileRows, n1 - j)), padded_groups, out32 + i * n + j, n);
        for (int64_t r = i; r < i + mi; ++r)
          for (int64_t j = n0; j < n1; ++j) out32[r * n + j] *= x.row_scale[r];
      }
    }
  });
}

#if POCKETML_ARCH_ARM
// The NEON table with the int8 dot product of the best extension this CPU has
// (the ARMv8.0 one otherwise) and, with SDOT, the fused int8 GEMV, chosen once.
const QuantKernels* neon_quant_kernels() {
  static const QuantKernels kernels = [] {
    QuantKernels k = neon::quant_kernels;
    if (cpu_features().neon_i8mm) {
      k.dot_int8 = neon_i8mm::dot_int8;
    } else if (cpu_features().neon_dotprod) {
      k.dot_int8 = neon_dotprod::dot_int8;
    }
    if (cpu_features().neon_dotprod) k.gemv_int8 = neon_dotprod::gemv_int8;
    return k;
  }();
  return &kernels;
}
#endif

#if POCKETML_ARCH_X86
// The AVX-512 table as far as the CPU goes: the base variant runs on every
// AVX-512 F/BW/VL/DQ CPU, the int8 dot products need AVX512_VNNI (without it the
// int8 path runs the reference) and the bf16 GEMV AVX512_BF16.
const QuantKernels* avx512_quant_kernels() {
  static const QuantKernels kernels = [] {
    QuantKernels k = avx512::quant_kernels;
    if (!cpu_features().avx512vnni) {
      k.dot_int8 = nullptr;
      k.gemv_int8 = nullptr;
    }
    if (!cpu_features().avx512bf16) k.gemv_bf16 = nullptr;
    return k;
  }();
  return &kernels;
}
#endif

}  // namespace

const IsaTables<QuantKernels>& quant_tables() {
  static const IsaTables<QuantKernels> tables = {
      &scalar::quant_kernels,
#if POCKETML_ARCH_X86
      &avx2::quant_kernels,
      avx512_quant_kernels(),
#else
      nullptr,
      nullptr,
#endif
#if POCKETML_ARCH_ARM
      neon_quant_kernels(),
#else
      nullptr,
#endif
  };
  return tables;
}

void dequantize(const QuantizedViews& q, const TensorView& out) {
  const WeightsWithLut weights(q);
  const PackedWeights& w = weights.w;
  require_dtype(out, "out", {DType::f32, DType::f16, DType::bf16});
  require_ndim(out, "out", 2, 2);
  require_contiguous(out, "out");
  require_writable(out, "out");
  if (out.shape[0] != w.rows || out.shape[1] != w.cols)
    fail_argument(ErrorKind::InvalidArgument, "out", "shape (" + std::to_string(w.rows) + ", " +
                  std::to_string(w.cols) + ")", "shape " + out.shape_string());
  const QuantKernels& kernels = quant_tables().active();
  const int64_t chunks = chunks_per_row(w.cols);
  const size_t out_size = dtype_size(out.dtype);
  parallel_for(w.rows, std::max<int64_t>(1, (int64_t(1) << 16) / w.cols), [&](int64_t begin, int64_t end) {
    AlignedBuffer<float> row(static_cast<size_t>(chunks * kCodesPerChunk));
    for (int64_t r = begin; r < end; ++r) {
      kernels.decode_row(w, r, 0, chunks, row.data());
      char* dst = static_cast<char*>(out.data) + r * w.cols * out_size;
      convert(contiguous_view(row.data(), DType::f32, {w.cols}, false), contiguous_view(dst, out.dtype, {w.cols}));
    }
  });
}

void quantized_matmul(const TensorView& x, const QuantizedViews& q, const TensorView& out, int act_bits) {
  if (act_bits != 0 && act_bits != 8)
    fail_argument(ErrorKind::InvalidArgument, "act_bits", "0 (floating-point activations) or 8", std::to_string(act_bits));
  if (act_bits == 8 && q.kind != QuantKind::affine)
    fail_argument(ErrorKind::NotImplemented, "act_bits", "floating-point activations for LUT weights",
                  "8 (the int8-activation path needs affine weights)");
  const WeightsWithLut weights(q);
  const PackedWeights& w = weights.w;
  // x [..., K] and out [..., N], both contiguous: M is the product of the leading dimensions.
  require_dtype(x, "x", {DType::f32, DType::f16, DType::bf16});
  require_ndim(x, "x", 1, kMaxDims);
  require_contiguous(x, "x");
  if (x.shape[x.ndim - 1] != w.cols)
    fail_argument(ErrorKind::InvalidArgument, "x", "a last dimension equal to the weight's input dimension K = " +
                  std::to_string(w.cols), "shape " + x.shape_string());
  const int64_t m = x.numel() / w.cols, n = w.rows;
  require_dtype(out, "out", {DType::f32, DType::f16, DType::bf16});
  require_contiguous(out, "out");
  require_writable(out, "out");
  bool out_fits = out.ndim == x.ndim && out.shape[out.ndim - 1] == n;
  for (int d = 0; out_fits && d + 1 < x.ndim; ++d) out_fits = out.shape[d] == x.shape[d];
  if (!out_fits)
    fail_argument(ErrorKind::InvalidArgument, "out", "x's leading dimensions and a last one of " + std::to_string(n),
                  "shape " + out.shape_string() + " for x of shape " + x.shape_string());
  if (m == 0 || n == 0) return;
  const TensorView x_matrix = contiguous_view(x.data, x.dtype, {m, w.cols}, false);  // [M, K] views
  const TensorView out_matrix = contiguous_view(out.data, out.dtype, {m, n});

  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t padded_cols = chunks * kCodesPerChunk;
  const QuantKernels& kernels = quant_tables().active();
  // The fp32 result: out itself, or a buffer converted into out at the end.
  AlignedBuffer<float> out32_storage(out.dtype == DType::f32 ? 0 : static_cast<size_t>(m * n));
  float* out32 = out.dtype == DType::f32 ? out.ptr<float>() : out32_storage.data();
  if (act_bits == 8) {
    const AlignedBuffer<float> x32 = widened_rows(x_matrix, m, m, w.cols, padded_cols);
    if (m <= kMaxGemvRows && kernels.gemv_int8 != nullptr && int8_gemv_handles(w)) {
      int8_activation_gemv(kernels, w, x32.data(), m, padded_cols, out32);
    } else {
      int8_activation_matmul(w, x32.data(), m, padded_cols, out32);
    }
  } else if (x.dtype == DType::bf16 && m <= kMaxBf16GemvRows && kernels.gemv_bf16 != nullptr && kernels.gemv != nullptr &&
             bf16_gemv_handles(w) && !holds_bf16_below_exact_range(x_matrix) &&
             !group_sums_could_overflow(w, x_matrix)) {
    bf16_activation_gemv(kernels, w, x_matrix, out32);
  } else {
    const bool fused = m <= kMaxGemvRows && kernels.gemv != nullptr && !group_sums_could_overflow(w, x_matrix);
    const int64_t x_rows = fused ? gemv_padded_rows(static_cast<int>(m)) : m;
    const AlignedBuffer<float> x32 = widened_rows(x_matrix, m, x_rows, w.cols, padded_cols);
    if (fused) {
      parallel_for(n, gemv_rows_per_task(w), [&](int64_t begin, int64_t end) {
        kernels.gemv(w, begin, end, x32.data(), padded_cols, static_cast<int>(m), out32, n);
      });
    } else {
      tiled_matmul(kernels, w, x32.data(), m, padded_cols, out32);
    }
  }
  if (out.dtype != DType::f32) convert(contiguous_view(out32, DType::f32, {m, n}, false), out_matrix);
}

}  // namespace pocketml
