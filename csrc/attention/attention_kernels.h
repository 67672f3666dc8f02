#pragma once
// The attention kernel family: the few fp32 tile operations the flash-attention
// drivers (forward, backward, decode) are built from. Inputs in fp16 / bf16 /
// int8 are widened to fp32 tiles first (a tile is reused by a whole block of
// queries, so widening costs ~1/(2 * block rows) of the arithmetic), except
// where a CPU multiplies bf16 pairs or fp16 values directly (the optional
// entries at the end); every variant accumulates in fp32.
//
// Score tiles are stored key-major: st[key * n_rows + row], so the softmax
// statistics of a query row (max, sum) are vector operations across rows.
#include <cstdint>

#include "runtime/dispatch.h"
#include "runtime/dtype.h"

namespace pocketml {

struct AttentionKernels {
  // C[m][n] += sum_k A(m, k) * B[k][n] for m < M, n < N, k < K, where
  // A(m, k) = a[m * a_row_stride + k * a_col_stride] (any strides: A is only
  // ever broadcast), B rows are `ldb` apart and C rows `ldc` apart.
  void (*gemm_accumulate)(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row_stride,
                          int64_t a_col_stride, const float* b, int64_t ldb, float* c, int64_t ldc);
  // C(m, n) = sum_k A[m][k] * B[n][k], written at c[m * c_row_stride + n * c_col_stride]:
  // dot products of rows, for blocks with too few query rows to fill a vector.
  void (*dot_rows)(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t c_row_stride, int64_t c_col_stride);
  // One online-softmax step on the key-major score tile st[n_keys][n_rows]:
  // row_max <- max(row_max, column max); st <- exp(st - row_max);
  // rescale <- exp(old row_max - new row_max); row_sum <- row_sum * rescale + column sum.
  // A row whose maximum is still -inf keeps zeros (exp is taken against 0).
  void (*softmax_update)(float* st, int64_t n_keys, int64_t n_rows, float* row_max, float* row_sum, float* rescale);
  // The same step on a query-major tile s[n_rows][n_keys] (vectors along keys),
  // for blocks of few query rows (decode).
  void (*softmax_update_rows)(float* s, int64_t n_rows, int64_t n_keys, float* row_max, float* row_sum,
                              float* rescale);
  // acc[r][:] *= rescale[r] for `rows` rows of `dim` (`dim` apart); rows whose
  // factor is 1 are left alone. The output rescale of the online softmax.
  void (*scale_rows)(float* acc, int64_t rows, int64_t dim, const float* rescale);
  // st[key][row] <- exp((st[key][row] - row_max[row]) - log_sum[row]) (backward's
  // recomputed probabilities; subtracting the max first keeps rows whose scores are
  // all about -3e38, such as finfo.min masks, from losing log_sum to rounding).
  void (*exp_minus_lse)(float* st, int64_t n_keys, int64_t n_rows, const float* row_max, const float* log_sum);
  // Widens `rows` rows of `dim` elements, src rows `src_stride` elements apart,
  // into fp32 rows `ld` apart: the K / V tiles of fp16, bf16 and int8 inputs.
  // int8 rows are multiplied by their scale, scales[r * scale_stride].
  void (*widen_f16_rows)(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld);
  void (*widen_bf16_rows)(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t dim, float* dst, int64_t ld);
  void (*widen_int8_rows)(const int8_t* src, int64_t src_stride, const float* scales, int64_t scale_stride,
                          int64_t rows, int64_t dim, float* dst, int64_t ld);

  // Decode tiles, reading K / V rows in their storage type (fp32, fp16, bf16,
  // or int8 times the row's scale, scales[j * scale_stride]) without widening
  // them first; null where the drivers widen tiles and use dot_rows / gemm.
  // scores[r][j] = q[r] . k[j] for `rows` fp32 query rows of `dim`;
  // acc[r][:] += sum_j p[r][j] v[j][:] with p [rows][keys].
  // Both prefetch the rows after their tile themselves (prefetch_decode_row).
  void (*decode_scores)(DType kv, int64_t rows, int64_t keys, int64_t dim, const float* q, const void* k,
                        int64_t k_stride, const float* k_scales, int64_t scale_stride, float* scores);
  void (*decode_accumulate)(DType kv, int64_t rows, int64_t keys, int64_t dim, const float* p, const void* v,
                            int64_t v_stride, const float* v_scales, int64_t scale_stride, float* acc);

  // bf16 pair products (AVX512-BF16 vdpbf16ps); null where the ISA lacks them,
  // and the drivers then widen bf16 to fp32 instead. Operands hold bf16 pairs
  // (x[2p], x[2p+1]) along the reduction:
  // C[m][n] += sum_p A(m, p) . B(p, n), where the pair A(m, p) starts at
  // a[m * a_row_stride + p * a_pair_stride] and B(p, n) at b[p * ldb + 2 n]
  // (strides in bf16 elements).
  void (*gemm_bf16_pairs)(int64_t M, int64_t N, int64_t pairs, const uint16_t* a, int64_t a_row_stride,
                          int64_t a_pair_stride, const uint16_t* b, int64_t ldb, float* c, int64_t ldc);
  // dst[p][c] = (src[2p][c], src[2p+1][c]) for `rows` fp32 rows of `cols` (`ld`
  // apart), rounded to bf16; an odd last row is paired with zeros.
  void (*pair_rows_f32_to_bf16)(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst);
  // The same interleave for bf16 rows `src_stride` elements apart (no rounding).
  void (*pair_rows_bf16)(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint16_t* dst);

  // fp16 products accumulated into fp32 lanes (ARM FEAT_FHM's FMLAL / FMLAL2);
  // null where the CPU lacks them, and the drivers then widen fp16 to fp32.
  // gemm_accumulate with fp16 operands: C[m][n] += sum_k A(m, k) * B[k][n],
  // A(m, k) = a[m * a_row_stride + k * a_col_stride], strides in fp16 elements.
  // The product of two fp16 values is exact in fp32, so each step rounds once,
  // as gemm_accumulate on the widened values does.
  void (*gemm_f16)(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row_stride, int64_t a_col_stride,
                   const uint16_t* b, int64_t ldb, float* c, int64_t ldc) = nullptr;
  // dot_rows with fp16 operands (decode's few query rows against fp16 keys).
  void (*dot_rows_f16)(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const uint16_t* b,
                       int64_t ldb, float* c, int64_t c_row_stride, int64_t c_col_stride) = nullptr;
};

// Decode reads every K / V row once, straight from DRAM, with too little work
// per row for the hardware prefetcher alone to keep enough lines in flight. The
// direct decode kernels therefore request, for each row they consume, the row
// decode_prefetch_distance() rows further on: requests go out at the pace rows
// are consumed (a whole tile's lines requested at once stall on the miss
// buffers and run at half the bandwidth). Prefetches never fault, so rows past
// the end of the cache cost nothing.
static inline int64_t decode_prefetch_distance(int64_t row_bytes) {
  // Of each stream; 8 KiB beat 4, 12 and 16 KiB on a Zen 5 (decode from DRAM at
  // one and two threads, 2-7% more than at 16 KiB).
  constexpr int64_t kAheadBytes = 8192;
  return (kAheadBytes + row_bytes - 1) / row_bytes;
}
// The prefetch helpers are always inlined: GCC takes an out-of-line function
// holding only prefetches for pure and deletes the calls to it.
//
// On x86 the rows are requested non-temporal (prefetchnta): each comes from
// DRAM once per step (several column passes or row blocks re-read it from
// cache soon after). Against prefetcht0, DRAM-bound steps at L = 4096 on a Zen 5
// ran 0-10% faster on one thread and 4-9% on two for 1, 4 and 8 query rows per
// KV head (int8 at 8 rows 1-2% slower, within noise; docs/architecture.md).
// Unmeasured on Intel, where such lines may skip L2. ARM keeps the default hint.
[[gnu::always_inline]] static inline void prefetch_decode_row(const void* row, int64_t row_bytes) {
#if POCKETML_ARCH_X86
  constexpr int kLocality = 0;
#else
  constexpr int kLocality = 3;
#endif
  for (int64_t offset = 0; offset < row_bytes; offset += 64)
    __builtin_prefetch(static_cast<const char*>(row) + offset, 0, kLocality);
}
// An int8 cache's per-position scales are two more streams of 4 bytes per
// position, too thin to keep pace by the same per-row requests: a decode kernel
// starting a tile of `keys` positions requests the next tile's scales at once,
// 16 lines for 256 positions (one DRAM-bound decode step at L = 4096, 2 threads,
// Zen 5: MHA +6%, GQA 32/8 +9%). Strided scales are left to the hardware.
[[gnu::always_inline]] static inline void prefetch_next_tile_scales(const float* scales, int64_t stride,
                                                                    int64_t keys) {
  if (stride == 1) prefetch_decode_row(scales + keys, keys * static_cast<int64_t>(sizeof(float)));
}

namespace scalar { extern const AttentionKernels attention_kernels; }
namespace avx2 { extern const AttentionKernels attention_kernels; }
namespace avx512 { extern const AttentionKernels attention_kernels; }
namespace neon { extern const AttentionKernels attention_kernels; }  // ARMv8.0 only
// BFDOT (FEAT_BF16): only the three bf16-pair entries are set; attention_tables()
// adds them to the NEON table where cpu_features().neon_bf16.
namespace neon_bf16 { extern const AttentionKernels bf16_pair_kernels; }
// FMLAL (FEAT_FHM): attention_tables() sets gemm_f16 and dot_rows_f16 in the
// NEON table where cpu_features().neon_fhm.
namespace neon_fhm {
void gemm_f16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t a_row_stride, int64_t a_col_stride,
              const uint16_t* b, int64_t ldb, float* c, int64_t ldc);
void dot_rows_f16(int64_t M, int64_t N, int64_t K, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                  float* c, int64_t c_row_stride, int64_t c_col_stride);
}  // namespace neon_fhm

const IsaTables<AttentionKernels>& attention_tables();

}  // namespace pocketml
