// NEON quantized-matmul kernels, ARMv8.0 only (every AArch64 CPU runs them).
// A chunk's 32 codes are unpacked as bytes, 16 per register: a bit plane of
// width p (4p bytes) is loaded, repeated to fill 16 bytes, and each byte
// shifted right by p * (code / 4p) (one variable shift) and masked. Values come
// from a 16-entry table for up to 4 bits (the affine table holds
// scale * (i - zero) for the group, the LUT its entries): TBL spreads each code
// to the four byte offsets of its fp32 entry and a four-register TBL reads it.
// 6-bit LUTs chain four such lookups (TBX), wider affine codes are widened and
// computed as (float(code) - zero) * scale, 8-bit LUTs read memory. Every value
// is the documented one bit for bit, as in the reference.
#include <arm_neon.h>

#include <cstring>

#include "quant/prefetch.h"
#include "quant/quant_kernels.h"

namespace pocketml::neon {
namespace {

// The plane of width Width at `plane`, fields of codes 16h .. 16h + 15 as bytes.
template <int Width>
inline void plane_fields(const uint8_t* plane, uint8x16_t field[2]) {
  if constexpr (Width == 8) {
    field[0] = vld1q_u8(plane);
    field[1] = vld1q_u8(plane + 16);
  } else if constexpr (Width == 4) {
    const uint8x16_t bytes = vld1q_u8(plane);
    field[0] = vandq_u8(bytes, vdupq_n_u8(15));
    field[1] = vshrq_n_u8(bytes, 4);
  } else if constexpr (Width == 2) {
    const uint8x8_t bytes = vld1_u8(plane);
    const uint8x16_t repeated = vcombine_u8(bytes, bytes);
    static const int8_t kShift[2][16] = {{0, 0, 0, 0, 0, 0, 0, 0, -2, -2, -2, -2, -2, -2, -2, -2},
                                         {-4, -4, -4, -4, -4, -4, -4, -4, -6, -6, -6, -6, -6, -6, -6, -6}};
    for (int h = 0; h < 2; ++h) field[h] = vandq_u8(vshlq_u8(repeated, vld1q_s8(kShift[h])), vdupq_n_u8(3));
  } else {
    uint32_t word;
    std::memcpy(&word, plane, 4);
    const uint8x16_t repeated = vreinterpretq_u8_u32(vdupq_n_u32(word));
    static const int8_t kShift[2][16] = {{0, 0, 0, 0, -1, -1, -1, -1, -2, -2, -2, -2, -3, -3, -3, -3},
                                         {-4, -4, -4, -4, -5, -5, -5, -5, -6, -6, -6, -6, -7, -7, -7, -7}};
    for (int h = 0; h < 2; ++h) field[h] = vandq_u8(vshlq_u8(repeated, vld1q_s8(kShift[h])), vdupq_n_u8(1));
  }
}

// The 32 codes of a chunk as bytes: codes 0..15 in code[0], 16..31 in code[1].
template <int Bits>
inline void chunk_code_bytes(const uint8_t* chunk, uint8x16_t code[2]) {
  constexpr PlaneLayout planes = plane_layout(Bits);
  plane_fields<planes.width[0]>(chunk, code);
  if constexpr (planes.count == 2) {
    uint8x16_t high[2];
    plane_fields<planes.width[1]>(chunk + 4 * planes.width[0], high);
    for (int h = 0; h < 2; ++h) code[h] = vorrq_u8(code[h], vshlq_n_u8(high[h], planes.width[0]));
  }
}

// Byte indices into a table of fp32 entries for codes 4q .. 4q + 3 of `code`
// (16 codes): entry c occupies bytes 4c .. 4c + 3.
inline uint8x16_t entry_bytes(uint8x16_t code_times_4, int q) {
  static const uint8_t kSpread[4][16] = {{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
                                         {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
                                         {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
                                         {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};
  static const uint8_t kByteInEntry[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  return vaddq_u8(vqtbl1q_u8(code_times_4, vld1q_u8(kSpread[q])), vld1q_u8(kByteInEntry));
}

inline uint8x16x4_t load_table(const float* entries) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(entries);
  return {{vld1q_u8(bytes), vld1q_u8(bytes + 16), vld1q_u8(bytes + 32), vld1q_u8(bytes + 48)}};
}

// The 32 values of a chunk from tables of 16 fp32 entries each (Tables = 1 for
// codes < 16, 4 for 6-bit codes; TBX keeps the lanes an earlier table filled).
template <int Tables>
inline void lookup(const uint8x16x4_t* table, const uint8x16_t code[2], float32x4_t v[8]) {
  for (int h = 0; h < 2; ++h) {
    const uint8x16_t times_4 = vshlq_n_u8(code[h], 2);  // <= 252 for 6-bit codes
    for (int q = 0; q < 4; ++q) {
      const uint8x16_t index = entry_bytes(times_4, q);
      uint8x16_t bytes = vqtbl4q_u8(table[0], index);
      for (int t = 1; t < Tables; ++t) bytes = vqtbx4q_u8(bytes, table[t], vsubq_u8(index, vdupq_n_u8(64 * t)));
      v[4 * h + q] = vreinterpretq_f32_u8(bytes);
    }
  }
}

inline void widen_codes(const uint8x16_t code[2], float32x4_t f[8]) {
  for (int h = 0; h < 2; ++h) {
    const uint16x8_t low = vmovl_u8(vget_low_u8(code[h])), high = vmovl_high_u8(code[h]);
    f[4 * h + 0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(low)));
    f[4 * h + 1] = vcvtq_f32_u32(vmovl_high_u16(low));
    f[4 * h + 2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(high)));
    f[4 * h + 3] = vcvtq_f32_u32(vmovl_high_u16(high));
  }
}

template <int Bits>
struct AffineValues {
  static constexpr bool kTable = Bits <= 4;
  uint8x16x4_t table;
  float32x4_t scale, zero;

  void start_row(const PackedWeights&, int64_t) {}
  void start_group(const PackedWeights& w, int64_t group) {
    const float s = load_scale(w.scales, w.scale_dtype, group);
    const float z = static_cast<float>(w.zero_points ? w.zero_points[group] : w.symmetric_zero_point());
    scale = vdupq_n_f32(s);
    zero = vdupq_n_f32(z);
    if constexpr (kTable) {
      alignas(16) float entries[16];
      for (int i = 0; i < 16; ++i) entries[i] = (static_cast<float>(i) - z) * s;
      table = load_table(entries);
    }
  }
  void operator()(const uint8_t* chunk, float32x4_t v[8]) const {
    uint8x16_t code[2];
    chunk_code_bytes<Bits>(chunk, code);
    if constexpr (kTable) {
      lookup<1>(&table, code, v);
    } else {
      widen_codes(code, v);
      for (int q = 0; q < 8; ++q) v[q] = vmulq_f32(vsubq_f32(v[q], zero), scale);
    }
  }
};

template <int Bits>
struct LutValues {
  static constexpr int kTables = Bits <= 4 ? 1 : Bits == 6 ? 4 : 0;  // 8 bits: read from memory
  uint8x16x4_t table[kTables > 0 ? kTables : 1];
  const float* lut = nullptr;

  void start_row(const PackedWeights& w, int64_t row) {
    lut = row_lut(w, row);
    if constexpr (kTables == 1) {
      alignas(16) float entries[16] = {};
      std::memcpy(entries, lut, sizeof(float) << Bits);
      table[0] = load_table(entries);
    } else if constexpr (kTables == 4) {
      for (int t = 0; t < 4; ++t) table[t] = load_table(lut + 16 * t);
    }
  }
  void start_group(const PackedWeights&, int64_t) {}
  void operator()(const uint8_t* chunk, float32x4_t v[8]) const {
    uint8x16_t code[2];
    chunk_code_bytes<Bits>(chunk, code);
    if constexpr (kTables > 0) {
      lookup<kTables>(table, code, v);
    } else {
      alignas(16) uint8_t codes[32];
      alignas(16) float values[32];
      vst1q_u8(codes, code[0]);
      vst1q_u8(codes + 16, code[1]);
      for (int i = 0; i < 32; ++i) values[i] = lut[codes[i]];
      for (int q = 0; q < 8; ++q) v[q] = vld1q_f32(values + 4 * q);
    }
  }
};

template <class Values>
void decode(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  const int64_t group_chunks = chunks_per_group(w, chunks_per_row(w.cols));
  const uint8_t* packed_row = w.packed + row * w.row_bytes;
  const int64_t first_group = first_group_of_row(w, row);
  Values values;
  values.start_row(w, row);
  for (int64_t c = chunk_begin; c < chunk_end; ++c, out += kCodesPerChunk) {
    if (c == chunk_begin || c % group_chunks == 0) values.start_group(w, first_group + c / group_chunks);
    float32x4_t v[8];
    values(packed_row + c * 4 * w.bits, v);
    for (int q = 0; q < 8; ++q) vst1q_f32(out + 4 * q, v[q]);
  }
}

// R weight rows at once against M activation rows: each x vector is loaded once
// for R rows, and R * M * Chains independent FMA chains (8 of 4 lanes, out of
// 32 registers) hide the FMA latency.
template <class Values, int M, int R>
void gemv_rows_at(const PackedWeights& w, int64_t row, const float* x, int64_t ldx, int m, float* y, int64_t ldy) {
  constexpr int Chains = M <= 2 ? 2 : 1;
  const int64_t chunks = chunks_per_row(w.cols);
  const int64_t group_chunks = chunks_per_group(w, chunks);
  const int64_t chunk_bytes = 4 * w.bits;
  const uint8_t* chunk[R];
  Values values[R];
  float32x4_t acc[R][M][Chains];
  for (int r = 0; r < R; ++r) {
    chunk[r] = w.packed + (row + r) * w.row_bytes;
    values[r].start_row(w, row + r);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < Chains; ++j) acc[r][i][j] = vdupq_n_f32(0.0f);
  }
  if (w.kind == QuantKind::affine) prefetch_group_params(w, row + 2 * R, R);
  int64_t group = 0;
  for (int64_t c0 = 0; c0 < chunks; c0 += group_chunks, ++group) {
    for (int r = 0; r < R; ++r) values[r].start_group(w, first_group_of_row(w, row + r) + group);
    const int64_t c1 = c0 + group_chunks < chunks ? c0 + group_chunks : chunks;
    for (int64_t c = c0; c < c1; ++c) {
      const float* xc = x + c * kCodesPerChunk;
      for (int r = 0; r < R; ++r) {
        // Short row streams: fetch the same place two steps of R rows ahead.
        prefetch_line(chunk[r] + 2 * R * w.row_bytes);
        float32x4_t v[8];
        values[r](chunk[r], v);
        chunk[r] += chunk_bytes;
        for (int q = 0; q < 8; ++q)
          for (int i = 0; i < M; ++i)
            acc[r][i][q % Chains] = vfmaq_f32(acc[r][i][q % Chains], vld1q_f32(xc + i * ldx + 4 * q), v[q]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i)
      if (i < m) y[i * ldy + row + r] = vaddvq_f32(Chains == 2 ? vaddq_f32(acc[r][i][0], acc[r][i][Chains - 1]) : acc[r][i][0]);
}

// Rows in steps of R (4 for M = 1, 2 for M <= 4, 1 for M = 8: 8 accumulators).
template <class Values, int M>
void gemv(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
          int64_t ldy) {
  constexpr int R = M == 1 ? 4 : M <= 4 ? 2 : 1;
  int64_t row = row_begin;
  for (; row + R <= row_end; row += R) gemv_rows_at<Values, M, R>(w, row, x, ldx, m, y, ldy);
  for (; row < row_end; ++row) gemv_rows_at<Values, M, 1>(w, row, x, ldx, m, y, ldy);
}


// An M x N block of dot products over k, M * N accumulators of 4 lanes.
template <int M, int N>
void dot_block(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* c, int64_t ldc) {
  float32x4_t acc[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) acc[i][j] = vdupq_n_f32(0.0f);
  for (int64_t t = 0; t < k; t += 4) {
    float32x4_t wv[N];
    for (int j = 0; j < N; ++j) wv[j] = vld1q_f32(w + j * ldw + t);
    for (int i = 0; i < M; ++i) {
      const float32x4_t xv = vld1q_f32(x + i * ldx + t);
      for (int j = 0; j < N; ++j) acc[i][j] = vfmaq_f32(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += vaddvq_f32(acc[i][j]);
}

#include "quant/quant_switchboard-inl.h"

template <int Bits>
void unpack_codes_bits(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, uint8_t* out) {
  const uint8_t* chunk = w.packed + row * w.row_bytes + chunk_begin * 4 * Bits;
  for (int64_t c = chunk_begin; c < chunk_end; ++c, chunk += 4 * Bits, out += kCodesPerChunk) {
    uint8x16_t code[2];
    chunk_code_bytes<Bits>(chunk, code);
    vst1q_u8(out, code[0]);
    vst1q_u8(out + 16, code[1]);
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

// ARMv8.0 has no 8-bit dot product: codes (u8) and activations (s8) widen to
// 16 bits and SMLAL multiplies-accumulates into 32-bit lanes, exact within a
// group. Each group's exact sum is scaled and added in group order, as the
// reference does.
template <int M, int N>
void dot_int8_block(const int8_t* xq, int64_t ldx, const uint8_t* codes, int64_t ldw, int64_t k, int64_t group,
                    const float* scales, int64_t lds, float* c, int64_t ldc) {
  float sum[M][N] = {};
  for (int64_t k0 = 0; k0 < k; k0 += group) {
    int32x4_t dot[M][N];
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) dot[i][j] = vdupq_n_s32(0);
    for (int64_t t = k0; t < k0 + group; t += 16) {
      int16x8_t w_low[N], w_high[N];
      for (int j = 0; j < N; ++j) {
        const uint8x16_t wv = vld1q_u8(codes + j * ldw + t);
        w_low[j] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(wv)));
        w_high[j] = vreinterpretq_s16_u16(vmovl_high_u8(wv));
      }
      for (int i = 0; i < M; ++i) {
        const int8x16_t xv = vld1q_s8(xq + i * ldx + t);
        const int16x8_t x_low = vmovl_s8(vget_low_s8(xv)), x_high = vmovl_high_s8(xv);
        for (int j = 0; j < N; ++j) {
          dot[i][j] = vmlal_s16(dot[i][j], vget_low_s16(x_low), vget_low_s16(w_low[j]));
          dot[i][j] = vmlal_high_s16(dot[i][j], x_low, w_low[j]);
          dot[i][j] = vmlal_s16(dot[i][j], vget_low_s16(x_high), vget_low_s16(w_high[j]));
          dot[i][j] = vmlal_high_s16(dot[i][j], x_high, w_high[j]);
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) sum[i][j] += scales[j * lds + k0 / group] * static_cast<float>(vaddvq_s32(dot[i][j]));
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) c[i * ldc + j] += sum[i][j];
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

}  // namespace

const QuantKernels quant_kernels = {decode_row, dot_tile, gemv_any, unpack_codes, dot_int8, nullptr, nullptr};

}  // namespace pocketml::neon
