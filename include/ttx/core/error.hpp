// ttx errors: every public entry point checks its cheap contracts (shapes, capacities, head
// layouts) in release builds too and raises one of these, naming the argument, the expected and
// the actual value. Builds with -fno-exceptions get a handler hook instead (set_error_handler).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ttx {

/// Base of every error ttx raises.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/// A matrix or vector has the wrong number of rows/columns, or a count is out of range.
class ShapeError : public Error {
 public:
  using Error::Error;
};
/// A cache would overflow its caller-chosen capacity (ttx never reallocates behind your back).
class CapacityError : public Error {
 public:
  using Error::Error;
};
/// A numerical condition: a singular or too ill-conditioned matrix, a value out of a type's range.
class NumericalError : public Error {
 public:
  using Error::Error;
};
/// The request is well-formed but the trick does not apply (e.g. K-only cache with e <= d/2).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

enum class ErrorKind { shape, capacity, numerical, unsupported, other };

/// Called instead of `throw` when exceptions are disabled; must not return.
using ErrorHandler = void (*)(ErrorKind kind, const char* message);

namespace detail {
inline ErrorHandler& error_handler_slot() {
  static ErrorHandler handler = nullptr;
  return handler;
}
}  // namespace detail

/// Installs the handler used by -fno-exceptions builds (ignored when exceptions are on).
inline void set_error_handler(ErrorHandler handler) {
  detail::error_handler_slot() = handler;
}

namespace detail {

[[noreturn]] inline void raise(ErrorKind kind, const std::string& message) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  switch (kind) {
    case ErrorKind::shape:
      throw ShapeError(message);
    case ErrorKind::capacity:
      throw CapacityError(message);
    case ErrorKind::numerical:
      throw NumericalError(message);
    case ErrorKind::unsupported:
      throw UnsupportedError(message);
    default:
      throw Error(message);
  }
#else
  if (ErrorHandler h = error_handler_slot()) h(kind, message.c_str());
  std::fprintf(stderr, "%s\n", message.c_str());
  std::abort();
#endif
}

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << parts);
  return os.str();
}

/// "ttx::fn: arg expected X, got Y" — the one message shape every check uses.
template <class E, class A>
[[noreturn]] void raise_mismatch(ErrorKind kind, const char* fn, const char* arg, const E& expected,
                                 const A& actual) {
  raise(kind, concat("ttx::", fn, ": ", arg, " expected ", expected, ", got ", actual));
}

/// Shape check: `arg` must equal `expected`.
template <class I, class J>
inline void check_dim(const char* fn, const char* arg, I expected, J actual) {
  if (static_cast<long long>(expected) != static_cast<long long>(actual))
    raise_mismatch(ErrorKind::shape, fn, arg, static_cast<long long>(expected),
                   static_cast<long long>(actual));
}

/// Shape check on a whole matrix: rows x cols.
template <class M>
inline void check_shape(const char* fn, const char* arg, const M& m, long long rows,
                        long long cols) {
  if (m.rows() != rows || m.cols() != cols)
    raise_mismatch(ErrorKind::shape, fn, arg, concat(rows, "x", cols),
                   concat(m.rows(), "x", m.cols()));
}

/// Generic contract check (conditions that are not an equality): the message is `what`'s parts
/// streamed together, formatted only on failure. Pass the parts, not one concat(...): checks run on
/// every call of per-token kernels, where an ostringstream (~1 us) measured 1 % of a batch-1 GEMV.
template <class... Parts>
inline void require(bool ok, ErrorKind kind, const char* fn, const Parts&... what) {
  if (!ok) raise(kind, concat("ttx::", fn, ": ", what...));
}

}  // namespace detail
}  // namespace ttx

// Layers keep their private helpers in their own `detail` namespaces (ttx::kernel::detail, ...).
// Inside ttx::kernel an unqualified `detail::check_dim` finds ttx::kernel::detail first and would
// stop there; these using-directives let qualified lookup fall through to the shared checks.
namespace ttx::kernel::detail {
using namespace ::ttx::detail;
}  // namespace ttx::kernel::detail
namespace ttx::rewrite::detail {
using namespace ::ttx::detail;
}  // namespace ttx::rewrite::detail
