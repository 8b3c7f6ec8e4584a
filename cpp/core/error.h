// Errors a user can act on. Every failure names what is wrong (file, tensor, parameter, value).
// The bindings map GgufError -> sinkstream.GGUFError (a ValueError), ArgumentError -> ValueError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sinkstream {

// A GGUF file is malformed, truncated, or lies about its contents.
class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed a bad argument (size, mode, token id, ...).
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A model file is a valid GGUF but cannot run here (unknown architecture, missing tensor, wrong shape).
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A long computation was stopped between two of its steps (cancel request or Ctrl-C); the state it
// worked on stays consistent (every completed step is kept).
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// cat("a", 1, "b") -> "a1b": builds messages without printf format pitfalls.
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace sinkstream

// Argument check: throws ArgumentError with the message when cond is false.
#define SS_CHECK_ARG(cond, ...) \
  do { if (!(cond)) throw ::sinkstream::ArgumentError(::sinkstream::cat(__VA_ARGS__)); } while (0)

// Internal invariant: a failure here is a bug in sinkstream, reported instead of crashing.
#define SS_ASSERT(cond)                                                                      \
  do {                                                                                       \
    if (!(cond))                                                                             \
      throw std::logic_error(::sinkstream::cat("sinkstream internal error: ", #cond, " at ", \
                                               __FILE__, ":", __LINE__));                    \
  } while (0)
