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

/* The message of this thread's latest call that returns a pocketml_status:
 * "" when that call succeeded (each such call clears it on entry). */
POCKETML_API const char* pocketml_last_error(void);

/* Called on every failure, before the call returns; NULL removes the handler.
 * The handler and user_data are set together (a failing call on another thread
 * sees both or neither); pocketml calls made by the handler do not change the
 * failing call's pocketml_last_error(). A call failing on another thread may
 * have read the previous pair just before the change and still call it after
 * this function returns: keep the previous user_data valid until no pocketml
 * call that could fail is running on other threads. An exception thrown by a
 * C++ handler is caught and dropped: none crosses this boundary. */
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

/* ---- attention ----------------------------------------------------------------- */

/* Shapes of one attention call: q [batch, query_heads, query_len, head_dim],
 * k and v [batch, kv_heads, kv_len, head_dim], all contiguous. query_heads is a
 * multiple of kv_heads (grouped-query attention: K/V are never repeated). */
typedef struct pocketml_attention_shape {
  int64_t batch, query_heads, kv_heads, query_len, kv_len, head_dim;
} pocketml_attention_shape;

typedef enum pocketml_attention_mask {
  POCKETML_MASK_NONE = 0,
  POCKETML_MASK_CAUSAL = 1,              /* query i sees keys j <= i (torch's is_causal, top-left) */
  POCKETML_MASK_CAUSAL_BOTTOM_RIGHT = 2, /* query i sees keys j <= i + kv_len - query_len (a KV cache) */
} pocketml_attention_mask;

/*
 * out [batch, query_heads, query_len, head_dim] = softmax(scale * q k^T + mask) v,
 * fused (online softmax, fp32 accumulation). q, k, v and out share `dtype`
 * (POCKETML_FP32, POCKETML_FP16 or POCKETML_BF16). A row whose keys are all masked
 * gets zeros.
 */
POCKETML_API pocketml_status pocketml_attention_forward(const void* q, const void* k, const void* v,
                                                        pocketml_dtype dtype, const pocketml_attention_shape* shape,
                                                        float scale, pocketml_attention_mask mask, void* out);

/*
 * One decode step: q [batch, query_heads, query_len <= 8, head_dim] against the
 * first `length` positions of a KV cache k_cache, v_cache [batch, kv_heads,
 * shape->kv_len (the capacity), head_dim]; the queries are the last query_len of
 * those positions (causal, bottom-right). The KV length is split across threads.
 */
POCKETML_API pocketml_status pocketml_attention_decode(const void* q, const void* k_cache, const void* v_cache,
                                                       pocketml_dtype dtype, const pocketml_attention_shape* shape,
                                                       int64_t length, float scale, void* out);

/* ---- transformer decoder ----------------------------------------------------------- */

/*
 * A Llama-style decoder (token embedding, RMSNorm, RoPE in Hugging Face's
 * rotate-half layout, GQA attention with a KV cache, SwiGLU MLP, tied LM head)
 * on pocketml's quantized matmul and attention kernels. pocketml_decoder_new
 * copies every weight, so the caller's buffers may be freed afterwards. A
 * handle holds its KV cache and scratch: use it from one thread at a time.
 */
typedef struct pocketml_decoder_s* pocketml_decoder;

typedef struct pocketml_decoder_config {
  int64_t vocab_size, hidden_size, intermediate_size, num_layers;
  int64_t num_heads, num_kv_heads, head_dim; /* num_kv_heads divides num_heads; head_dim even */
  int64_t max_seq_len;                        /* KV cache capacity in tokens */
  float rms_norm_eps, rope_theta;
} pocketml_decoder_config;

/* One layer; weights are [out_features, in_features], norms fp32 [hidden_size]. */
typedef struct pocketml_decoder_layer {
  const float* attn_norm;
  pocketml_quantized_weight q_proj, k_proj, v_proj, o_proj; /* [heads * head_dim | kv_heads * head_dim, hidden] */
  const float* mlp_norm;
  pocketml_quantized_weight gate_proj, up_proj, down_proj;
} pocketml_decoder_layer;

/* embedding [vocab_size, hidden_size] is also the LM head (tied); layers[num_layers]. */
POCKETML_API pocketml_status pocketml_decoder_new(const pocketml_decoder_config* config,
                                                  const pocketml_quantized_weight* embedding,
                                                  const pocketml_decoder_layer* layers, const float* final_norm,
                                                  pocketml_decoder* out_decoder);
POCKETML_API pocketml_status pocketml_decoder_free(pocketml_decoder decoder); /* NULL is a no-op */

/* Appends `count` tokens (int32 ids) after the cached ones and writes their fp32
 * logits [count, vocab_size]: the prompt in one call, then one token per step. */
POCKETML_API pocketml_status pocketml_decoder_forward(pocketml_decoder decoder, const int32_t* tokens, int64_t count,
                                                      float* out_logits);
POCKETML_API pocketml_status pocketml_decoder_length(pocketml_decoder decoder, int64_t* out_length);
POCKETML_API pocketml_status pocketml_decoder_reset(pocketml_decoder decoder); /* empties the KV cache */

#ifdef __cplusplus
}
#endif

#endif /* POCKETML_POCKETML_H */
