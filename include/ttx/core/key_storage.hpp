// How a keys-only cache holds keys under RoPE: shared by slim attention's KCache, the slim
// kernels and the first-layer table's keys-only lookup (one enum, one meaning).
#pragma once

namespace ttx {

/// How keys are held when the model uses RoPE (without RoPE both mean "as projected").
enum class KeyStorage {
  raw,     ///< K = X W_K + b_K before RoPE; the scores rotate each key at its position on read
           ///< (slim attention's V = K W_KV needs raw K)
  rotated  ///< first e columns rotated at their position (what vanilla attention reads); slim's
           ///< value path un-rotates them on read
};

inline const char* name(KeyStorage s) {
  return s == KeyStorage::raw ? "KeyStorage::raw" : "KeyStorage::rotated";
}

}  // namespace ttx
