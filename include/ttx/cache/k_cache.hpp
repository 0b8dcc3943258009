// KCache: slim attention's context memory (SPEC.md §1) — one key row per token instead of a key
// and a value row. Width e (square or right-inverse basis) or d (the completed basis K* = X W_K*,
// whose first e columns are the keys). With RoPE the caller chooses whether the keys are stored
// raw (rotated on read, for the scores) or rotated (un-rotated on read, for the values); both are
// exact. For MHA the cache is exactly half of a KVCache of the same capacity and type.
#pragma once

#include <cstddef>

#include "ttx/cache/row_cache.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/key_storage.hpp"
#include "ttx/core/shapes.hpp"

namespace ttx {

template <class T>
class KCache {
 public:
  using Scalar = T;

  /// Owned storage for `capacity` tokens of `width` values (0 = shape.kv_width(); pass
  /// slim.cached_width, which is d for the completed GQA basis). Requires width >= kv_width.
  ///   ttx::KCache<Eigen::bfloat16> cache(shape, 4096, ttx::KeyStorage::raw, slim.cached_width);
  KCache(const AttentionShape& shape, Index capacity, KeyStorage storage = KeyStorage::raw,
         Index width = 0)
      : shape_(shape), storage_(storage), k_(checked_width(shape, width), capacity) {}
  /// The caller's memory (at least width * capacity values of T); never freed or grown.
  KCache(T* external, const AttentionShape& shape, Index capacity,
         KeyStorage storage = KeyStorage::raw, Index width = 0)
      : shape_(shape), storage_(storage), k_(external, checked_width(shape, width), capacity) {}

  const AttentionShape& shape() const { return shape_; }
  KeyStorage storage() const { return storage_; }
  Index width() const { return k_.width(); }             ///< w: e, or d for a completed basis
  Index key_width() const { return shape_.kv_width(); }  ///< e: the key columns (first e)
  Index size() const { return k_.size(); }
  Index capacity() const { return k_.capacity(); }
  Index free_rows() const { return k_.free_rows(); }
  /// Exact bytes of the storage: capacity * width * sizeof(T).
  std::size_t bytes() const { return k_.bytes(); }
  std::size_t bytes_per_token() const { return k_.bytes_per_token(); }

  /// Appends n key rows (n x width, any scalar; converted to T) in this cache's KeyStorage
  /// convention. CapacityError / ShapeError / NumericalError (overflow of T) leave it unchanged.
  template <class D>
  void append(const Eigen::MatrixBase<D>& k) {
    k_.append(k);
  }

  const RowCache<T>& keys() const { return k_; }
  RowCache<T>& keys() { return k_; }
  Eigen::Map<const RowMatrix<T>> view() const { return k_.view(); }
  void clear() { k_.clear(); }
  void truncate(Index n) { k_.truncate(n); }

 private:
  static Index checked_width(const AttentionShape& s, Index width) {
    s.validate("KCache");
    const Index w = width == 0 ? s.kv_width() : width;
    detail::require(w >= s.kv_width(), ErrorKind::shape, "KCache",
                    "width expected >= kv_width = ", s.kv_width(), " (or 0), got ", width);
    return w;
  }
  AttentionShape shape_;
  KeyStorage storage_;
  RowCache<T> k_;
};

}  // namespace ttx
