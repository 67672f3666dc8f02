#pragma once
// One error type for the whole core. Its kind decides the Python exception
// (bindings) and the status code (C ABI); the message says which argument was
// wrong, what was expected and what was given.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pocketml {

enum class ErrorKind {
  InvalidArgument,  // ValueError
  Type,             // TypeError
  Runtime,          // RuntimeError
  NotImplemented,   // NotImplementedError
  OutOfMemory,      // MemoryError
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

// "argument 'x': expected a contiguous tensor, got strides (1, 4)"
inline std::string argument_message(std::string_view arg, std::string_view expected, std::string_view got) {
  std::string msg = "argument '";
  msg.append(arg).append("': expected ").append(expected).append(", got ").append(got);
  return msg;
}

// A number for a message, 1e-50 as 1e-50 and 3e38 as 3e+38 (std::to_string
// prints 0.000000 and 39 digits).
inline std::string shortest_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

[[noreturn]] inline void fail_argument(ErrorKind kind, std::string_view arg, std::string_view expected,
                                       std::string_view got) {
  throw Error(kind, argument_message(arg, expected, got));
}

}  // namespace pocketml
