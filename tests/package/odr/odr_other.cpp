#include <ttx/ttx.hpp>

int odr_other() {
  const ttx::AttentionShape s{64, 4, 2, 16};
  return static_cast<int>(s.group());
}
