#include "attention/attention_kernels.h"

namespace pocketml {

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
      &neon::attention_kernels,
#else
      nullptr,
#endif
  };
  return tables;
}

}  // namespace pocketml
