// VCache: the values-only slim cache (SPEC.md §1, "V-cache only"): one value row per token,
// K = V W_VK recovered through the queries. Width e, or d for the completed basis V* = X W_V*
// (whose first e columns are the values). No RoPE.
#pragma once

#include <cstddef>

#include "ttx/cache/row_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/shapes.hpp"

namespace ttx {

template <class T>
class VCache {
 public:
  using Scalar = T;

  /// Owned storage for `capacity` tokens of `width` values (0 = shape.kv_width(); pass
  /// slim.cached_width). Requires width >= kv_width.
  ///   ttx::VCache<float> cache(shape, 4096, slim.cached_width);
  VCache(const AttentionShape& shape, Index capacity, Index width = 0)
      : shape_(shape), v_(checked_width(shape, width), capacity) {}
  /// The caller's memory (at least width * capacity values of T); never freed or grown.
  VCache(T* external, const AttentionShape& shape, Index capacity, Index width = 0)
      : shape_(shape), v_(external, checked_width(shape, width), capacity) {}

  const AttentionShape& shape() const { return shape_; }
  Index width() const { return v_.width(); }
  Index size() const { return v_.size(); }
  Index capacity() const { return v_.capacity(); }
  Index free_rows() const { return v_.free_rows(); }
  /// Exact bytes of the storage: capacity * width * sizeof(T).
  std::size_t bytes() const { return v_.bytes(); }
  std::size_t bytes_per_token() const { return v_.bytes_per_token(); }

  /// Appends n value rows (n x width, converted to T); errors leave the cache unchanged.
  template <class D>
  void append(const Eigen::MatrixBase<D>& v) {
    v_.append(v);
  }

  const RowCache<T>& values() const { return v_; }
  RowCache<T>& values() { return v_; }
  Eigen::Map<const RowMatrix<T>> view() const { return v_.view(); }
  void clear() { v_.clear(); }
  void truncate(Index n) { v_.truncate(n); }

 private:
  static Index checked_width(const AttentionShape& s, Index width) {
    s.validate("VCache");
    const Index w = width == 0 ? s.kv_width() : width;
    detail::require(w >= s.kv_width(), ErrorKind::shape, "VCache",
                    "width expected >= kv_width = ", s.kv_width(), " (or 0), got ", width);
    return w;
  }
  AttentionShape shape_;
  RowCache<T> v_;
};

}  // namespace ttx
