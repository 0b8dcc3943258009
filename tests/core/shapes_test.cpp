// ttx-test-labels: core
// AttentionShape: widths, head mapping for MHA / GQA / MQA, validation messages.
#include "ttx/core/shapes.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "support/throws.hpp"

using namespace ttx;

TEST(CoreShapes, WidthsAndHeadMapping) {
  const AttentionShape mha{4096, 32, 32, 128}, gqa{4096, 32, 8, 128}, mqa{2048, 16, 1, 128};
  EXPECT_EQ(mha.q_width(), 4096);
  EXPECT_EQ(gqa.kv_width(), 1024);
  EXPECT_EQ(gqa.group(), 4);
  EXPECT_EQ(mha.layout(), HeadLayout::mha);
  EXPECT_EQ(gqa.layout(), HeadLayout::gqa);
  EXPECT_EQ(mqa.layout(), HeadLayout::mqa);
  for (Index h = 0; h < 32; ++h) {
    EXPECT_EQ(mha.kv_head_of(h), h);
    EXPECT_EQ(gqa.kv_head_of(h), h / 4);  // query head i uses KV head i / (h / h_kv)
  }
  for (Index h = 0; h < 16; ++h) EXPECT_EQ(mqa.kv_head_of(h), 0);
  EXPECT_DOUBLE_EQ(mha.default_scale(), 1.0 / std::sqrt(128.0));
  EXPECT_TRUE(mha == (AttentionShape{4096, 32, 32, 128}));
  EXPECT_TRUE(mha != gqa);
}

TEST(CoreShapes, ValidateNamesTheField) {
  EXPECT_NO_THROW((AttentionShape{64, 8, 2, 8}.validate("f")));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        AttentionShape{0, 8, 8, 8}.validate("f");
      },
      {"ttx::f", "shape.d expected > 0, got 0"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        AttentionShape{64, 0, 1, 8}.validate("f");
      },
      {"shape.heads expected > 0, got 0"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        AttentionShape{64, 8, 8, -1}.validate("f");
      },
      {"shape.head_dim expected > 0, got -1"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        AttentionShape{64, 8, 3, 8}.validate("f");
      },
      {"shape.kv_heads expected a divisor of heads=8, got 3"}));
  EXPECT_TRUE(test::throws<ShapeError>(
      [] {
        AttentionShape{64, 8, 0, 8}.validate("f");
      },
      {"shape.kv_heads", "got 0"}));
}
