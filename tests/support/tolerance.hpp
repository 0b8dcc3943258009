// The equivalence rule of SPEC.md §5, in one place. A rewritten path (candidate) and the vanilla
// path (baseline), computed in the same working precision, are both compared with a reference in
// double; the candidate passes when err(candidate) <= factor * err(baseline) + floor.
// Errors are norm-relative (Frobenius): ||x - ref|| / ||ref||.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "ttx/core/types.hpp"

namespace ttx::test {

struct Tolerance {
  double factor = 2.0;  ///< FlashAttention's rule: twice the vanilla path's own error
  double floor = 0.0;   ///< absolute slack on the relative error (covers a baseline that is exact)
  std::string why;      ///< where a factor is wider than 2: the computed reason (cond, precision)
};

/// The default floor for a working precision: a few units of roundoff.
template <class T>
double roundoff_floor(double units = 4.0) {
  return units * unit_roundoff<T>();
}

struct ErrorStats {
  double rel = 0;  ///< ||x - ref||_F / ||ref||_F (absolute when ref is 0)
  Index row = 0, col = 0;
  double worst_abs = 0;
};

template <class A, class B>
ErrorStats relative_error(const Eigen::MatrixBase<A>& x, const Eigen::MatrixBase<B>& ref) {
  ErrorStats s;
  double num = 0, den = 0;
  for (Index r = 0; r < ref.rows(); ++r)
    for (Index c = 0; c < ref.cols(); ++c) {
      const double rv = static_cast<double>(ref(r, c));
      const double diff = static_cast<double>(x(r, c)) - rv;
      num += diff * diff;
      den += rv * rv;
      if (!(std::abs(diff) <= s.worst_abs)) {  // also catches NaN
        s.worst_abs = std::abs(diff);
        s.row = r;
        s.col = c;
      }
    }
  s.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (std::isnan(num)) s.rel = std::numeric_limits<double>::infinity();
  return s;
}

template <class A, class B>
std::string shape_mismatch(const Eigen::MatrixBase<A>& x, const Eigen::MatrixBase<B>& ref) {
  if (x.rows() == ref.rows() && x.cols() == ref.cols()) return "";
  std::ostringstream os;
  os << "shape mismatch: " << x.rows() << "x" << x.cols() << " vs reference " << ref.rows() << "x"
     << ref.cols();
  return os.str();
}

/// SPEC.md §5: candidate and baseline (same working precision `type`) against a double reference.
template <class C, class B, class R>
::testing::AssertionResult within_rule(const Eigen::MatrixBase<C>& candidate,
                                       const Eigen::MatrixBase<B>& baseline,
                                       const Eigen::MatrixBase<R>& reference, const Tolerance& tol,
                                       const char* type) {
  if (auto m = shape_mismatch(candidate, reference); !m.empty())
    return ::testing::AssertionFailure() << "candidate " << m;
  if (auto m = shape_mismatch(baseline, reference); !m.empty())
    return ::testing::AssertionFailure() << "baseline " << m;
  const ErrorStats ec = relative_error(candidate, reference);
  const ErrorStats eb = relative_error(baseline, reference);
  const double allowed = tol.factor * eb.rel + tol.floor;
  std::ostringstream os;
  os.precision(9);
  os << "[" << type << ", " << reference.rows() << "x" << reference.cols() << "] candidate rel.err "
     << ec.rel << " vs baseline rel.err " << eb.rel << ", allowed " << allowed << " (factor "
     << tol.factor << ", floor " << tol.floor << ")";
  if (!tol.why.empty()) os << " because " << tol.why;
  os << "; worst candidate index (" << ec.row << "," << ec.col
     << "): candidate=" << static_cast<double>(candidate(ec.row, ec.col))
     << " baseline=" << static_cast<double>(baseline(ec.row, ec.col))
     << " reference=" << static_cast<double>(reference(ec.row, ec.col));
  // A non-finite error (NaN or inf output) never passes, even when the baseline is as bad.
  if (std::isfinite(ec.rel) && ec.rel <= allowed) return ::testing::AssertionSuccess() << os.str();
  return ::testing::AssertionFailure() << os.str();
}

/// One computation against a double reference with a bound that has a stated reason
/// (used where there is no vanilla path in the same precision, e.g. the oracle vs PyTorch).
template <class C, class R>
::testing::AssertionResult close_to(const Eigen::MatrixBase<C>& x,
                                    const Eigen::MatrixBase<R>& reference, double bound,
                                    const std::string& why, const char* type) {
  if (auto m = shape_mismatch(x, reference); !m.empty()) return ::testing::AssertionFailure() << m;
  const ErrorStats e = relative_error(x, reference);
  std::ostringstream os;
  os.precision(9);
  os << "[" << type << ", " << reference.rows() << "x" << reference.cols() << "] rel.err " << e.rel
     << ", bound " << bound << " (" << why << "); worst index (" << e.row << "," << e.col
     << "): value=" << static_cast<double>(x(e.row, e.col))
     << " reference=" << static_cast<double>(reference(e.row, e.col));
  if (std::isfinite(e.rel) && e.rel <= bound) return ::testing::AssertionSuccess() << os.str();
  return ::testing::AssertionFailure() << os.str();
}

/// Distance in units in the last place between two finite floats (0 = bitwise equal, up to ±0).
inline std::int64_t ulp_distance(float a, float b) {
  auto key = [](float f) {
    std::int32_t i;
    std::memcpy(&i, &f, sizeof i);
    return i < 0 ? std::int64_t(INT32_MIN) - i : std::int64_t(i);
  };
  return std::abs(key(a) - key(b));
}
inline std::int64_t ulp_distance(double a, double b) {
  auto key = [](double f) {
    std::int64_t i;
    std::memcpy(&i, &f, sizeof i);
    return i < 0 ? INT64_MIN - i : i;
  };
  const std::int64_t ka = key(a), kb = key(b);
  return ka > kb ? ka - kb : kb - ka;
}

/// Bitwise equality of two matrices of the same scalar (reports the first differing element).
template <class A, class B>
::testing::AssertionResult bitwise_equal(const Eigen::MatrixBase<A>& a,
                                         const Eigen::MatrixBase<B>& b) {
  static_assert(std::is_same_v<typename A::Scalar, typename B::Scalar>,
                "bitwise_equal compares matrices of one scalar type");
  if (auto m = shape_mismatch(a, b); !m.empty()) return ::testing::AssertionFailure() << m;
  for (Index r = 0; r < a.rows(); ++r)
    for (Index c = 0; c < a.cols(); ++c) {
      const auto x = a(r, c), y = b(r, c);
      if (std::memcmp(&x, &y, sizeof x) != 0)
        return ::testing::AssertionFailure()
               << "first differing element (" << r << "," << c << "): " << static_cast<double>(x)
               << " vs " << static_cast<double>(y) << " (" << a.rows() << "x" << a.cols() << ")";
    }
  return ::testing::AssertionSuccess();
}

}  // namespace ttx::test
