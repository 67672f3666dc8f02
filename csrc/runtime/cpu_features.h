#pragma once
// What the CPU can do and which kernel variant runs. This is the one place that
// holds the instruction-set policy: the best variant the machine supports is
// active unless POCKETML_ISA (or set_active_isa) forces a lower one, e.g. the
// scalar reference for a bug report.
#include <string>
#include <vector>

namespace pocketml {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

struct CpuFeatures {
  // x86
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
  // ARM
  bool neon = false, neon_fp16 = false, neon_dotprod = false, neon_i8mm = false, neon_bf16 = false;
  bool neon_fhm = false;  // FEAT_FHM: FMLAL / FMLAL2, fp16 products accumulated into fp32 lanes
};

const CpuFeatures& cpu_features();

const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);  // throws on an unknown name

// Variants compiled into this binary that this CPU can run, lowest first.
std::vector<Isa> supported_isas();
bool isa_supported(Isa isa);
Isa best_isa();

Isa active_isa();  // first call reads POCKETML_ISA
void set_active_isa(Isa isa);  // throws if the CPU or the build lacks it

std::vector<std::string> cpu_feature_names();  // e.g. {"avx2", "fma", "avx512f", ...}

}  // namespace pocketml
