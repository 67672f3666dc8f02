#include "capi/guard.h"

#include <atomic>

namespace pocketml::capi {
namespace {

thread_local std::string t_last_error;
std::atomic<pocketml_error_handler> g_handler{nullptr};
std::atomic<void*> g_handler_user_data{nullptr};

}  // namespace

void clear_error() { t_last_error.clear(); }

pocketml_status fail(pocketml_status status, const std::string& message) {
  t_last_error = message;
  if (pocketml_error_handler handler = g_handler.load()) handler(status, t_last_error.c_str(), g_handler_user_data.load());
  return status;
}

}  // namespace pocketml::capi

extern "C" {

const char* pocketml_last_error(void) { return pocketml::capi::t_last_error.c_str(); }

void pocketml_set_error_handler(pocketml_error_handler handler, void* user_data) {
  pocketml::capi::g_handler_user_data.store(user_data);
  pocketml::capi::g_handler.store(handler);
}

}
