// Loads the PyTorch golden fixtures written by tools/gen_golden.py. File format (little endian):
//   "TTXF1\n", then per tensor a text line "<name> <rows> <cols>\n" followed by rows*cols
//   float64 values, row-major. Vectors are 1 x n, scalars 1 x 1.
#pragma once

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

#ifndef TTX_TEST_DATA_DIR
#error "TTX_TEST_DATA_DIR must point at tests/data"
#endif

namespace ttx::test {

class Fixture {
 public:
  explicit Fixture(const std::string& name) : name_(name) {
    const std::string path = std::string(TTX_TEST_DATA_DIR) + "/" + name + ".ttxf";
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("fixture " + path + " not found (run tools/gen_golden.py)");
    std::string magic;
    std::getline(in, magic);
    if (magic != "TTXF1") throw Error("fixture " + path + ": bad magic '" + magic + "'");
    std::string header;
    while (std::getline(in, header)) {
      if (header.empty()) continue;
      std::istringstream hs(header);
      std::string tname;
      Index rows = 0, cols = 0;
      if (!(hs >> tname >> rows >> cols) || rows < 0 || cols < 0)
        throw Error("fixture " + path + ": bad header '" + header + "'");
      RowMatrix<double> m(rows, cols);
      in.read(reinterpret_cast<char*>(m.data()),
              static_cast<std::streamsize>(sizeof(double) * rows * cols));
      if (!in) throw Error("fixture " + path + ": truncated tensor " + tname);
      tensors_.emplace(tname, std::move(m));
    }
  }

  bool has(const std::string& t) const { return tensors_.count(t) != 0; }

  /// A tensor converted to the test's scalar type.
  template <class T = double>
  RowMatrix<T> matrix(const std::string& t) const {
    auto it = tensors_.find(t);
    if (it == tensors_.end()) throw Error("fixture " + name_ + ": no tensor '" + t + "'");
    return it->second.template cast<T>();
  }
  template <class T = double>
  RowVector<T> vector(const std::string& t) const {
    const RowMatrix<T> m = matrix<T>(t);
    return Eigen::Map<const RowVector<T>>(m.data(), m.size());
  }
  double scalar(const std::string& t) const { return matrix<double>(t)(0, 0); }

 private:
  std::string name_;
  std::map<std::string, RowMatrix<double>> tensors_;
};

}  // namespace ttx::test
