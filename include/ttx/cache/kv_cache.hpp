// KVCache: the vanilla context memory — rotated keys and values, e = h_kv * d_k values each per
// token. The baseline the slim caches are measured against.
#pragma once

#include "ttx/cache/row_cache.hpp"
#include "ttx/core/shapes.hpp"

namespace ttx {

template <class T>
class KVCache {
 public:
  using Scalar = T;
  KVCache(const AttentionShape& shape, Index capacity)
      : shape_(shape), k_(checked_width(shape), capacity), v_(shape.kv_width(), capacity) {}

  const AttentionShape& shape() const { return shape_; }
  Index size() const { return k_.size(); }
  Index capacity() const { return k_.capacity(); }
  /// Exact bytes of K and V storage together.
  std::size_t bytes() const { return k_.bytes() + v_.bytes(); }
  std::size_t bytes_per_token() const { return k_.bytes_per_token() + v_.bytes_per_token(); }

  /// Appends keys and values (n x e each, keys already rotated if the model uses RoPE).
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    detail::check_dim("KVCache::append", "v.rows() (= k.rows())", k.rows(), v.rows());
    detail::check_dim("KVCache::append", "v.cols()", shape_.kv_width(), v.cols());
    detail::check_dim("KVCache::append", "k.cols()", shape_.kv_width(), k.cols());
    // Both checks happen before either write, so a failed append leaves the cache unchanged.
    if (size() + k.rows() > capacity())
      detail::raise(ErrorKind::capacity,
                    detail::concat("ttx::KVCache::append: cache capacity expected >= ",
                                   size() + k.rows(), " rows, got capacity ", capacity()));
    k_.append(k);
    try {
      v_.append(v);
    } catch (...) {
      k_.truncate(k_.size() - k.rows());
      throw;
    }
  }

  const RowCache<T>& keys() const { return k_; }
  const RowCache<T>& values() const { return v_; }
  RowCache<T>& keys() { return k_; }
  RowCache<T>& values() { return v_; }
  void clear() {
    k_.clear();
    v_.clear();
  }

 private:
  static Index checked_width(const AttentionShape& s) {
    s.validate("KVCache");
    return s.kv_width();
  }
  AttentionShape shape_;
  RowCache<T> k_, v_;
};

}  // namespace ttx
