// AVX-512 quantized-matmul kernels: 16 codes per register. A bit plane is one
// masked load; vpermd + vpsrlvd put each code in its own 32-bit lane. Values
// come from a 16-entry register table (vpermps) for up to 4 bits: the affine
// table holds scale * (i - zero) for the group, the LUT its entries, each
// repeated so that the garbage vpermps ignores above bit 4 needs no masking of
// single-plane codes. Wider codes use (float(code) - zero) * scale, a
// two-register permute (6-bit LUT) or a gather (8-bit LUT). Every value is
// the documented one bit for bit (one fp32 product), as in the reference.
#include <immintrin.h>

#include <limits>
#include <type_traits>

// GCC 12's AVX-512 headers build masked intrinsics on _mm512_undefined_*(),
// which -Wmaybe-uninitialized reports thousands of times once inlined into
// templates (GCC bug 105593); nothing here reads an uninitialised value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "quant/plane_lanes.h"
#include "quant/prefetch.h"
#include "quant/quant_kernels.h"

namespace pocketml::avx512 {
namespace {

#include "runtime/lane_sums_avx512-inl.h"

// Codes 16h .. 16h + 15 of a chunk, one per 32-bit lane. For single-plane codes
// of up to 4 bits the bits above the code are left as they are (see above).
template <int Bits>
inline __m512i chunk_codes(const uint8_t* chunk, int h) {
  // Byte-aligned planes need no word permute: one byte-to-lane widening.
  if constexpr (Bits == 8) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16 * h)));
  } else if constexpr (Bits == 4) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk)));
    return h == 0 ? bytes : _mm512_srli_epi32(bytes, 4);
  }
  constexpr PlaneLayout planes = plane_layout(Bits);
  constexpr bool masked = !(Bits <= 4 && planes.count == 1);
  __m512i code = _mm512_setzero_si512();
  int low_bit = 0;
  for (int p = 0; p < planes.count; ++p) {
    const int width = planes.width[p];
    const int slot = plane_slot(width);
    const __m512i words = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << width) - 1u), chunk);
    const __m512i index = _mm512_load_si512(kPlaneLanes.word[slot] + 16 * h);
    const __m512i shift = _mm512_load_si512(kPlaneLanes.shift[slot] + 16 * h);
    __m512i field = _mm512_srlv_epi32(_mm512_permutexvar_epi32(index, words), shift);
    if (masked) field = _mm512_and_si512(field, _mm512_set1_epi32((1 << width) - 1));
    code = p == 0 ? field : _mm512_or_si512(code, _mm512_slli_epi32(field, low_bit));
    low_bit += width;
    chunk += 4 * width;
  }
  return code;
}

// load_scale with the F16C instruction (exact, as the reference's conversion).
inline float load_scale_f16c(const void* scales, DType dtype, int64_t index) {
  if (dtype == DType::f16) return _cvtsh_ss(static_cast<const uint16_t*>(scales)[index]);
  return load_scale(scales, dtype, index);
}

// i & (2^Bits - 1) for lane i: the code each entry of a 16-entry table stands for.
template <int Bits>
inline __m512i table_codes() {
  return _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                          _mm512_set1_epi32(Bits >= 4 ? 15 : (1 << Bits) - 1));
}

// The scales and zero points of up to kGroupsPerBlock consecutive groups as
// fp32, converted 16 at a time (exactly, like the reference's scalar widening),
// so that starting a group costs two broadcasts from L1 instead of a scalar
// conversion chain.
constexpr int kGroupsPerBlock = 64;

// 2^23, whose mantissa's low bits an 8-bit code is OR-ed into (ByteAffineValues).
constexpr uint32_t kCodeFloatBits = 0x4B000000u;
constexpr float kCodeFloat = 8388608.0f;

// The arrays of a GroupBlock a GEMV reads (bits of GroupBlock::load's Fields).
enum GroupFields : unsigned { kScales = 1, kZeros = 2, kCodeBases = 4 };

struct GroupBlock {
  alignas(64) float scale[kGroupsPerBlock];
  alignas(64) float zero[kGroupsPerBlock];
  alignas(64) float code_base[kGroupsPerBlock];  // 2^23 + zero, exact

  // Fills the arrays that Fields names and no others: an unread array cost the
  // 4-bit fp32 GEMV at g32 a fifth of its time (one core: 32 -> 41 G weights/s
  // without the code bases it never reads).
  template <unsigned Fields>
  void load(const PackedWeights& w, int64_t first, int count) {
    for (int j = 0; j < count; j += 16) {
      const int n = count - j < 16 ? count - j : 16;
      const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
      const int64_t g = first + j;
      if constexpr ((Fields & kScales) != 0) {
        __m512 s;
        if (w.scale_dtype == DType::f16) {
          s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w.scales) + g));
        } else if (w.scale_dtype == DType::bf16) {
          const __m256i bits = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(w.scales) + g);
          s = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
        } else {
          s = _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w.scales) + g);
        }
        _mm512_store_ps(scale + j, s);
      }
      if constexpr ((Fields & (kZeros | kCodeBases)) != 0) {
        const __m512 z = w.zero_points
                             ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, w.zero_points + g)))
                             : _mm512_set1_ps(static_cast<float>(w.symmetric_zero_point()));
        if constexpr ((Fields & kZeros) != 0) _mm512_store_ps(zero + j, z);
        if constexpr ((Fields & kCodeBases) != 0)
          _mm512_store_ps(code_base + j, _mm512_add_ps(z, _mm512_set1_ps(kCodeFloat)));
      }
    }
  }
};

// y[0 .. R) = the lane sums of sums[0 .. R) (R <= 4), times `scale`, plus the
// values there when `accumulate`: one transposing tree for up to four GEMV rows
// instead of a reduction per row, which weighs on short rows (bf16 GEMV, K = 576,
// one core: 35.5 -> 38.5 G weights/s). A row's sum does not depend on the rows
// beside it (blocks of fewer rows repeat one).
template <int R>
inline void store_row_sums(const __m512 (&sums)[R], float scale, bool accumulate, float* y) {
  static_assert(R >= 1 && R <= 4);
  const __mmask8 rows = static_cast<__mmask8>((1u << R) - 1u);
  __m128 total = _mm_mul_ps(sum_lanes4(sums[0], sums[R > 1 ? 1 : 0], sums[R > 2 ? 2 : 0], sums[R > 3 ? 3 : 0]),
                            _mm_set1_ps(scale));
  if (accumulate) total = _mm_add_ps(total, _mm_maskz_loadu_ps(rows, y));
  _mm_mask_storeu_ps(y, rows, total);
}

// The fused GEMV's values for 8-bit affine codes: one byte-to-lane widening
// gives 16 codes; OR-ing a code into the mantissa of 2^23 makes the float
// 2^23 + code, and subtracting 2^23 + zero leaves code - zero exactly. The GEMV
// sums x * (code - zero) over a group and multiplies by the scale once per group
// instead of once per weight; the result differs from the decoded weights' dot
// product only by where fp32 rounds. (For 4-bit codes the same trick measured
// slower than AffineValues' register table here, so they keep the table.)
struct ByteAffineValues {
  static constexpr bool kScalePerGroup = true;
  static constexpr unsigned kGroupFields = kScales | kCodeBases;
  __m512 scale = _mm512_setzero_ps(), code_base = _mm512_setzero_ps();

  void start_row(const PackedWeights&, int64_t) {}
  void start_group(const GroupBlock& block, int j) {
    scale = _mm512_set1_ps(block.scale[j]);
    code_base = _mm512_set1_ps(block.code_base[j]);
  }

  // code - zero for codes 16h .. 16h + 15 of the chunk.
  __m512 operator()(const uint8_t* chunk, int h) const {
    const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16 * h)));
    const __m512i biased = _mm512_or_si512(codes, _mm512_set1_epi32(kCodeFloatBits));
    return _mm512_sub_ps(_mm512_castsi512_ps(biased), code_base);
  }
};

template <int Bits>
struct AffineValues {
  static constexpr bool kScalePerGroup = false;
  static constexpr unsigned kGroupFields = kScales | kZeros;
  using Fused = std::conditional_t<Bits == 8, ByteAffineValues, AffineValues<Bits>>;
  __m512 table = _mm512_setzero_ps(), scale = _mm512_setzero_ps(), zero = _mm512_setzero_ps();

  void start_group(const GroupBlock& block, int j) { set(_mm512_set1_ps(block.scale[j]), _mm512_set1_ps(block.zero[j])); }

  void start_group(const PackedWeights& w, int64_t group) {
    set(_mm512_set1_ps(load_scale_f16c(w.scales, w.scale_dtype, group)),
        _mm512_set1_ps(static_cast<float>(w.zero_points ? w.zero_points[group] : w.symmetric_zero_point())));
  }

  void set(__m512 s, __m512 z) {
    scale = s;
    zero = z;
    if constexpr (Bits <= 4) table = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(table_codes<Bits>()), zero), scale);
  }
  void start_row(const PackedWeights&, int64_t) {}

  __m512 operator()(const uint8_t* chunk, int h) const {
    const __m512i code = chunk_codes<Bits>(chunk, h);
    if constexpr (Bits <= 4) {
      return _mm512_permutexvar_ps(code, table);
    } else {
      return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(code), zero), scale);
    }
  }
};

template <int Bits>
struct LutValues {
  static constexpr bool kScalePerGroup = false;
  static constexpr unsigned kGroupFields = 0;
  using Fused = LutValues<Bits>;
  static constexpr int kEntries = 1 << Bits;
  const float* lut = nullptr;
  __m512 lut0 = _mm512_setzero_ps(), lut1 = _mm512_setzero_ps(), lut2 = _mm512_setzero_ps(), lut3 = _mm512_setzero_ps();

  void start_row(const PackedWeights& w, int64_t row) {
    lut = row_lut(w, row);
    if (Bits <= 4) {
      lut0 = _mm512_permutexvar_ps(table_codes<Bits>(), _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << kEntries) - 1u), lut));
    } else if (Bits == 6) {
      lut0 = _mm512_loadu_ps(lut);
      lut1 = _mm512_loadu_ps(lut + 16);
      lut2 = _mm512_loadu_ps(lut + 32);
      lut3 = _mm512_loadu_ps(lut + 48);
    }
  }
  void start_group(const PackedWeights&, int64_t) {}
  void start_group(const GroupBlock&, int) {}

  __m512 operator()(const uint8_t* chunk, int h) const {
    const __m512i code = chunk_codes<Bits>(chunk, h);
    if (Bits <= 4) return _mm512_permutexvar_ps(code, lut0);
    if (Bits == 6) {
      const __m512 low = _mm512_permutex2var_ps(lut0, code, lut1);
      const __m512 high = _mm512_permutex2var_ps(lut2, code, lut3);
      return _mm512_mask_blend_ps(_mm512_test_epi32_mask(code, _mm512_set1_epi32(32)), low, high);
    }
    return _mm512_i32gather_ps(code, lut, 4);
  }
};

template <class Values>
void decode(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const int64_t group_chunks = chunks_per_group(w, chunks_per_row(w.cols));
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  Values values;
  values.start_row(w, row);
  const int64_t first_group = first_group_of_row(w, row);
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    if (c == chunk_begin || c % group_chunks == 0) values.start_group(w, first_group + c / group_chunks);
    const uint8_t* chunk = packed_row + c * 4 * w.bits;
    _mm512_storeu_ps(out, values(chunk, 0));
    _mm512_storeu_ps(out + 16, values(chunk, 1));
  }
}

// R weight rows at once against M activation rows: each x vector is loaded once
// for R rows, and R * M * H independent FMA chains hide the FMA latency. Values
// with kScalePerGroup sum x * (code - zero) per group into `part` and fold it
// into acc times the group's scale at the group's end.
// GroupChunks > 0 fixes the chunks per scale group at compile time (groups of
// 32, 64, 128) so the short per-group loop unrolls; 0 reads it at run time.
// Covers chunks [chunk_begin, chunk_end) (chunk_begin starts a group unless the
// group is the row) and writes y, or adds to it when `accumulate`.
template <class Values, int M, int GroupChunks, int R>
void gemv_rows_at(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, bool accumulate,
                  const float* x, int64_t ldx, int m, float* y, int64_t ldy) {
  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t group_chunks = GroupChunks > 0 ? GroupChunks : chunks_per_group(w, chunks);
  const int64_t chunk_bytes = 4 * w.bits;
  const int64_t prefetch_distance = 2 * R * w.row_bytes;
  const uint8_t* chunk[R];
  Values values[R];
  // Chains per (row, activation row): two for few activation rows, one from
  // M = 4 on, where R * M chains already hide the latency and registers go to R,
  // and at M = 1 for groups of 32 or 64 codes, whose per-group tables want the
  // registers more (one core, weights in L3: g32 31 -> 37, g64 46 -> 49 G
  // weights/s; g128 and longer groups lose 5% with one chain).
  constexpr int H = M >= 4 || (M == 1 && (GroupChunks == 1 || GroupChunks == 2)) ? 1 : 2;
  __m512 acc[R][M][H], part[R][M][H];
  for (int r = 0; r < R; ++r) {
    chunk[r] = w.packed + (row + r) * w.row_bytes + chunk_begin * chunk_bytes;
    values[r].start_row(w, row + r);
    for (int i = 0; i < M; ++i)
      for (int h = 0; h < H; ++h) acc[r][i][h] = _mm512_setzero_ps();
  }
  const int64_t groups_end = (chunk_end + group_chunks - 1) / group_chunks;
  if (w.kind == QuantKind::affine) prefetch_group_params(w, row + 2 * R, R);
  int64_t c = chunk_begin;
  for (int64_t g0 = chunk_begin / group_chunks; g0 < groups_end; g0 += kGroupsPerBlock) {
    const int count = static_cast<int>(groups_end - g0 < kGroupsPerBlock ? groups_end - g0 : kGroupsPerBlock);
    GroupBlock block[R];
    if (w.kind == QuantKind::affine)
      for (int r = 0; r < R; ++r)
        block[r].template load<Values::kGroupFields>(w, first_group_of_row(w, row + r) + g0, count);
    for (int j = 0; j < count; ++j) {
      for (int r = 0; r < R; ++r) {
        values[r].start_group(block[r], j);
        if constexpr (Values::kScalePerGroup)
          for (int i = 0; i < M; ++i)
            for (int h = 0; h < H; ++h) part[r][i][h] = _mm512_setzero_ps();
      }
      auto& sums = Values::kScalePerGroup ? part : acc;
      const int64_t group_end = (g0 + j + 1) * group_chunks;
      const int64_t c1 = group_end < chunk_end ? group_end : chunk_end;
      for (; c < c1; ++c) {
        const float* xc = x + c * kCodesPerChunk;
        __m512 v[R][2];
        for (int r = 0; r < R; ++r) {
          // Rows are short streams (2 KiB at K = 4096, 4 bits) that the hardware
          // prefetcher picks up late: fetch the same place two steps of R rows
          // ahead (prefetches never fault, also past the last row). Once per
          // chunk, so 2-4 times per line: once per line ran the 8-bit per-row
          // GEMV from DRAM at half the speed (in-process A/B, Zen 5).
          prefetch_line(chunk[r] + prefetch_distance);
          v[r][0] = values[r](chunk[r], 0);
          v[r][1] = values[r](chunk[r], 1);
          chunk[r] += chunk_bytes;
        }
        // Each activation vector is loaded once and meets every row's weights.
        for (int h = 0; h < 2; ++h) {
          for (int i = 0; i < M; ++i) {
            const __m512 xv = _mm512_loadu_ps(xc + i * ldx + 16 * h);
            for (int r = 0; r < R; ++r) sums[r][i][h * (H - 1)] = _mm512_fmadd_ps(xv, v[r][h], sums[r][i][h * (H - 1)]);
          }
        }
      }
      if constexpr (Values::kScalePerGroup)
        for (int r = 0; r < R; ++r)
          for (int i = 0; i < M; ++i)
            acc[r][i][0] = _mm512_fmadd_ps(H == 2 ? _mm512_add_ps(part[r][i][0], part[r][i][H - 1]) : part[r][i][0],
                                           values[r].scale, acc[r][i][0]);
    }
  }
  for (int i = 0; i < m && i < M; ++i) {
    __m512 sums[R];
    for (int r = 0; r < R; ++r) sums[r] = H == 2 ? _mm512_add_ps(acc[r][i][0], acc[r][i][H - 1]) : acc[r][i][0];
    store_row_sums(sums, 1.0f, accumulate, y + i * ldy + row);
  }
}

// Rows in steps of R, so that the accumulators fit the 32 registers: 4 for
// M <= 4, 2 for M = 8 (per-group sums double them: 4, 2, 2, 1). More rows per
// step matter from M = 4 on, where the activations (64 KiB at K = 4096) live in
// L2 and every step streams them once: one row per step at M = 8 was bound by
// that stream (5 G weights/s on one core).
template <class Values, int M, int GroupChunks>
void gemv_grouped(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
          int64_t ldy) {
  constexpr int R = Values::kScalePerGroup ? (M == 1 ? 4 : M == 8 ? 1 : 2) : (M <= 4 ? 4 : 2);
  // From M = 4 on, the activations (M x K floats) outgrow L1 and each step of R
  // rows streams them from L2 again. Where per-group sums leave room for only
  // one or two rows per step, blocks of kSliceRows rows run slice by slice of
  // columns whose activations fit in 16 KiB, adding into y (one core, 8-bit
  // codes: M=4 15 -> 18, M=8 5 -> 8.6 G weights/s; with 4 rows per step the
  // slices' extra reductions cost more than they save: 4-bit M=4 22 -> 18).
  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t group_chunks = chunks_per_group(w, chunks);
  int64_t slice = chunks;
  if (M >= 4 && Values::kScalePerGroup) {
    slice = (int64_t(16) << 10) / (M * kCodesPerChunk * int64_t(sizeof(float)));
    if (group_chunks < chunks) slice = (slice + group_chunks - 1) / group_chunks * group_chunks;
  }
  constexpr int64_t kSliceRows = 64;
  for (int64_t block = row_begin; block < row_end; block += kSliceRows) {
    const int64_t block_end = block + kSliceRows < row_end ? block + kSliceRows : row_end;
    for (int64_t c0 = 0; c0 < chunks; c0 += slice) {
      const int64_t c1 = c0 + slice < chunks ? c0 + slice : chunks;
      int64_t row = block;
      for (; row + R <= block_end; row += R)
        gemv_rows_at<Values, M, GroupChunks, R>(w, row, c0, c1, c0 > 0, x, ldx, m, y, ldy);
      for (; row < block_end; ++row) gemv_rows_at<Values, M, GroupChunks, 1>(w, row, c0, c1, c0 > 0, x, ldx, m, y, ldy);
    }
  }
}

template <class Values, int M>
void gemv(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
          int64_t ldy) {
  using Fused = typename Values::Fused;
  switch (chunks_per_group(w, chunks_per_row(w.cols))) {
    case 1: gemv_grouped<Fused, M, 1>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    case 2: gemv_grouped<Fused, M, 2>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    case 4: gemv_grouped<Fused, M, 4>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    default: gemv_grouped<Fused, M, 0>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
  }
}


// An M x N block of dot products over k, M * N accumulators of 16 lanes.
template <int M, int N>
void dot_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* c, int64_t ldc) {
  __m512 acc[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < k; t += 16) {
    __m512 wv[N];
    for (int j = 0; j < N; ++j) wv[j] = _mm512_loadu_ps(w + j * ldw + t);
    for (int i = 0; i < M; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + t);
      for (int j = 0; j < N; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += _mm512_reduce_add_ps(acc[i][j]);
}

#include "quant/quant_switchboard-inl.h"

template <int Bits>
void unpack_codes_bits(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, uint8_t* out) {
  const uint8_t* chunk = w.packed + row * w.row_bytes + chunk_begin * 4 * Bits;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, chunk += 4 * Bits, out += kCodesPerChunk) {
    if constexpr (Bits == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk)));
    } else if constexpr (Bits == 4) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk));
      const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(15));
      const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), low);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), high);
    } else {
      for (int h = 0; h < 2; ++h) {
        const __m512i code = _mm512_and_si512(chunk_codes<Bits>(chunk, h), _mm512_set1_epi32((1 << Bits) - 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * h), _mm512_cvtepi32_epi8(code));
      }
    }
  }
}

void unpack_codes(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, uint8_t* out) {
  switch (w.bits) {
    case 1: unpack_codes_bits<1>(w, row, chunk_begin, chunk_end, out); break;
    case 2: unpack_codes_bits<2>(w, row, chunk_begin, chunk_end, out); break;
    case 3: unpack_codes_bits<3>(w, row, chunk_begin, chunk_end, out); break;
    case 4: unpack_codes_bits<4>(w, row, chunk_begin, chunk_end, out); break;
    case 5: unpack_codes_bits<5>(w, row, chunk_begin, chunk_end, out); break;
    case 6: unpack_codes_bits<6>(w, row, chunk_begin, chunk_end, out); break;
    default: unpack_codes_bits<8>(w, row, chunk_begin, chunk_end, out); break;
  }
}

// vpdpbusd: 64 unsigned codes times 64 signed activations into 16 int32 lanes,
// exact within a group; at each group end the lanes are scaled into fp32.
template <int M, int N>
void dot_int8_block(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int64_t k, int64_t group,
                    const float* scales, int64_t lds, float* c, int64_t ldc) {
  __m512 sum[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) sum[i][j] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < k; k0 += group) {
    __m512i dot[M][N];
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) dot[i][j] = _mm512_setzero_si512();
    for (int64_t t = k0; t < k0 + group; t += 64) {
      const __mmask64 mask = k0 + group - t >= 64 ? ~__mmask64(0) : (__mmask64(1) << 32) - 1;  // groups: multiples of 32
      __m512i wv[N];
      for (int j = 0; j < N; ++j) wv[j] = _mm512_maskz_loadu_epi8(mask, codes + j * ldw + t);
      for (int i = 0; i < M; ++i) {
        const __m512i xv = _mm512_maskz_loadu_epi8(mask, xq + i * ldx + t);
        for (int j = 0; j < N; ++j) dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], wv[j], xv);
      }
    }
    for (int j = 0; j < N; ++j) {
      const __m512 scale = _mm512_set1_ps(scales[j * lds + k0 / group]);
      for (int i = 0; i < M; ++i) sum[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), scale, sum[i][j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += _mm512_reduce_add_ps(sum[i][j]);
}

template <int M>
void dot_int8_rows(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int n, int64_t k, int64_t group,
                   const float* scales, int64_t lds, float* c, int64_t ldc) {
  if (n == 1) {
    dot_int8_block<M, 1>(xq, ldx, codes, ldw, k, group, scales, lds, c, ldc);
  } else {
    dot_int8_block<M, 2>(xq, ldx, codes, ldw, k, group, scales, lds, c, ldc);
  }
}

void dot_int8(const int8_t* xq, int64_t ldx, int m, const uint8_t* codes, int64_t ldw, int n, int64_t k, int64_t group,
              const float* scales, int64_t lds, float* c, int64_t ldc) {
  switch (m) {
    case 1: dot_int8_rows<1>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 2: dot_int8_rows<2>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    case 3: dot_int8_rows<3>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
    default: dot_int8_rows<4>(xq, ldx, codes, ldw, n, k, group, scales, lds, c, ldc); break;
  }
}

// The groups of a 64-byte block of a packed row (128 4-bit codes or 64 8-bit
// ones), for the GEMVs that read rows block by block (int8 activations, bf16 dot
// products). Each 32-bit lane of such a block's sums covers 4 bytes of a single
// chunk, hence of a single group.
template <int Bits, int GroupCodes>  // GroupCodes: 32, 64, 128, or 0 for one group per row
struct PackedBlockGroups {
  static constexpr int kBlockCodes = kInt8GemvBlockBytes * 8 / Bits;
  static constexpr int kLanesPerChunk = 16 * kCodesPerChunk / kBlockCodes;
  static constexpr int kPerBlock = GroupCodes != 0 && GroupCodes < kBlockCodes ? kBlockCodes / GroupCodes : 1;

  struct LaneGroups {
    alignas(64) int32_t index[16];
  };
  static constexpr LaneGroups lane_groups() {
    LaneGroups groups{};
    for (int lane = 0; lane < 16; ++lane) groups.index[lane] = lane / kLanesPerChunk * kCodesPerChunk * kPerBlock / kBlockCodes;
    return groups;
  }
  static constexpr LaneGroups kLaneGroups = lane_groups();

  // The group of the block's first lane, counted from the row's first group.
  static int64_t first_group(int64_t block) {
    if constexpr (GroupCodes == 0) {
      return 0;
    } else if constexpr (kPerBlock > 1) {
      return block * kPerBlock;
    } else {
      return block / (GroupCodes / kBlockCodes);
    }
  }

  // Each lane's group scale, given the scales of the block's groups.
  static __m512 lane_scales(const float* scales) {
    if constexpr (kPerBlock == 1) {
      return _mm512_set1_ps(*scales);
    } else {
      const __m128 block_scales =
          kPerBlock == 4 ? _mm_loadu_ps(scales) : _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(scales)));
      return _mm512_permutexvar_ps(_mm512_load_si512(kLaneGroups.index), _mm512_castps128_ps512(block_scales));
    }
  }
};

// Calls run(std::integral_constant<int, GroupCodes>{}) with the group length the
// block-wise GEMVs specialise: 32, 64, 128, or 0 for one group per row.
template <class Run>
inline void with_group_codes(const PackedWeights& w, Run run) {
  switch (w.groups_per_row() == 1 ? 0 : w.group_size) {
    case 32: run(std::integral_constant<int, 32>{}); break;
    case 64: run(std::integral_constant<int, 64>{}); break;
    case 128: run(std::integral_constant<int, 128>{}); break;
    default: run(std::integral_constant<int, 0>{}); break;
  }
}

// The fused int8-activation GEMV. A 64-byte load of a packed row is a block
// of 128 4-bit codes (its low nibbles, then its high nibbles: two vpdpbusd
// against the activations stored in that order) or of 64 8-bit codes (one).
// A block's exact sums turn into fp32 once and meet a vector of their lanes'
// group scales. The zero points' share, sum_g scale_g * zero_g * x_sums[g], is
// summed as each row's group parameters are loaded.
//
// One block of R weight rows against M activation rows (xq points at the block
// in activation row 0). Full blocks load 64 bytes; the row's last may be partial.
template <int Bits, int M, int R, class Groups>
inline void gemv_int8_block(const uint8_t* const* packed, __mmask64 bytes, bool partial, const int8_t* xq, int64_t ldx,
                            const GroupBlock* params, int64_t group_in_block, __m512 (&acc)[R][M]) {
  for (int r = 0; r < R; ++r) {
    const __m512i raw = partial ? _mm512_maskz_loadu_epi8(bytes, packed[r]) : _mm512_loadu_si512(packed[r]);
    const __m512 scales = Groups::lane_scales(params[r].scale + group_in_block);
    for (int i = 0; i < M; ++i) {
      __m512i sums;
      if constexpr (Bits == 4) {
        const __m512i low = _mm512_and_si512(raw, _mm512_set1_epi8(15));
        const __m512i high = _mm512_and_si512(_mm512_srli_epi16(raw, 4), _mm512_set1_epi8(15));
        sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512(xq + i * ldx));
        sums = _mm512_dpbusd_epi32(sums, high, _mm512_loadu_si512(xq + i * ldx + 64));
      } else {
        sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), raw, _mm512_loadu_si512(xq + i * ldx));
      }
      acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales, acc[r][i]);
    }
  }
}

template <int Bits, int M, int R, int GroupCodes>
void gemv_int8_rows_at(const PackedWeights& w, int64_t row, const int8_t* xq, int64_t ldx, const float* x_sums,
                       int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  using Groups = PackedBlockGroups<Bits, GroupCodes>;
  const int64_t full_blocks = w.row_bytes / kInt8GemvBlockBytes;
  const int64_t tail_bytes = w.row_bytes % kInt8GemvBlockBytes;
  const int64_t groups = w.groups_per_row();
  const int64_t prefetch_distance = 2 * R * w.row_bytes;
  const uint8_t* packed[R];
  __m512 acc[R][M], zero_share[R][M];
  for (int r = 0; r < R; ++r) {
    packed[r] = w.packed + (row + r) * w.row_bytes;
    for (int i = 0; i < M; ++i) acc[r][i] = zero_share[r][i] = _mm512_setzero_ps();
  }
  prefetch_group_params(w, row + 2 * R, R);
  GroupBlock params[R];
  int64_t g0 = -kGroupsPerBlock;
  auto load_params = [&](int64_t first) {
    g0 = first;
    const int count = static_cast<int>(groups - g0 < kGroupsPerBlock ? groups - g0 : kGroupsPerBlock);
    for (int r = 0; r < R; ++r) {
      params[r].template load<kScales | kZeros>(w, (row + r) * groups + g0, count);
      for (int j = 0; j < count; j += 16) {
        const __m512 scaled_zero = _mm512_mul_ps(_mm512_load_ps(params[r].scale + j), _mm512_load_ps(params[r].zero + j));
        for (int i = 0; i < M; ++i)
          zero_share[r][i] = _mm512_fmadd_ps(scaled_zero, _mm512_loadu_ps(x_sums + i * lds + g0 + j), zero_share[r][i]);
      }
    }
  };
  for (int64_t b = 0; b < full_blocks; ++b) {
    const int64_t group = Groups::first_group(b);
    if (group >= g0 + kGroupsPerBlock) load_params(group);
    for (int r = 0; r < R; ++r) prefetch_line(packed[r] + prefetch_distance);
    gemv_int8_block<Bits, M, R, Groups>(packed, ~__mmask64(0), false, xq + b * Groups::kBlockCodes, ldx, params,
                                        group - g0, acc);
    for (int r = 0; r < R; ++r) packed[r] += kInt8GemvBlockBytes;
  }
  if (tail_bytes > 0) {
    const int64_t group = Groups::first_group(full_blocks);
    if (group >= g0 + kGroupsPerBlock) load_params(group);
    gemv_int8_block<Bits, M, R, Groups>(packed, (__mmask64(1) << tail_bytes) - 1, true,
                                        xq + full_blocks * Groups::kBlockCodes, ldx, params, group - g0, acc);
  }
  for (int i = 0; i < m && i < M; ++i) {
    __m512 sums[R];
    for (int r = 0; r < R; ++r) sums[r] = _mm512_sub_ps(acc[r][i], zero_share[r][i]);
    store_row_sums(sums, x_scale[i], false, y + i * ldy + row);
  }
}

// Rows in steps of R, so that R * M accumulators and their zero-point shares fit the registers.
template <int Bits, int M, int GroupCodes>
void gemv_int8_grouped(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                       const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  constexpr int R = M == 1 ? 4 : M == 2 ? 2 : 1;
  int64_t row = row_begin;
  for (; row + R <= row_end; row += R)
    gemv_int8_rows_at<Bits, M, R, GroupCodes>(w, row, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
  for (; row < row_end; ++row) gemv_int8_rows_at<Bits, M, 1, GroupCodes>(w, row, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
}

template <int Bits, int M>
void gemv_int8_rows(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                    const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  with_group_codes(w, [&](auto group_codes) {
    gemv_int8_grouped<Bits, M, decltype(group_codes)::value>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m,
                                                             y, ldy);
  });
}

#include "quant/quant_int8_gemv_switchboard-inl.h"

// The exact GEMV for bf16 activations on bf16 dot products (GemvBf16Fn in
// quant_kernels.h). Per 32 codes it costs about a shift, one vpermw from a table
// of small integers and one vdpbf16ps, where the fp32 GEMV spends a widening, two
// vpermps and two FMAs; on Zen 5 these share two pipes (one core, weights in
// L2: 51 -> 78 G weights/s at g64, 58 -> 93 with one group per row).

// bf16 bits of an integer of magnitude below 256.
constexpr uint16_t bf16_of_integer(int n) {
  if (n == 0) return 0;
  const int sign = n < 0 ? 1 : 0, magnitude = n < 0 ? -n : n;
  int exponent = 0;
  while ((magnitude >> (exponent + 1)) != 0) ++exponent;
  const int mantissa = (magnitude << (7 - exponent)) & 0x7F;
  return static_cast<uint16_t>(sign << 15 | (127 + exponent) << 7 | mantissa);
}

// bf16(n) at index n mod 32, for n in -16 .. 15.
struct Bf16Residues {
  alignas(64) uint16_t word[32];
};
constexpr Bf16Residues make_bf16_residues() {
  Bf16Residues residues{};
  for (int i = 0; i < 32; ++i) residues.word[i] = bf16_of_integer(i < 16 ? i : i - 32);
  return residues;
}
constexpr Bf16Residues kBf16Residues = make_bf16_residues();

// The weights of one block's four passes as bf16 code - zero. Each byte of the
// block, masked to the code of pass 0 (1) in its low nibble and of pass 2 (3)
// in its high one, loses its group's zero point byte-wise, so no borrow crosses
// into the next code; vpermw then maps the low 5 bits of each word, the
// difference mod 32, to its bf16. Word w lies in chunk w / 8, one 128-bit lane,
// so in group (w / 8) * 32 / GroupCodes of the block. (A table per pair of zero
// points, loaded per block, ran at 62 G weights/s where this runs at 74.)
template <int GroupCodes>
class Bf16BlockWeights {
 public:
  Bf16BlockWeights() = default;

  // zeros: the zero points of the block's groups (nullptr: symmetric, 8).
  Bf16BlockWeights(const uint8_t* zeros, __m512i raw) {
    const __m512i zero = zero_bytes(zeros);
    const __m512i low_nibbles = _mm512_set1_epi8(15);
    even_ = _mm512_sub_epi8(_mm512_and_si512(raw, low_nibbles), zero);
    odd_ = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles), zero);
  }

  // Pass j: bits 4j .. 4j + 3 of each word.
  __m512i operator()(int j) const {
    const __m512i source = j % 2 == 0 ? even_ : odd_;
    const __m512i index = j < 2 ? source : _mm512_srli_epi16(source, 8);
    return _mm512_permutexvar_epi16(index, _mm512_load_si512(kBf16Residues.word));
  }

 private:
  static constexpr int kPerBlock = PackedBlockGroups<4, GroupCodes>::kPerBlock;

  // Each byte's zero point, from the block's (one, two or four) groups.
  static __m512i zero_bytes(const uint8_t* zeros) {
    if (zeros == nullptr) return _mm512_set1_epi8(8);
    if constexpr (kPerBlock == 1) {
      return _mm512_set1_epi8(static_cast<char>(*zeros));
    } else {
      // Broadcast from memory: a load, where going through a general register costs more.
      const __m512i packed = kPerBlock == 2 ? _mm512_broadcastw_epi16(_mm_loadu_si16(zeros))
                                            : _mm512_broadcastd_epi32(_mm_loadu_si32(zeros));
      return _mm512_shuffle_epi8(packed, _mm512_load_si512(kLaneGroups.byte));
    }
  }
  struct LaneGroups {
    alignas(64) uint8_t byte[64];
  };
  static constexpr LaneGroups lane_groups() {
    LaneGroups groups{};
    for (int i = 0; i < 64; ++i) groups.byte[i] = static_cast<uint8_t>(i / 16 * kPerBlock / 4);
    return groups;
  }
  static constexpr LaneGroups kLaneGroups = lane_groups();

  __m512i even_, odd_;  // the indices of passes 0 and 1 (of 2 and 3 in their high bytes)
};

// One block of R weight rows against M activation rows (x points at the block
// in activation row 0; zeros[r] at the zero points of row r's block, nullptr
// when symmetric). Each x vector is loaded once and meets every row's weights.
template <int M, int R, int GroupCodes>
inline void gemv_bf16_block(const uint8_t* const* packed, __mmask64 bytes, bool partial, const uint16_t* x, int64_t ldx,
                            const GroupBlock* params, const uint8_t* const* zeros, int64_t group_in_block,
                            __m512 (&acc)[R][M]) {
  using Groups = PackedBlockGroups<4, GroupCodes>;
  // Two chains of dot products per row: vdpbf16ps's latency would otherwise
  // bound the R * M chains.
  constexpr int H = 2;
  Bf16BlockWeights<GroupCodes> weights[R];
  __m512 sums[R][M][H];
  for (int r = 0; r < R; ++r) {
    weights[r] = Bf16BlockWeights<GroupCodes>(
        zeros[r], partial ? _mm512_maskz_loadu_epi8(bytes, packed[r]) : _mm512_loadu_si512(packed[r]));
    for (int i = 0; i < M; ++i)
      for (int h = 0; h < H; ++h) sums[r][i][h] = _mm512_setzero_ps();
  }
  for (int j = 0; j < 4; ++j) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = reinterpret_cast<__m512bh>(weights[r](j));
    for (int i = 0; i < M; ++i) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + i * ldx + 32 * j));
      for (int r = 0; r < R; ++r) sums[r][i][j % H] = _mm512_dpbf16_ps(sums[r][i][j % H], wv[r], xv);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 scales = Groups::lane_scales(params[r].scale + group_in_block);
    for (int i = 0; i < M; ++i)
      acc[r][i] = _mm512_fmadd_ps(H == 2 ? _mm512_add_ps(sums[r][i][0], sums[r][i][H - 1]) : sums[r][i][0], scales, acc[r][i]);
  }
}

// The group parameters load kGroupsPerBlock groups at a time, outside the loop
// over blocks, which then makes no calls and keeps its accumulators in registers.
template <int M, int R, int GroupCodes>
void gemv_bf16_rows_at(const PackedWeights& w, int64_t row, const uint16_t* x, int64_t ldx, int m, float* y,
                       int64_t ldy) {
  using Groups = PackedBlockGroups<4, GroupCodes>;
  constexpr int64_t kBlocksPerLoad =
      GroupCodes == 0 ? std::numeric_limits<int64_t>::max() : kGroupsPerBlock * GroupCodes / kBf16GemvBlockCodes;
  const int64_t full_blocks = w.row_bytes / kInt8GemvBlockBytes;
  const int64_t blocks = (w.row_bytes + kInt8GemvBlockBytes - 1) / kInt8GemvBlockBytes;
  const int64_t groups = w.groups_per_row();
  const int64_t prefetch_distance = 2 * R * w.row_bytes;
  const uint8_t* packed[R];
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r) {
    packed[r] = w.packed + (row + r) * w.row_bytes;
    for (int i = 0; i < M; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  prefetch_group_params(w, row + 2 * R, R);
  GroupBlock params[R];
  const uint8_t* zeros[R] = {};
  for (int64_t b0 = 0; b0 < blocks; b0 += kBlocksPerLoad) {
    const int64_t g0 = Groups::first_group(b0);
    const int count = static_cast<int>(groups - g0 < kGroupsPerBlock ? groups - g0 : kGroupsPerBlock);
    for (int r = 0; r < R; ++r) params[r].template load<kScales>(w, (row + r) * groups + g0, count);
    const int64_t b1 = blocks - b0 < kBlocksPerLoad ? blocks : b0 + kBlocksPerLoad;
    const int64_t full_end = b1 < full_blocks ? b1 : full_blocks;
    for (int64_t b = b0; b < full_end; ++b) {
      const int64_t group = Groups::first_group(b);
      if (w.zero_points != nullptr)
        for (int r = 0; r < R; ++r) zeros[r] = w.zero_points + (row + r) * groups + group;
      for (int r = 0; r < R; ++r) prefetch_line(packed[r] + prefetch_distance);
      gemv_bf16_block<M, R, GroupCodes>(packed, ~__mmask64(0), false, x + b * kBf16GemvBlockCodes, ldx, params, zeros,
                                               group - g0, acc);
      for (int r = 0; r < R; ++r) packed[r] += kInt8GemvBlockBytes;
    }
    if (full_end < b1) {
      // The row's partial last block. It may hold fewer groups than a whole
      // block, and zero points past the row's are not to be read: those lanes'
      // codes and x are zero, so any zero point serves them.
      const int64_t group = Groups::first_group(full_blocks);
      uint8_t tail_zeros[R][4] = {};
      if (w.zero_points != nullptr) {
        for (int r = 0; r < R; ++r) {
          for (int64_t g = group; g < groups && g < group + 4; ++g)
            tail_zeros[r][g - group] = w.zero_points[(row + r) * groups + g];
          zeros[r] = tail_zeros[r];
        }
      }
      gemv_bf16_block<M, R, GroupCodes>(packed, (__mmask64(1) << (w.row_bytes % kInt8GemvBlockBytes)) - 1, true,
                                               x + full_blocks * kBf16GemvBlockCodes, ldx, params, zeros, group - g0, acc);
    }
  }
  for (int i = 0; i < m && i < M; ++i) {
    __m512 sums[R];
    for (int r = 0; r < R; ++r) sums[r] = acc[r][i];
    store_row_sums(sums, 1.0f, false, y + i * ldy + row);
  }
}

template <int M, int GroupCodes>
void gemv_bf16_grouped(const PackedWeights& w, int64_t row_begin, int64_t row_end, const uint16_t* x, int64_t ldx,
                       int m, float* y, int64_t ldy) {
  constexpr int R = M == 1 ? 4 : 2;
  int64_t row = row_begin;
  for (; row + R <= row_end; row += R) gemv_bf16_rows_at<M, R, GroupCodes>(w, row, x, ldx, m, y, ldy);
  for (; row < row_end; ++row) gemv_bf16_rows_at<M, 1, GroupCodes>(w, row, x, ldx, m, y, ldy);
}

template <int M>
void gemv_bf16_rows(const PackedWeights& w, int64_t row_begin, int64_t row_end, const uint16_t* x, int64_t ldx, int m,
                    float* y, int64_t ldy) {
  with_group_codes(w, [&](auto group_codes) {
    gemv_bf16_grouped<M, decltype(group_codes)::value>(w, row_begin, row_end, x, ldx, m, y, ldy);
  });
}

void gemv_bf16(const PackedWeights& w, int64_t row_begin, int64_t row_end, const uint16_t* x, int64_t ldx, int m,
               float* y, int64_t ldy) {
  if (m == 1) {
    gemv_bf16_rows<1>(w, row_begin, row_end, x, ldx, m, y, ldy);
  } else {
    gemv_bf16_rows<2>(w, row_begin, row_end, x, ldx, m, y, ldy);
  }
}

}  // namespace

const QuantKernels quant_kernels = {decode_row, dot_tile, gemv_any, unpack_codes, dot_int8, gemv_int8_any, gemv_bf16};

}  // namespace pocketml::avx512
