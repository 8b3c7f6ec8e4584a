// A minimal test harness for the C++ unit tests (run by ctest): CHECK records a failure with its
// location and goes on, so one run lists every broken case; main returns check_summary().
// No framework download: this header is all of it.
#pragma once
#include <atomic>
#include <cstdio>
#include <sstream>
#include <string>

namespace sinkstream_test {

// Atomic: a test may check from several threads.
inline std::atomic<int>& failure_count() {
  static std::atomic<int> count{0};
  return count;
}
inline std::atomic<int>& check_count() {
  static std::atomic<int> count{0};
  return count;
}

// Stops printing after this many failures (a broken invariant in a loop would flood the log).
constexpr int kMaxPrintedFailures = 50;

inline void report_failure(const char* file, int line, const std::string& what) {
  if (++failure_count() <= kMaxPrintedFailures) std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}

// Prints the totals; the process exit code (0 = all passed) for main to return.
inline int check_summary(const char* test_name) {
  std::fprintf(stderr, "%s: %d checks, %d failed\n", test_name, check_count().load(), failure_count().load());
  return failure_count() == 0 ? 0 : 1;
}

template <typename A, typename B>
std::string describe_pair(const A& a, const B& b) {
  std::ostringstream out;
  out << a << " vs " << b;
  return out.str();
}

}  // namespace sinkstream_test

// CHECK(cond, context...): context values are streamed into the failure message.
#define CHECK(cond, ...)                                                                         \
  do {                                                                                           \
    ++::sinkstream_test::check_count();                                                          \
    if (!(cond)) {                                                                               \
      std::ostringstream check_context_;                                                         \
      check_context_ << #cond;                                                                   \
      ::sinkstream_test::detail_append(check_context_, ##__VA_ARGS__);                           \
      ::sinkstream_test::report_failure(__FILE__, __LINE__, check_context_.str());               \
    }                                                                                            \
  } while (0)

#define CHECK_EQ(a, b, ...)                                                                      \
  do {                                                                                           \
    ++::sinkstream_test::check_count();                                                          \
    const auto check_a_ = (a);                                                                   \
    const auto check_b_ = (b);                                                                   \
    if (!(check_a_ == check_b_)) {                                                               \
      std::ostringstream check_context_;                                                         \
      check_context_ << #a " == " #b " (" << ::sinkstream_test::describe_pair(check_a_, check_b_) << ")"; \
      ::sinkstream_test::detail_append(check_context_, ##__VA_ARGS__);                           \
      ::sinkstream_test::report_failure(__FILE__, __LINE__, check_context_.str());               \
    }                                                                                            \
  } while (0)

// CHECK_THROWS(ExceptionType, statement): statement must throw exactly that type (or a subclass).
#define CHECK_THROWS(Exception, statement, ...)                                                  \
  do {                                                                                           \
    ++::sinkstream_test::check_count();                                                          \
    bool check_threw_ = false;                                                                   \
    std::string check_other_;                                                                    \
    try {                                                                                        \
      statement;                                                                                 \
    } catch (const Exception&) {                                                                 \
      check_threw_ = true;                                                                       \
    } catch (const std::exception& e) {                                                          \
      check_other_ = std::string(" (threw another exception: ") + e.what() + ")";                \
    }                                                                                            \
    if (!check_threw_) {                                                                         \
      std::ostringstream check_context_;                                                         \
      check_context_ << #statement " throws " #Exception << check_other_;                        \
      ::sinkstream_test::detail_append(check_context_, ##__VA_ARGS__);                           \
      ::sinkstream_test::report_failure(__FILE__, __LINE__, check_context_.str());               \
    }                                                                                            \
  } while (0)

namespace sinkstream_test {
inline void detail_append(std::ostringstream&) {}
template <typename... Parts>
void detail_append(std::ostringstream& out, const Parts&... parts) {
  out << " |";
  ((out << ' ' << parts), ...);
}
}  // namespace sinkstream_test
