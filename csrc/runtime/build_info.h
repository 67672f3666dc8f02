#pragma once
#include <string>
#include <vector>

namespace pocketml {

struct BuildInfo {
  std::string version;
  std::string build_type;
  std::string compiler;
  std::string architecture;
  std::vector<std::string> compiled_isas;  // variants in this binary
  std::vector<std::string> supported_isas;  // ... that this CPU runs
  std::string active_isa;
  std::vector<std::string> cpu_features;
  int num_threads = 1;
  bool metal_available = false;
  std::string metal_device;
};

BuildInfo build_info();
std::string build_info_json();  // the same, for the C ABI

}  // namespace pocketml
