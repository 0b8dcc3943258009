// A downstream program: includes ttx, runs the reference linear layer, checks one value.
#include <iostream>
#include <ttx/ttx.hpp>

int main() {
  ttx::RowMatrix<double> x(1, 2), w(2, 1);
  x << 1, 2;
  w << 3, 4;
  const auto y = ttx::reference::linear<double>(x, w);
  std::cout << "ttx consumer: y = " << y(0, 0) << "\n";
  return y(0, 0) == 11.0 ? 0 : 1;
}
