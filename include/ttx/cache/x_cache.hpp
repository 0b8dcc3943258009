// XCache: the inputs-form context memory (SPEC.md §1, "X-cache"): the attention layer's input
// rows X (n x d), from which every head's keys and values follow through W_K and W_V. d values per
// token instead of 2e: 2e/d times smaller (T5-11B: 32x). No inverse, no RoPE.
#pragma once

#include <cstddef>

#include "ttx/cache/row_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/shapes.hpp"

namespace ttx {

template <class T>
class XCache {
 public:
  using Scalar = T;

  /// Owned storage for `capacity` tokens of d = shape.d values.
  ///   ttx::XCache<Eigen::half> cache(shape, 4096);
  XCache(const AttentionShape& shape, Index capacity)
      : shape_(shape), x_(checked_width(shape), capacity) {}
  /// The caller's memory (at least d * capacity values of T); never freed or grown.
  XCache(T* external, const AttentionShape& shape, Index capacity)
      : shape_(shape), x_(external, checked_width(shape), capacity) {}

  const AttentionShape& shape() const { return shape_; }
  Index width() const { return x_.width(); }  ///< d
  Index size() const { return x_.size(); }
  Index capacity() const { return x_.capacity(); }
  Index free_rows() const { return x_.free_rows(); }
  /// Exact bytes of the storage: capacity * d * sizeof(T).
  std::size_t bytes() const { return x_.bytes(); }
  std::size_t bytes_per_token() const { return x_.bytes_per_token(); }

  /// Appends n input rows (n x d, converted to T); errors leave the cache unchanged.
  template <class D>
  void append(const Eigen::MatrixBase<D>& x) {
    x_.append(x);
  }

  const RowCache<T>& inputs() const { return x_; }
  RowCache<T>& inputs() { return x_; }
  Eigen::Map<const RowMatrix<T>> view() const { return x_.view(); }
  void clear() { x_.clear(); }
  void truncate(Index n) { x_.truncate(n); }

 private:
  static Index checked_width(const AttentionShape& s) {
    s.validate("XCache");
    return s.d;
  }
  AttentionShape shape_;
  RowCache<T> x_;
};

}  // namespace ttx
