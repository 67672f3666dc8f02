#include "runtime/build_info.h"

#include "backends/metal_backend.h"
#include "runtime/cpu_features.h"
#include "runtime/thread_pool.h"

namespace pocketml {
namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_string(items[i]);
  return out + "]";
}

}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.version = POCKETML_VERSION;
  info.build_type = POCKETML_BUILD_TYPE;
  info.compiler = POCKETML_COMPILER;
#if POCKETML_ARCH_X86
  info.architecture = "x86_64";
  info.compiled_isas = {"scalar", "avx2", "avx512"};
#elif POCKETML_ARCH_ARM
  info.architecture = "aarch64";
  info.compiled_isas = {"scalar", "neon"};
#else
  info.architecture = "generic";
  info.compiled_isas = {"scalar"};
#endif
  for (Isa isa : supported_isas()) info.supported_isas.emplace_back(isa_name(isa));
  info.active_isa = isa_name(active_isa());
  info.cpu_features = cpu_feature_names();
  info.num_threads = ThreadPool::global().num_threads();
  info.metal_available = metal::available();
  info.metal_device = metal::device_name();
  return info;
}

std::string build_info_json() {
  const BuildInfo info = build_info();
  std::string out = "{";
  out += "\"version\": " + json_string(info.version);
  out += ", \"build_type\": " + json_string(info.build_type);
  out += ", \"compiler\": " + json_string(info.compiler);
  out += ", \"architecture\": " + json_string(info.architecture);
  out += ", \"compiled_isas\": " + json_list(info.compiled_isas);
  out += ", \"supported_isas\": " + json_list(info.supported_isas);
  out += ", \"active_isa\": " + json_string(info.active_isa);
  out += ", \"cpu_features\": " + json_list(info.cpu_features);
  out += ", \"num_threads\": " + std::to_string(info.num_threads);
  out += ", \"metal_available\": " + std::string(info.metal_available ? "true" : "false");
  out += ", \"metal_device\": " + json_string(info.metal_device);
  return out + "}";
}

}  // namespace pocketml
