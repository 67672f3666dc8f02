#pragma once
// A minimal test harness for the native test programs, which must run where no
// Python exists (under qemu-aarch64, on a device). TEST(name) registers a test;
// CHECK records a failure with its location and keeps going. main() ends with
// the line "N passed, N failed" that CI reads.
#include <sstream>
#include <string>

namespace pocketml::testing {

using TestFn = void (*)();
bool register_test(const char* name, TestFn fn);
void record_failure(const char* file, int line, const std::string& message);

}  // namespace pocketml::testing

#define TEST(name)                                                                        \
  static void name();                                                                     \
  static const bool name##_registered = pocketml::testing::register_test(#name, name);   \
  static void name()

#define CHECK(cond, message)                                                      \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::ostringstream check_stream_;                                           \
      check_stream_ << #cond << ": " << message;                                  \
      pocketml::testing::record_failure(__FILE__, __LINE__, check_stream_.str()); \
    }                                                                             \
  } while (0)
