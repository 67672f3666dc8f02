#include "capi/guard.h"

#include <mutex>

namespace pocketml::capi {
namespace {

thread_local std::string t_last_error;

// The handler and its user data change together: a failing call on another
// thread must never see one without the other.
struct Handler {
  pocketml_error_handler function = nullptr;
  void* user_data = nullptr;
};
std::mutex g_handler_mutex;
Handler g_handler;

Handler current_handler() {
  std::lock_guard<std::mutex> lock(g_handler_mutex);
  return g_handler;
}

}  // namespace

void clear_error() { t_last_error.clear(); }

pocketml_status fail(pocketml_status status, const std::string& message) {
  t_last_error = message;
  if (const Handler handler = current_handler(); handler.function != nullptr) {
    try {
      handler.function(status, message.c_str(), handler.user_data);
    } catch (...) {  // a C++ handler that throws: no exception crosses the C ABI (pocketml.h)
    }
    t_last_error = message;  // a pocketml call made by the handler cleared or replaced it
  }
  return status;
}

}  // namespace pocketml::capi

extern "C" {

const char* pocketml_last_error(void) { return pocketml::capi::t_last_error.c_str(); }

void pocketml_set_error_handler(pocketml_error_handler handler, void* user_data) {
  std::lock_guard<std::mutex> lock(pocketml::capi::g_handler_mutex);
  pocketml::capi::g_handler = {handler, user_data};
}

}
