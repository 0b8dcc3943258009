// Two translation units include the umbrella header; inline functions and statics must link once.
#include <ttx/ttx.hpp>

int odr_other();

int main() {
  const ttx::AttentionShape s{64, 4, 2, 16};
  return (odr_other() == s.group() && ttx::type_name<float>()[0] == 'f') ? 0 : 1;
}
