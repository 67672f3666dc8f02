#include "check.h"

#include <cstdio>
#include <exception>
#include <utility>
#include <vector>

namespace pocketml::testing {
namespace {

std::vector<std::pair<const char*, TestFn>>& registry() {
  static std::vector<std::pair<const char*, TestFn>> tests;
  return tests;
}

int g_failures_in_test = 0;

}  // namespace

bool register_test(const char* name, TestFn fn) {
  registry().emplace_back(name, fn);
  return true;
}

void record_failure(const char* file, int line, const std::string& message) {
  if (++g_failures_in_test <= 5) std::printf("    %s:%d: %s\n", file, line, message.c_str());
}

}  // namespace pocketml::testing

int main() {
  using namespace pocketml::testing;
  int passed = 0, failed = 0;
  for (auto& [name, fn] : registry()) {
    g_failures_in_test = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      record_failure(name, 0, std::string("uncaught exception: ") + e.what());
    }
    std::printf("%s %s\n", g_failures_in_test ? "FAIL" : "ok  ", name);
    (g_failures_in_test ? failed : passed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
