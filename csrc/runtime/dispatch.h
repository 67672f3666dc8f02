#pragma once
// Run-time dispatch: a kernel family fills one table per instruction set, and
// callers ask for the variant matching the active ISA. A missing variant falls
// back to the next lower one and finally to the scalar reference, so a family
// may add SIMD variants one at a time.
#include "runtime/cpu_features.h"

namespace pocketml {

template <class Kernels>
struct IsaTables {
  const Kernels* scalar = nullptr;  // required: the executable specification
  const Kernels* avx2 = nullptr;
  const Kernels* avx512 = nullptr;
  const Kernels* neon = nullptr;

  const Kernels& select(Isa isa) const {
    switch (isa) {
      case Isa::avx512:
        if (avx512) return *avx512;
        [[fallthrough]];
      case Isa::avx2:
        if (avx2) return *avx2;
        break;
      case Isa::neon:
        if (neon) return *neon;
        break;
      case Isa::scalar:
        break;
    }
    return *scalar;
  }
  const Kernels& active() const { return select(active_isa()); }
};

}  // namespace pocketml
