/*
 * pocketml C ABI: the stable entry point for Swift and other hosts.
 *
 * Every call returns a pocketml_status; POCKETML_OK is 0. On failure the
 * calling thread's pocketml_last_error() holds a message saying which argument
 * was wrong, what was expected and what was given. No C++ exception crosses
 * this boundary. Results come back through out-parameters. Strings returned
 * by the library stay valid until the next call on the same thread.
 */
#ifndef POCKETML_POCKETML_H
#define POCKETML_POCKETML_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define POCKETML_API __declspec(dllexport)
#else
#define POCKETML_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pocketml_status {
  POCKETML_OK = 0,
  POCKETML_ERROR_INVALID_ARGUMENT = 1, /* a value is out of range or shapes disagree */
  POCKETML_ERROR_TYPE = 2,             /* a dtype or handle of the wrong kind */
  POCKETML_ERROR_RUNTIME = 3,          /* I/O, corrupt data, internal failure */
  POCKETML_ERROR_NOT_IMPLEMENTED = 4,  /* a valid request this build does not support */
  POCKETML_ERROR_OUT_OF_MEMORY = 5,
} pocketml_status;

/* Element types; the values match the core's DType. */
typedef enum pocketml_dtype {
  POCKETML_FP32 = 0,
  POCKETML_FP16 = 1,
  POCKETML_BF16 = 2,
  POCKETML_INT8 = 3,
  POCKETML_UINT8 = 4,
  POCKETML_INT32 = 5,
  POCKETML_INT64 = 6,
} pocketml_dtype;

/* The message of the last failed call on this thread ("" if none). */
POCKETML_API const char* pocketml_last_error(void);

/* Called on every failure, before the call returns; NULL removes the handler. */
typedef void (*pocketml_error_handler)(pocketml_status status, const char* message, void* user_data);
POCKETML_API void pocketml_set_error_handler(pocketml_error_handler handler, void* user_data);

POCKETML_API const char* pocketml_version(void);

/* Build and machine description as a JSON object (version, ISAs, threads, backends). */
POCKETML_API pocketml_status pocketml_info_json(const char** out_json);

/* The active kernel variant ("scalar", "avx2", "avx512", "neon") and a way to force a lower one. */
POCKETML_API pocketml_status pocketml_active_isa(const char** out_name);
POCKETML_API pocketml_status pocketml_set_isa(const char* name);

POCKETML_API pocketml_status pocketml_set_num_threads(int32_t num_threads);
POCKETML_API pocketml_status pocketml_get_num_threads(int32_t* out_num_threads);

/* SHA-256 of `size` bytes as 64 lowercase hex digits plus a terminating NUL in out_hex[65]. */
POCKETML_API pocketml_status pocketml_sha256(const void* data, size_t size, char* out_hex);

/* Element size in bytes of a dtype. */
POCKETML_API pocketml_status pocketml_dtype_size(pocketml_dtype dtype, size_t* out_size);

/*
 * Converts `count` contiguous elements between POCKETML_FP32, POCKETML_FP16 and
 * POCKETML_BF16 with round-to-nearest-even (equal dtypes copy). `src` and `dst`
 * must not overlap.
 */
POCKETML_API pocketml_status pocketml_convert(const void* src, pocketml_dtype src_dtype, void* dst,
                                              pocketml_dtype dst_dtype, size_t count);

/* ---- quantized weights (docs/formats.md, "Quantized weights") ---------------- */

typedef enum pocketml_quant_kind {
  POCKETML_QUANT_AFFINE = 0, /* w = scale * (code - zero_point), Core ML constexpr_blockwise_shift_scale */
  POCKETML_QUANT_LUT = 1,    /* w = lut[code], Core ML constexpr_lut_to_dense */
} pocketml_quant_kind;

/*
 * A quantized weight [rows, cols] in pocketml's packed layout. The arrays are
 * row-major and stay owned by the caller; nothing is copied.
 */
typedef struct pocketml_quantized_weight {
  pocketml_quant_kind kind;
  int32_t bits;               /* affine: 2, 3, 4, 5, 6, 8; lut: 1, 2, 3, 4, 6, 8 */
  int64_t rows, cols;         /* N output channels, K input channels */
  int64_t group_size;         /* affine: columns per scale (32, 64, 128 or cols); lut: rows per table */
  const uint8_t* packed;      /* [rows, pocketml_quant_packed_row_bytes(cols, bits)] */
  const void* scales;         /* affine: [rows, cols / group_size] of scale_dtype */
  pocketml_dtype scale_dtype; /* POCKETML_FP16, POCKETML_BF16 or POCKETML_FP32 */
  const uint8_t* zero_points; /* affine: [rows, cols / group_size]; NULL: symmetric (2^(bits-1)) */
  const void* lut;            /* lut: [rows / group_size, 2^bits] of lut_dtype */
  pocketml_dtype lut_dtype;
} pocketml_quantized_weight;

/* Bytes of one packed row: ceil(cols / 32) * 4 * bits. */
POCKETML_API pocketml_status pocketml_quant_packed_row_bytes(int64_t cols, int32_t bits, int64_t* out_bytes);

/*
 * out [m, rows] = x [m, cols] @ W^T, fp32 accumulation over the dequantized
 * weights (the same kernels and results as pocketml.quant.matmul). x and out are
 * contiguous, in POCKETML_FP32, POCKETML_FP16 or POCKETML_BF16.
 */
POCKETML_API pocketml_status pocketml_quant_matmul(const void* x, pocketml_dtype x_dtype, int64_t m,
                                                   const pocketml_quantized_weight* weight, void* out,
                                                   pocketml_dtype out_dtype);

/* out [rows, cols] = the dequantized weight, in POCKETML_FP32, POCKETML_FP16 or POCKETML_BF16. */
POCKETML_API pocketml_status pocketml_quant_dequantize(const pocketml_quantized_weight* weight, void* out,
                                                       pocketml_dtype out_dtype);

#ifdef __cplusplus
}
#endif

#endif /* POCKETML_POCKETML_H */
