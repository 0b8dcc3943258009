// RowCache: the storage every ttx cache is made of — `capacity` rows of `width` values of storage
// type T (float, double, Eigen::bfloat16, Eigen::half), one token per row, row-major. The capacity
// is the caller's choice and fixed: appending past it is a CapacityError, never a reallocation.
// The memory is owned, or the caller's own (the non-owning constructor).
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include <Eigen/Core>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

template <class T>
class RowCache {
  static_assert(is_storage_type_v<T>,
                "RowCache stores float, double, Eigen::bfloat16 or Eigen::half");

 public:
  using Scalar = T;

  /// Owned storage for `capacity` rows of `width` values.
  RowCache(Index width, Index capacity) : width_(width), capacity_(capacity) {
    check_sizes();
    owned_.resize(static_cast<size_t>(width * capacity));
    data_ = owned_.data();
  }
  /// The caller's memory (at least width * capacity values); ttx never frees or grows it.
  RowCache(T* external, Index width, Index capacity)
      : width_(width), capacity_(capacity), data_(external) {
    check_sizes();
    detail::require(external != nullptr, ErrorKind::shape, "RowCache",
                    "external expected a non-null pointer, got nullptr");
  }

  // A copy would either duplicate megabytes silently or alias the caller's memory: moves only.
  // (A moved vector keeps its buffer, so data_ stays valid in the moved-to cache.)
  RowCache(const RowCache&) = delete;
  RowCache& operator=(const RowCache&) = delete;
  RowCache(RowCache&&) noexcept = default;
  RowCache& operator=(RowCache&&) noexcept = default;

  Index width() const { return width_; }
  Index capacity() const { return capacity_; }
  Index size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Index free_rows() const { return capacity_ - size_; }

  /// Exact bytes of the storage (capacity * width * sizeof(T)).
  std::size_t bytes() const { return static_cast<std::size_t>(capacity_ * width_) * sizeof(T); }
  /// Bytes one cached token occupies.
  std::size_t bytes_per_token() const { return static_cast<std::size_t>(width_) * sizeof(T); }

  /// Appends rows (any scalar; converted to T). CapacityError when they do not fit, ShapeError on
  /// the wrong width, NumericalError when a finite value overflows T (e.g. |x| > 65504 in half).
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& expr) {
    // Evaluate once: a lazy product read coefficient by coefficient would be recomputed per value.
    const auto& rows = expr.eval();
    detail::check_dim("RowCache::append", "rows.cols() (= cache width)", width_, rows.cols());
    reserve_rows("RowCache::append", rows.rows());
    if constexpr (!std::is_same_v<T, double> && !std::is_same_v<T, float>) {
      const double top = max_finite<T>();
      for (Index r = 0; r < rows.rows(); ++r)
        for (Index c = 0; c < rows.cols(); ++c) {
          const double v = static_cast<double>(rows(r, c));
          if (std::isfinite(v) && std::abs(v) > top)
            detail::raise(ErrorKind::numerical,
                          detail::concat("ttx::RowCache::append: value at (", r, ",", c, ") = ", v,
                                         " overflows ", type_name<T>(), " (max ", top, ")"));
        }
    }
    Eigen::Map<RowMatrix<T>>(row_ptr(size_), rows.rows(), width_) = rows.template cast<T>();
    size_ += rows.rows();
  }

  /// Claims `count` rows for a kernel to write in place; returns them (count x width).
  Eigen::Map<RowMatrix<T>> extend(Index count) {
    reserve_rows("RowCache::extend", count);
    const Index first = size_;
    size_ += count;
    return {row_ptr(first), count, width_};
  }

  /// The cached rows (size x width).
  Eigen::Map<const RowMatrix<T>> view() const { return {data_, size_, width_}; }
  /// Rows [first, first + count) of the cached rows.
  Eigen::Map<const RowMatrix<T>> rows(Index first, Index count) const {
    detail::require(first >= 0 && count >= 0 && first + count <= size_, ErrorKind::shape,
                    "RowCache::rows", "rows [", first, ", ", first + count,
                    ") expected within [0, ", size_, ")");
    return {row_ptr(first), count, width_};
  }
  const T* data() const { return data_; }
  T* data() { return data_; }
  const T* row_ptr(Index r) const { return data_ + r * width_; }
  T* row_ptr(Index r) { return data_ + r * width_; }

  /// Forgets every row (the storage stays).
  void clear() { size_ = 0; }
  /// Keeps the first `n` rows (n <= size()), e.g. to roll back a speculative step.
  void truncate(Index n) {
    detail::require(n >= 0 && n <= size_, ErrorKind::shape, "RowCache::truncate",
                    "n expected in [0, ", size_, "], got ", n);
    size_ = n;
  }

 private:
  void check_sizes() const {
    detail::require(width_ > 0, ErrorKind::shape, "RowCache", "width expected > 0, got ", width_);
    detail::require(capacity_ > 0, ErrorKind::shape, "RowCache", "capacity expected > 0, got ",
                    capacity_);
  }
  void reserve_rows(const char* fn, Index count) const {
    detail::require(count >= 0, ErrorKind::shape, fn, "count expected >= 0, got ", count);
    if (size_ + count > capacity_)
      detail::raise(
          ErrorKind::capacity,
          detail::concat("ttx::", fn, ": cache capacity expected >= ", size_ + count, " rows (",
                         size_, " cached + ", count, " new), got capacity ", capacity_));
  }

  Index width_ = 0, capacity_ = 0, size_ = 0;
  std::vector<T, Eigen::aligned_allocator<T>> owned_;
  T* data_ = nullptr;
};

}  // namespace ttx
