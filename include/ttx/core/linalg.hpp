// Double-precision solves for the offline rewrites: A X = B by LU with partial pivoting (never an
// explicit inverse), with the condition-number estimate and the reconstruction residual every
// rewrite reports.
#pragma once

#include <Eigen/LU>
#include <cmath>
#include <limits>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

struct SolveReport {
  double cond_estimate = 0;  ///< 1-norm condition number estimate of A (LAPACK-style rcond)
  double residual = 0;       ///< ||A X - B||_F / ||B||_F
};

/// X = A^{-1} B for square A, in double. NumericalError when A is singular to working precision
/// (estimated reciprocal condition below n * eps) — `what` names the matrix in the message.
template <class DA, class DB>
RowMatrix<double> solve(const Eigen::MatrixBase<DA>& A, const Eigen::MatrixBase<DB>& B,
                        SolveReport* report = nullptr, const char* what = "A") {
  const char* fn = "solve";
  detail::check_dim(fn, (std::string(what) + ".cols() (square)").c_str(), A.rows(), A.cols());
  detail::check_dim(fn, "B.rows()", A.rows(), B.rows());
  const Eigen::MatrixXd Ad = A.template cast<double>();
  const Eigen::MatrixXd Bd = B.template cast<double>();
  Eigen::PartialPivLU<Eigen::MatrixXd> lu(Ad);
  const double rcond = lu.rcond();
  const double n = static_cast<double>(A.rows());
  if (!(rcond > n * std::numeric_limits<double>::epsilon()))
    detail::raise(
        ErrorKind::numerical,
        detail::concat("ttx::solve: ", what,
                       " is singular to double precision (estimated "
                       "reciprocal condition ",
                       rcond, ", expected > ", n * std::numeric_limits<double>::epsilon(), ")"));
  RowMatrix<double> X = lu.solve(Bd);
  if (report) {
    report->cond_estimate = 1.0 / rcond;
    const double nb = Bd.norm();
    report->residual = (Ad * X - Bd).norm() / (nb > 0 ? nb : 1.0);
  }
  return X;
}

}  // namespace ttx
