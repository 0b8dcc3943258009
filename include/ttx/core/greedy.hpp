// Greedy decoding over any model's step function: the one loop behind every generate() in ttx
// (the reference models, kernel::SkiplessModel, the demo's runners).
#pragma once

#include <type_traits>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

namespace detail {
template <class StepFn>
using step_scalar_t =
    typename std::decay_t<std::invoke_result_t<StepFn&, const std::vector<int>&>>::Scalar;
}  // namespace detail

/// Greedy decoding: step(tokens) runs the tokens through the model and returns logits, one row
/// per token or only the last token's (any Eigen matrix, n x vocab or 1 x vocab: the last row
/// counts). First step(prompt); then `steps` times the arg-max token of the last row (ties: the
/// lower id, as Eigen's maxCoeff) is chosen and, unless it is the last, fed back as step({token}).
/// Row i of `logits` (when given) holds the logits that chose generated token i. `fn` names the
/// caller in the error for an empty prompt (ShapeError).
///   auto out = ttx::greedy_generate([&](const std::vector<int>& t) { return model.forward(t); },
///                                   {1, 2, 3}, 16);
template <class StepFn, class Logits = RowVector<detail::step_scalar_t<StepFn>>>
std::vector<int> greedy_generate(StepFn&& step, const std::vector<int>& prompt, Index steps,
                                 std::vector<Logits>* logits = nullptr,
                                 const char* fn = "greedy_generate") {
  if (prompt.empty())  // raise() is [[noreturn]]
    detail::raise(ErrorKind::shape,
                  detail::concat("ttx::", fn, ": prompt expected at least 1 token, got 0"));
  auto last_row = [&step](const std::vector<int>& tokens) {
    const auto& L = step(tokens);
    return Logits(L.row(L.rows() - 1));
  };
  std::vector<int> out;
  Logits last = last_row(prompt);
  for (Index s = 0; s < steps; ++s) {
    Index best = 0;
    last.maxCoeff(&best);
    if (logits) logits->push_back(last);
    out.push_back(static_cast<int>(best));
    if (s + 1 < steps) last = last_row(std::vector<int>{static_cast<int>(best)});
  }
  return out;
}

}  // namespace ttx
