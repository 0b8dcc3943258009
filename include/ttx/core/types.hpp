// Eigen aliases and scalar traits shared by every layer. Matrices are row-major, one token per
// row (SPEC.md §0: row vectors, y = x W + b with W of shape in x out).
#pragma once

#include <Eigen/Core>
#include <limits>
#include <type_traits>

namespace ttx {

using Index = Eigen::Index;

/// Token-by-row matrix (n x width), also the (in x out) weight layout.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// One token (1 x width).
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic, Eigen::RowMajor>;

using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

/// Accumulator for a storage type: float for float/half/bfloat16, double for double.
template <class T>
struct accumulator {
  using type = float;
};
template <>
struct accumulator<double> {
  using type = double;
};
template <>
struct accumulator<long double> {
  using type = long double;
};
template <class T>
using accum_t = typename accumulator<T>::type;

/// Storage scalars the kernels and caches accept.
template <class T>
inline constexpr bool is_storage_type_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                          std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

/// Short name used in benchmark names and error messages.
template <class T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>)
    return "f32";
  else if constexpr (std::is_same_v<T, double>)
    return "f64";
  else if constexpr (std::is_same_v<T, bf16>)
    return "bf16";
  else if constexpr (std::is_same_v<T, f16>)
    return "f16";
  else if constexpr (std::is_same_v<T, long double>)
    return "f80";
  else
    return "unknown";
}

/// Largest finite value of a storage type, as double (for range/overflow checks).
template <class T>
inline double max_finite() {
  return static_cast<double>(Eigen::NumTraits<T>::highest());
}
/// Machine epsilon eps (spacing of 1 and the next value) of a storage type, as double:
/// 2^-23 (float), 2^-52 (double), 2^-7 (bfloat16), 2^-10 (half). ttx states every tolerance floor
/// and precision figure in this eps; the round-to-nearest unit roundoff (the bound on one
/// rounding's relative error) is eps / 2.
template <class T>
inline double unit_roundoff() {
  // Eigen 3.4's NumTraits<half>::epsilon() is 2^-13; half has 10 fraction bits, so 2^-10.
  if constexpr (std::is_same_v<T, f16>) return 0x1p-10;
  return static_cast<double>(Eigen::NumTraits<T>::epsilon());
}

/// The PyTorch nn.Linear layout (out x in, row-major) seen as ttx's (in x out) without a copy.
template <class T>
inline auto from_pytorch(const T* data, Index out_features, Index in_features) {
  return Eigen::Map<const RowMatrix<T>>(data, out_features, in_features).transpose();
}

/// Which way a weight matrix is stored: ttx's (in x out) or PyTorch's (out x in).
enum class WeightLayout { in_out, out_in };

}  // namespace ttx
