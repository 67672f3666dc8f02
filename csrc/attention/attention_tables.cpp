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
      nullptr,  // NEON variant: see the Apple silicon issue
  };
  return tables;
}

}  // namespace pocketml
