// ttx-test-labels: reference
// Internal consistency of the reference attention: decode steps equal prefill rows, MQA/GQA head
// mapping, the PyTorch layout, and bad input.
#include "ttx/reference/attention.hpp"

#include <gtest/gtest.h>

#include "support/random.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

TEST(ReferenceAttention, DecodeStepsEqualPrefillRows) {
  test::Rng rng(1);
  for (Index kv : {4, 2, 1}) {
    reference::AttentionConfig cfg{{32, 4, kv, 8}, 0.0, RopeSpec::full(8, RopeLayout::half_split)};
    const auto w = test::random_attention<double>(cfg.shape, rng, test::BiasOptions::all());
    const RowMatrix<double> X = test::random_matrix<double>(6, 32, 1.0, rng);
    reference::KVCache<double> a, b;
    const RowMatrix<double> Y = reference::self_attention<double>(X, w, cfg, a);
    RowMatrix<double> Z(6, 32);
    for (Index r = 0; r < 6; ++r) Z.row(r) = reference::self_attention<double>(X.row(r), w, cfg, b);
    EXPECT_TRUE(test::close_to(Z, Y, 1e-13, "same operations, double roundoff", "f64"))
        << "kv=" << kv;
  }
}

TEST(ReferenceAttention, BadShapesNameTheArgument) {
  test::Rng rng(2);
  reference::AttentionConfig cfg{{32, 4, 4, 8}, 0.0, RopeSpec::none()};
  auto w = test::random_attention<double>(cfg.shape, rng);
  w.wk = RowMatrix<double>::Zero(32, 16);
  reference::KVCache<double> c;
  const RowMatrix<double> X = RowMatrix<double>::Zero(1, 32);
  try {
    reference::self_attention<double>(X, w, cfg, c);
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("wk expected 32x32, got 32x16"), std::string::npos)
        << e.what();
  }
}
