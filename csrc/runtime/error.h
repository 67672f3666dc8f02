#pragma once
// One error type for the whole core. Its kind decides the Python exception
// (bindings) and the status code (C ABI); the message says which argument was
// wrong, what was expected and what was given.
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

[[noreturn]] inline void fail_argument(ErrorKind kind, std::string_view arg, std::string_view expected,
                                       std::string_view got) {
  throw Error(kind, argument_message(arg, expected, got));
}

}  // namespace pocketml
