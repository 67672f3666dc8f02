// C ABI: version, build info, ISA selection and threads.
#include <cstring>
#include <string>

#include "capi/guard.h"
#include "runtime/build_info.h"
#include "runtime/cpu_features.h"
#include "runtime/sha256.h"
#include "runtime/thread_pool.h"

using namespace pocketml;

namespace {
thread_local std::string t_returned_string;

const char* returned(std::string s) {
  t_returned_string = std::move(s);
  return t_returned_string.c_str();
}

}  // namespace

extern "C" {

const char* pocketml_version(void) { return POCKETML_VERSION; }

pocketml_status pocketml_info_json(const char** out_json) {
  return capi::guarded([&] {
    capi::require_pointer(out_json, "out_json");
    *out_json = returned(build_info_json());
  });
}

pocketml_status pocketml_active_isa(const char** out_name) {
  return capi::guarded([&] {
    capi::require_pointer(out_name, "out_name");
    *out_name = isa_name(active_isa());
  });
}

pocketml_status pocketml_set_isa(const char* name) {
  return capi::guarded([&] {
    capi::require_pointer(name, "name");
    set_active_isa(parse_isa(name));
  });
}

pocketml_status pocketml_set_num_threads(int32_t num_threads) {
  return capi::guarded([&] { ThreadPool::global().set_num_threads(num_threads); });
}

pocketml_status pocketml_get_num_threads(int32_t* out_num_threads) {
  return capi::guarded([&] {
    capi::require_pointer(out_num_threads, "out_num_threads");
    *out_num_threads = ThreadPool::global().num_threads();
  });
}

pocketml_status pocketml_sha256(const void* data, size_t size, char* out_hex) {
  return capi::guarded([&] {
    if (size > 0) capi::require_pointer(data, "data");
    capi::require_pointer(out_hex, "out_hex");
    const std::string hex = sha256_hex(data, size);
    std::memcpy(out_hex, hex.c_str(), hex.size() + 1);
  });
}

pocketml_status pocketml_dtype_size(pocketml_dtype dtype, size_t* out_size) {
  return capi::guarded([&] {
    capi::require_pointer(out_size, "out_size");
    *out_size = dtype_size(capi::to_dtype(dtype, "dtype"));
  });
}

}
