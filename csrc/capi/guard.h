#pragma once
// Turns a C++ call into a C status: every exception is caught here, recorded as
// the thread's last error and passed to the error handler.
#include <new>
#include <string>

#include "pocketml/pocketml.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace pocketml::capi {

void clear_error();
pocketml_status fail(pocketml_status status, const std::string& message);

inline pocketml_status status_of(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return POCKETML_ERROR_INVALID_ARGUMENT;
    case ErrorKind::Type: return POCKETML_ERROR_TYPE;
    case ErrorKind::Runtime: return POCKETML_ERROR_RUNTIME;
    case ErrorKind::NotImplemented: return POCKETML_ERROR_NOT_IMPLEMENTED;
    case ErrorKind::OutOfMemory: return POCKETML_ERROR_OUT_OF_MEMORY;
  }
  return POCKETML_ERROR_RUNTIME;
}

template <class Body>
pocketml_status guarded(Body&& body) {
  try {
    clear_error();
    body();
    return POCKETML_OK;
  } catch (const Error& e) {
    return fail(status_of(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(POCKETML_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(POCKETML_ERROR_RUNTIME, e.what());
  } catch (...) {
    return fail(POCKETML_ERROR_RUNTIME, "unknown C++ exception");
  }
}

// Rejects a NULL pointer argument with a message naming it.
inline void require_pointer(const void* p, const char* arg) {
  if (p == nullptr) fail_argument(ErrorKind::InvalidArgument, arg, "a non-NULL pointer", "NULL");
}

// Validates an enum value that came from C, where any integer can arrive.
inline DType to_dtype(pocketml_dtype dtype, const char* arg) {
  if (static_cast<int>(dtype) < 0 || static_cast<int>(dtype) >= kNumDTypes)
    fail_argument(ErrorKind::Type, arg, "a pocketml_dtype value (0..6)", std::to_string(static_cast<int>(dtype)));
  return static_cast<DType>(dtype);
}

}  // namespace pocketml::capi
