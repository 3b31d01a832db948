// Error types and ENFORCE-style checks shared by every cleave library.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cleave {

// A programming or internal error, or a peer that broke the protocol.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An error the user caused (bad path, flag, certificate, data file): binaries print what() as one
// line and exit with code 2.
class UserError : public Error {
 public:
  using Error::Error;
};

// Input from a peer or a file failed validation (shape, count, bounds, NaN...). Servers map this to
// INVALID_ARGUMENT.
class InvalidInput : public Error {
 public:
  using Error::Error;
};

// Input that is well-formed but holds NaN or Inf where only finite numbers belong.
class NotFinite : public InvalidInput {
 public:
  using InvalidInput::InvalidInput;
};

// Input that is finite but beyond a bound on its magnitude (it would overflow what uses it).
class OutOfBounds : public InvalidInput {
 public:
  using InvalidInput::InvalidInput;
};

namespace detail {
template <typename... Args>
std::string Concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

}  // namespace cleave

// CLEAVE_ENFORCE(cond, "message ", value, ...) throws cleave::Error with file:line context.
#define CLEAVE_ENFORCE(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      throw ::cleave::Error(::cleave::detail::Concat(__FILE__, ":", __LINE__, ": ",        \
                                                     "check failed (" #cond "): ",         \
                                                     ##__VA_ARGS__));                      \
    }                                                                                      \
  } while (0)

// CLEAVE_CHECK_INPUT(cond, "message", ...) throws cleave::InvalidInput with just the message: it
// is shown to peers and users, so no source locations.
#define CLEAVE_CHECK_INPUT(cond, ...)                                                  \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      throw ::cleave::InvalidInput(::cleave::detail::Concat(__VA_ARGS__));             \
    }                                                                                  \
  } while (0)

// CLEAVE_CHECK_USER(cond, "message", ...) throws cleave::UserError (exit code 2 in binaries).
#define CLEAVE_CHECK_USER(cond, ...)                                                   \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      throw ::cleave::UserError(::cleave::detail::Concat(__VA_ARGS__));                \
    }                                                                                  \
  } while (0)
