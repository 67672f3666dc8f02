#include "attention/attention_kernels.h"

namespace pocketml {
namespace {

#if POCKETML_ARCH_ARM
// The NEON table, with BFDOT's bf16 pair products where the CPU has FEAT_BF16
// and FMLAL's fp16 products where it has FEAT_FHM.
const AttentionKernels* neon_attention_kernels() {
  static const AttentionKernels kernels = [] {
    AttentionKernels k = neon::attention_kernels;
    if (cpu_features().neon_bf16) {
      k.gemm_bf16_pairs = neon_bf16::bf16_pair_kernels.gemm_bf16_pairs;
      k.pair_rows_f32_to_bf16 = neon_bf16::bf16_pair_kernels.pair_rows_f32_to_bf16;
      k.pair_rows_bf16 = neon_bf16::bf16_pair_kernels.pair_rows_bf16;
    }
    if (cpu_features().neon_fhm) {
      k.gemm_f16 = neon_fhm::gemm_f16;
      k.dot_rows_f16 = neon_fhm::dot_rows_f16;
    }
    return k;
  }();
  return &kernels;
}
#endif

}  // namespace

const IsaTables<AttentionKernels>& attention_tables() {
  static const IsaTables<AttentionKernels> tables = {
      &scalar::attention_kernels,
#if POCKETML_ARCH_X86
      &avx2::attention_kernels,
      &avx512::attention_kernels,
#else
      nullptr,
      nullptr,
#endif
#if POCKETML_ARCH_ARM
      neon_attention_kernels(),
#else
      nullptr,
#endif
  };
  return tables;
}

}  // namespace pocketml
