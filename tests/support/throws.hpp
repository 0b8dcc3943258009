// Bad-input checks: the call must throw exactly the expected ttx error type, and its message must
// contain every given fragment (the argument's name, the expected and the actual value).
//   EXPECT_TRUE(test::throws<ShapeError>([&] { f(bad); }, {"wk", "expected 32x32", "got 32x16"}));
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <initializer_list>
#include <string>
#include <typeinfo>

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

/// Adds a failure unless `call` throws a ttx::Error whose message contains `text` (any subclass;
/// use throws<E> to pin the type as well).
template <class F>
void expect_error_containing(F&& call, const std::string& text) {
  try {
    call();
    ADD_FAILURE() << "expected a ttx::Error containing \"" << text << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

}  // namespace ttx::test
