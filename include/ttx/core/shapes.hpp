// Attention head layout (SPEC.md §0): d model width, h query heads, h_kv key/value heads,
// d_k head width; e = h_kv * d_k is the K/V projection width, e_q = h * d_k the Q width.
#pragma once

#include <cmath>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

namespace ttx {

enum class HeadLayout { mha, gqa, mqa };

struct AttentionShape {
  Index d = 0;         ///< model width
  Index heads = 0;     ///< query heads h
  Index kv_heads = 0;  ///< key/value heads h_kv (== heads for MHA, 1 for MQA)
  Index head_dim = 0;  ///< d_k (= d_v)

  Index q_width() const { return heads * head_dim; }      ///< e_q
  Index kv_width() const { return kv_heads * head_dim; }  ///< e
  Index group() const { return heads / kv_heads; }        ///< query heads per KV head
  Index kv_head_of(Index q_head) const { return q_head / group(); }
  HeadLayout layout() const {
    return kv_heads == heads ? HeadLayout::mha
                             : (kv_heads == 1 ? HeadLayout::mqa : HeadLayout::gqa);
  }
  double default_scale() const { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }

  /// Throws ShapeError unless every count is positive and kv_heads divides heads.
  void validate(const char* fn) const {
    detail::require(d > 0, ErrorKind::shape, fn, "shape.d expected > 0, got ", d);
    detail::require(heads > 0, ErrorKind::shape, fn, "shape.heads expected > 0, got ", heads);
    detail::require(head_dim > 0, ErrorKind::shape, fn, "shape.head_dim expected > 0, got ",
                    head_dim);
    detail::require(kv_heads > 0 && heads % kv_heads == 0, ErrorKind::shape, fn,
                    "shape.kv_heads expected a divisor of heads=", heads, ", got ", kv_heads);
  }
};

inline bool operator==(const AttentionShape& a, const AttentionShape& b) {
  return a.d == b.d && a.heads == b.heads && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim;
}
inline bool operator!=(const AttentionShape& a, const AttentionShape& b) {
  return !(a == b);
}

}  // namespace ttx
