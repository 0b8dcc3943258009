// Bad-input checks: the call must throw exactly the expected ttx error type, and its message must
// contain every given fragment (the argument's name, the expected and the actual value).
//   EXPECT_TRUE(test::throws<ShapeError>([&] { f(bad); }, {"wk", "expected 32x32", "got 32x16"}));
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <initializer_list>
#include <string>
#include <typeinfo>
#include <utility>

#include "ttx/core/error.hpp"

namespace ttx::test {

template <class E, class F>
::testing::AssertionResult throws(F&& call, std::initializer_list<const char*> fragments) {
  try {
    call();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const char* part : fragments)
      if (msg.find(part) == std::string::npos)
        return ::testing::AssertionFailure() << "message lacks '" << part << "': " << msg;
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "threw another type (" << typeid(e).name() << "): " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw " << typeid(E).name();
}

/// The message of the ttx::Error that `call` throws, or "<no error>" (for checks that look at
/// the text only).
template <class F>
std::string error_text(F&& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

/// Adds a failure unless `call` throws an E (default: any ttx::Error) whose message contains
/// `text`: throws<E> for the common one-fragment case.
template <class E = Error, class F>
void expect_error_containing(F&& call, const std::string& text) {
  EXPECT_TRUE(throws<E>(std::forward<F>(call), {text.c_str()}));
}

}  // namespace ttx::test
