// Encoder–decoder context memory (SPEC.md §1 "Encoder–decoder").
//  * ECache: the encoder output E (p x d), written once per input and read by the cross-attention
//    of every decoder layer (the shared encoder cache). Replaces all cross KV caches.
//  * CrossKCache: one layer's K-only cross cache K = E W_K (p x e), V recomputed from K; also the
//    hybrid's K1, which every other layer reads as its basis.
// Both are a fixed-capacity RowCache with exact byte accounting; neither ever reallocates.
#pragma once

#include "ttx/cache/row_cache.hpp"
#include "ttx/core/shapes.hpp"

namespace ttx {

template <class T>
class ECache {
 public:
  using Scalar = T;
  /// Room for `capacity` encoder rows of width d (Whisper: capacity 1500).
  ECache(Index d, Index capacity) : rows_(d, capacity) {}
  /// The caller's memory (at least d * capacity values).
  ECache(T* external, Index d, Index capacity) : rows_(external, d, capacity) {}

  Index d() const { return rows_.width(); }
  Index size() const { return rows_.size(); }
  Index capacity() const { return rows_.capacity(); }
  std::size_t bytes() const { return rows_.bytes(); }
  std::size_t bytes_per_token() const { return rows_.bytes_per_token(); }

  /// Appends encoder output rows (n x d, any scalar, converted to T); the encoder may deliver E
  /// in chunks. ShapeError on the wrong width, CapacityError past the capacity.
  template <class D>
  void append(const Eigen::MatrixBase<D>& E) {
    detail::check_dim("ECache::append", "E.cols() (= d)", d(), E.cols());
    rows_.append(E.eval());  // RowCache::append reads coefficients one by one: no lazy products
  }
  /// Replaces the content with E (p x d) — a new utterance.
  template <class D>
  void assign(const Eigen::MatrixBase<D>& E) {
    detail::check_dim("ECache::assign", "E.cols() (= d)", d(), E.cols());
    if (E.rows() > capacity())
      detail::raise(ErrorKind::capacity,
                    detail::concat("ttx::ECache::assign: cache capacity expected >= ", E.rows(),
                                   " rows, got capacity ", capacity()));
    rows_.clear();
    rows_.append(E.eval());
  }
  auto view() const { return rows_.view(); }
  const RowCache<T>& rows() const { return rows_; }
  RowCache<T>& rows() { return rows_; }
  void clear() { rows_.clear(); }

 private:
  RowCache<T> rows_;
};

template <class T>
class CrossKCache {
 public:
  using Scalar = T;
  /// Room for `capacity` encoder positions of one layer's keys (width e = kv_width).
  CrossKCache(const AttentionShape& shape, Index capacity)
      : shape_(shape), keys_(checked_width(shape), capacity) {}

  const AttentionShape& shape() const { return shape_; }
  Index size() const { return keys_.size(); }
  Index capacity() const { return keys_.capacity(); }
  std::size_t bytes() const { return keys_.bytes(); }
  std::size_t bytes_per_token() const { return keys_.bytes_per_token(); }

  /// Replaces the content with K (p x e).
  template <class D>
  void assign(const Eigen::MatrixBase<D>& K) {
    detail::check_dim("CrossKCache::assign", "K.cols() (= kv_width)", shape_.kv_width(), K.cols());
    if (K.rows() > capacity())
      detail::raise(ErrorKind::capacity,
                    detail::concat("ttx::CrossKCache::assign: cache capacity expected >= ",
                                   K.rows(), " rows, got capacity ", capacity()));
    keys_.clear();
    keys_.append(K.eval());  // RowCache::append reads coefficients one by one: no lazy products
  }
  const RowCache<T>& keys() const { return keys_; }
  RowCache<T>& keys() { return keys_; }
  void clear() { keys_.clear(); }

 private:
  static Index checked_width(const AttentionShape& s) {
    s.validate("CrossKCache");
    return s.kv_width();
  }
  AttentionShape shape_;
  RowCache<T> keys_;
};

}  // namespace ttx
