// ttx-test-labels: first_layer
// The first-layer table (rewrite/first_layer.hpp): rows against the double reference (SPEC §5
// rule), FlashNorm-folded weights give the same table, float/bf16/half storage, batch- and
// thread-invariant rows, progress reporting, clear errors, and the paper's cost figures.
#include "ttx/rewrite/first_layer.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {

// The oracle's Eigen products would fork OpenMP threads on this shared 2-core machine; the
// kernels under test choose their own threads.
[[maybe_unused]] const int kSingleThreadedOracle = (Eigen::setNbThreads(1), 0);

struct Case {
  BlockKind kind;
  Index kv_heads;
  bool biases;
  NormSpec norm;
  FfnSpec ffn;
  std::string name() const {
    return std::string(kind == BlockKind::serial ? "serial" : "parallel") +
           "/kv:" + std::to_string(kv_heads) + (biases ? "/bias" : "/nobias") +
           (norm.kind == NormKind::rms ? "/rms" : "/layer") +
           (ffn.kind == FfnKind::glu ? "/glu" : "/mlp");
  }
};

constexpr Index kD = 64, kHeads = 4, kHeadDim = 16, kFfn = 96, kVocab = 300;

std::vector<Case> cases() {
  return {
      {BlockKind::serial, 4, false, NormSpec::rms(1e-6), FfnSpec::swiglu()},
      {BlockKind::serial, 2, true, NormSpec::rms(1e-5), FfnSpec::swiglu()},
      {BlockKind::serial, 1, false, NormSpec::layer(1e-5), FfnSpec::mlp(Activation::gelu_erf)},
      {BlockKind::parallel, 4, true, NormSpec::layer(1e-5), FfnSpec::mlp(Activation::gelu_tanh)},
      {BlockKind::parallel, 2, false, NormSpec::rms(1e-6), FfnSpec::swiglu()},
      {BlockKind::parallel, 4, false, NormSpec::rms(1e-6, GainConvention::one_plus),
       FfnSpec::geglu()},
  };
}

BlockConfig config_of(const Case& c) {
  BlockConfig cfg;
  cfg.kind = c.kind;
  cfg.attn.shape = {kD, kHeads, c.kv_heads, kHeadDim};
  cfg.attn.rope = RopeSpec::full(kHeadDim, RopeLayout::half_split);
  cfg.norm = c.norm;
  cfg.ffn = c.ffn;
  return cfg;
}

struct Layer1 {
  RowMatrix<double> embedding;
  BlockWeights<double> block;
};

Layer1 random_layer1(const Case& c, test::Rng& rng, Index vocab = kVocab) {
  const BlockConfig cfg = config_of(c);
  Layer1 l;
  l.embedding = test::random_matrix<double>(vocab, kD, 1.0, rng);
  l.block.norm1 = test::random_norm<double>(kD, cfg.norm, rng);
  l.block.norm2 = test::random_norm<double>(kD, cfg.norm, rng);
  test::BiasOptions b;
  if (c.biases) b = test::BiasOptions::all();
  l.block.attn = test::random_attention<double>(cfg.attn.shape, rng, b);
  l.block.ffn = test::random_ffn<double>(kD, kFfn, cfg.ffn, rng, c.biases);
  return l;
}

/// The vanilla first layer (before RoPE) written with the reference oracle in T: [x | q | k | v].
template <class T>
RowMatrix<T> vanilla_rows(const RowMatrix<T>& embedding, const BlockWeights<T>& b,
                          const BlockConfig& cfg) {
  const Index d = cfg.attn.shape.d;
  auto full = [&](NormWeights<T> n) {  // the oracle wants an explicit gain
    if (n.gain.size() == 0) n.gain = RowVector<T>::Ones(d);
    return n;
  };
  const RowMatrix<T> xn = reference::norm<T>(embedding, full(b.norm1), cfg.norm);
  RowMatrix<T> res = embedding;
  if (cfg.kind == BlockKind::parallel)
    res +=
        reference::ffn<T>(reference::norm<T>(embedding, full(b.norm2), cfg.norm), b.ffn, cfg.ffn);
  const RowMatrix<T> q = reference::linear<T>(xn, b.attn.wq, b.attn.bq);
  const RowMatrix<T> k = reference::linear<T>(xn, b.attn.wk, b.attn.bk);
  const RowMatrix<T> v = reference::linear<T>(xn, b.attn.wv, b.attn.bv);
  RowMatrix<T> out(embedding.rows(), res.cols() + q.cols() + k.cols() + v.cols());
  out << res, q, k, v;
  return out;
}

template <class T>
RowMatrix<double> as_double(const RowMatrix<T>& m) {
  return m.template cast<double>();
}

}  // namespace

TEST(FirstLayerTable, RowsFollowTheRuleAgainstTheDoubleReference) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name());
    test::Rng rng(11);
    const BlockConfig cfg = config_of(c);
    const Layer1 l = random_layer1(c, rng);
    const RowMatrix<double> ref = vanilla_rows<double>(l.embedding, l.block, cfg);
    const RowMatrix<float> E = test::cast<float>(l.embedding);
    const BlockWeights<float> bf = test::cast<float>(l.block);
    const RowMatrix<float> vanilla = vanilla_rows<float>(E, bf, cfg);
    const auto working = rewrite::build_first_layer_table<float>(E, bf, cfg);
    const auto exact = rewrite::build_first_layer_table<float>(
        l.embedding, l.block, cfg, {rewrite::TableCompute::exact, 64, {}, 0});
    ASSERT_EQ(working.rows.cols(), kD + kD + 2 * c.kv_heads * kHeadDim);
    const test::Tolerance tol{2.0, test::roundoff_floor<float>(), ""};
    EXPECT_TRUE(test::within_rule(working.rows, vanilla, ref, tol, "f32"));
    EXPECT_TRUE(test::within_rule(exact.rows, vanilla, ref, tol, "f32"));
    EXPECT_EQ(working.report.ffn_in_table, c.kind == BlockKind::parallel);
    EXPECT_STREQ(working.report.computed_in, "f32");
    EXPECT_STREQ(exact.report.computed_in, "f64");
    EXPECT_EQ(working.report.table_bytes, static_cast<size_t>(kVocab * working.rows.cols() * 4));
    EXPECT_EQ(working.report.embedding_bytes, static_cast<size_t>(kVocab * kD * 4));
  }
}

TEST(FirstLayerTable, RowsDoNotDependOnBatchOrThreads) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name());
    test::Rng rng(12);
    const BlockConfig cfg = config_of(c);
    const Layer1 l = random_layer1(c, rng);
    const RowMatrix<float> E = test::cast<float>(l.embedding);
    const BlockWeights<float> bf = test::cast<float>(l.block);
    const Index W = rewrite::FirstLayerLayout::of(cfg.attn.shape).width();
    std::vector<int> ids;
    for (int i = 0; i < 37; ++i) ids.push_back((i * 97 + 5) % kVocab);
    RowMatrix<float> batch(37, W), one(37, W), threaded(37, W);
    rewrite::compute_first_layer_rows<float>(E, bf, cfg, ids.data(), 37, batch, 1);
    rewrite::compute_first_layer_rows<float>(E, bf, cfg, ids.data(), 37, threaded, 2);
    for (Index r = 0; r < 37; ++r)
      rewrite::compute_first_layer_rows<float>(E, bf, cfg, &ids[static_cast<size_t>(r)], 1,
                                               one.row(r), 1);
    EXPECT_TRUE(test::bitwise_equal(batch, one));
    EXPECT_TRUE(test::bitwise_equal(batch, threaded));
    // And a table row is the same computation: bitwise equal (SPEC §4).
    const auto table = rewrite::build_first_layer_table<float>(E, bf, cfg, {{}, 50, {}, 0});
    RowMatrix<float> gathered(37, W);
    for (Index r = 0; r < 37; ++r) gathered.row(r) = table.rows.row(ids[static_cast<size_t>(r)]);
    EXPECT_TRUE(test::bitwise_equal(batch, gathered));
  }
}

// Wide enough for the kernel to split columns among threads, with both loop orders (<= 8 tokens
// stream W row by row, more tokens go by column slabs): every arrangement gives the same bits.
TEST(FirstLayerTable, ThreadedRowsEqualSingleThreaded) {
  test::Rng rng(19);
  BlockConfig cfg;
  cfg.kind = BlockKind::parallel;
  cfg.attn.shape = {512, 4, 4, 128};
  cfg.norm = NormSpec::rms(1e-6);
  cfg.ffn = FfnSpec::swiglu();
  const RowMatrix<float> E = test::random_matrix<float>(100, 512, 1.0, rng);
  BlockWeights<float> b;
  b.norm1 = test::random_norm<float>(512, cfg.norm, rng);
  b.norm2 = test::random_norm<float>(512, cfg.norm, rng);
  b.attn = test::random_attention<float>(cfg.attn.shape, rng);
  b.ffn = test::random_ffn<float>(512, 2304, cfg.ffn, rng);
  const Index W = rewrite::FirstLayerLayout::of(cfg.attn.shape).width();
  for (Index n : {8, 40}) {  // 8 x 512 x 2304 and 40 x 512 x 512 pass the threading threshold
    std::vector<int> ids;
    for (Index i = 0; i < n; ++i) ids.push_back(static_cast<int>((i * 37 + 3) % 100));
    RowMatrix<float> one(n, W), two(n, W), single(n, W);
    rewrite::compute_first_layer_rows<float>(E, b, cfg, ids.data(), n, one, 1);
    rewrite::compute_first_layer_rows<float>(E, b, cfg, ids.data(), n, two, 2);
    for (Index r = 0; r < n; ++r)
      rewrite::compute_first_layer_rows<float>(E, b, cfg, &ids[static_cast<size_t>(r)], 1,
                                               single.row(r), 2);
    EXPECT_TRUE(test::bitwise_equal(one, two)) << "n=" << n;
    EXPECT_TRUE(test::bitwise_equal(one, single)) << "n=" << n;
  }
}

// FlashNorm folds the norm gain into the next weights, W* = diag(g) W (diag(1 + g) for the 1 + g
// convention), and LayerNorm's bias into the projections' biases, b* = b + beta W. The folded
// weights must give the same table: computed in double and stored in float, the two tables differ
// only by the double rounding of the fold, far below one float rounding of the stored value.
TEST(FirstLayerTable, FlashNormFoldedWeightsGiveTheSameTable) {
  for (const Case& c : cases()) {
    for (bool empty_gain : {false, true}) {
      SCOPED_TRACE(c.name() + (empty_gain ? " (gain removed)" : " (all-ones gain)"));
      test::Rng rng(13);
      const BlockConfig cfg = config_of(c);
      const Layer1 l = random_layer1(c, rng);
      BlockWeights<double> folded = l.block;
      auto fold = [&](NormWeights<double>& n,
                      std::vector<std::pair<RowMatrix<double>*, RowVector<double>*>> targets) {
        RowVector<double> g = n.gain;
        if (cfg.norm.gain == GainConvention::one_plus) g.array() += 1.0;
        for (auto [W, b] : targets) {
          if (n.beta.size()) {
            const RowVector<double> shift = n.beta * *W;
            if (b->size() == 0) *b = RowVector<double>::Zero(W->cols());
            *b += shift;
          }
          *W = g.transpose().asDiagonal() * *W;
        }
        n.beta.resize(0);
        if (empty_gain)
          n.gain.resize(0);
        else
          n.gain = RowVector<double>::Constant(
              kD, cfg.norm.gain == GainConvention::one_plus ? 0.0 : 1.0);
      };
      auto& a = folded.attn;
      fold(folded.norm1, {{&a.wq, &a.bq}, {&a.wk, &a.bk}, {&a.wv, &a.bv}});
      if (c.kind == BlockKind::parallel) {
        auto& f = folded.ffn;
        std::vector<std::pair<RowMatrix<double>*, RowVector<double>*>> t{{&f.w_in, &f.b_in}};
        if (cfg.ffn.kind == FfnKind::glu) t.push_back({&f.w_up, &f.b_up});
        fold(folded.norm2, t);
      }
      const rewrite::FirstLayerOptions exact{rewrite::TableCompute::exact, 128, {}, 0};
      const auto t0 = rewrite::build_first_layer_table<float>(l.embedding, l.block, cfg, exact);
      const auto t1 = rewrite::build_first_layer_table<float>(l.embedding, folded, cfg, exact);
      EXPECT_TRUE(test::close_to(t1.rows, t0.rows, 2 * unit_roundoff<float>(),
                                 "same table up to the fold's double rounding, then one float "
                                 "rounding of each stored value",
                                 "f32"));
      // In the working precision the folded float weights follow the usual rule too.
      const RowMatrix<double> ref = vanilla_rows<double>(l.embedding, l.block, cfg);
      const RowMatrix<float> E = test::cast<float>(l.embedding);
      const auto t2 = rewrite::build_first_layer_table<float>(E, test::cast<float>(folded), cfg);
      const RowMatrix<float> vanilla = vanilla_rows<float>(E, test::cast<float>(l.block), cfg);
      EXPECT_TRUE(test::within_rule(t2.rows, vanilla, ref, {2.0, test::roundoff_floor<float>(), ""},
                                    "f32"));
    }
  }
}

// bf16 / half storage: the table is computed in double and rounded once to the storage type; the
// vanilla path in that storage type computes in float from weights stored in it and rounds its
// K/V outputs to it.
template <class T>
void check_low_precision_storage() {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name());
    test::Rng rng(14);
    const BlockConfig cfg = config_of(c);
    const Layer1 l = random_layer1(c, rng);
    const RowMatrix<double> ref = vanilla_rows<double>(l.embedding, l.block, cfg);
    const auto table = rewrite::build_first_layer_table<T>(
        l.embedding, l.block, cfg, {rewrite::TableCompute::exact, 256, {}, 0});
    // Vanilla in T: weights and embedding stored as T, arithmetic in float, outputs stored as T.
    const RowMatrix<float> E = test::cast<T>(l.embedding).template cast<float>();
    const BlockWeights<float> bt =
        test::cast<float>(test::cast<T>(l.block));  // T values are exact in float
    const RowMatrix<T> vanilla = vanilla_rows<float>(E, bt, cfg).template cast<T>();
    // A float-sized floor: the errors here are ~1e-3 (bf16) / ~4e-4 (half), so the factor of 2
    // over the vanilla path decides alone.
    const test::Tolerance tol{2.0, test::roundoff_floor<float>(), ""};
    EXPECT_TRUE(
        test::within_rule(as_double(table.rows), as_double(vanilla), ref, tol, type_name<T>()));
    // The working-precision build from the stored-as-T weights is the vanilla path exactly,
    // rounded once: compare with the same rule.
    const RowMatrix<T> Et = test::cast<T>(l.embedding);
    const BlockWeights<T> bw{test::cast<T>(l.block.norm1), test::cast<T>(l.block.norm2),
                             test::cast<T>(l.block.attn), test::cast<T>(l.block.ffn)};
    const auto working = rewrite::build_first_layer_table<T>(Et, bw, cfg);
    EXPECT_TRUE(
        test::within_rule(as_double(working.rows), as_double(vanilla), ref, tol, type_name<T>()));
  }
}

TEST(FirstLayerTable, Bf16Storage) {
  check_low_precision_storage<bf16>();
}
TEST(FirstLayerTable, HalfStorage) {
  check_low_precision_storage<f16>();
}

TEST(FirstLayerTable, ProgressIsReportedPerChunk) {
  test::Rng rng(15);
  const Case c = cases()[1];
  const Layer1 l = random_layer1(c, rng, 1000);
  std::vector<std::pair<Index, Index>> calls;
  rewrite::FirstLayerOptions opt;
  opt.chunk = 256;
  opt.progress = [&](Index done, Index total) { calls.push_back({done, total}); };
  const auto t = rewrite::build_first_layer_table<float>(l.embedding, l.block, config_of(c), opt);
  const std::vector<std::pair<Index, Index>> want{
      {256, 1000}, {512, 1000}, {768, 1000}, {1000, 1000}};
  EXPECT_EQ(calls, want);
  EXPECT_EQ(t.vocab(), 1000);
}

TEST(FirstLayerTable, RefusesLearnedPositionsAndSkiplessBlocks) {
  test::Rng rng(16);
  ModelConfig mc;
  mc.vocab = 50;
  mc.layers = 1;
  mc.block = config_of(cases()[0]);
  mc.learned_positions = true;
  mc.max_positions = 16;
  const auto w = test::random_model<double>(mc, kFfn, rng);
  try {
    rewrite::build_first_layer_table<float>(mc, w);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("learned_positions expected false, got true"), std::string::npos) << m;
    EXPECT_NE(m.find("depends on the position"), std::string::npos) << m;
  }
  mc.learned_positions = false;
  EXPECT_EQ(rewrite::build_first_layer_table<float>(mc, w).vocab(), 50);
  BlockConfig sk = mc.block;
  sk.kind = BlockKind::skipless_serial;
  try {
    rewrite::build_first_layer_table<float>(w.embedding, w.blocks[0], sk);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.kind expected serial or parallel"), std::string::npos)
        << e.what();
  }
}

TEST(FirstLayerTable, BadShapesNameTheArgument) {
  test::Rng rng(17);
  const Case c = cases()[3];  // parallel, biases, LayerNorm
  const BlockConfig cfg = config_of(c);
  const Layer1 l = random_layer1(c, rng, 40);
  auto expect_shape_error = [&](const RowMatrix<double>& E, const BlockWeights<double>& b,
                                const std::string& text) {
    try {
      rewrite::build_first_layer_table<float>(E, b, cfg);
      ADD_FAILURE() << "expected ShapeError with '" << text << "'";
    } catch (const ShapeError& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  {
    BlockWeights<double> b = l.block;
    b.attn.wk = RowMatrix<double>::Zero(kD, 32);
    expect_shape_error(l.embedding, b, "attn.wk expected 64x64, got 64x32");
  }
  {
    BlockWeights<double> b = l.block;
    b.attn.bv = RowVector<double>::Zero(3);
    expect_shape_error(l.embedding, b, "attn.bv.size() expected 64, got 3");
  }
  {
    BlockWeights<double> b = l.block;
    b.ffn.w_out = RowMatrix<double>::Zero(kFfn, 10);
    expect_shape_error(l.embedding, b, "ffn.w_out expected 96x64, got 96x10");
  }
  {
    BlockWeights<double> b = l.block;
    b.norm2.gain = RowVector<double>::Ones(7);
    expect_shape_error(l.embedding, b, "norm2.gain.size() expected 64, got 7");
  }
  expect_shape_error(RowMatrix<double>::Zero(40, 65), l.block,
                     "embedding.cols() (= shape.d) expected 64, got 65");
  RowMatrix<float> out(2, 10);
  const int ids[2] = {0, 40};
  try {
    rewrite::compute_first_layer_rows<float>(test::cast<float>(l.embedding),
                                             test::cast<float>(l.block), cfg, ids, 2, out);
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("out expected 2x256, got 2x10"), std::string::npos)
        << e.what();
  }
  RowMatrix<float> ok(2, 256);
  try {
    rewrite::compute_first_layer_rows<float>(test::cast<float>(l.embedding),
                                             test::cast<float>(l.block), cfg, ids, 2, ok);
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("ids[1] expected in [0, 40), got 40"), std::string::npos)
        << e.what();
  }
  try {
    rewrite::build_first_layer_table<float>(l.embedding, l.block, cfg, {{}, 0, {}, 0});
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("opt.chunk expected > 0, got 0"), std::string::npos)
        << e.what();
  }
}

TEST(FirstLayerTable, OverflowOfTheStorageTypeIsAnError) {
  test::Rng rng(18);
  const Case c = cases()[0];
  Layer1 l = random_layer1(c, rng, 20);
  l.embedding(7, 3) = 1e5;  // the residual column holds x itself: 1e5 > 65504
  try {
    rewrite::build_first_layer_table<f16>(l.embedding, l.block, config_of(c));
    FAIL() << "expected NumericalError";
  } catch (const NumericalError& e) {
    EXPECT_NE(std::string(e.what()).find("row of token 7, column 3 = 100000 overflows f16"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(rewrite::build_first_layer_table<bf16>(l.embedding, l.block, config_of(c)));
}

// ---------------------------------------------------------------------------------------------
// The paper's figures (arXiv 2402.13388, tex/precomp1stLayer.tex, "Examples"): every number below
// is printed in the paper's tables and is recomputed here by first_layer_cost().

namespace {
rewrite::FirstLayerCostConfig pythia() {
  rewrite::FirstLayerCostConfig c;
  c.d = 4096, c.e = 4096, c.layers = 32, c.vocab = 50400, c.ffn_hidden = 16384;
  c.kind = BlockKind::parallel, c.glu = false;
  return c;
}
rewrite::FirstLayerCostConfig mistral() {
  rewrite::FirstLayerCostConfig c;
  c.d = 4096, c.e = 1024, c.layers = 32, c.vocab = 32000, c.ffn_hidden = 14336;
  c.kind = BlockKind::serial, c.glu = true;
  return c;
}
rewrite::FirstLayerCostConfig mixtral_parallel() {
  rewrite::FirstLayerCostConfig c = mistral();
  c.kind = BlockKind::parallel, c.experts = 8, c.experts_per_token = 2;
  return c;
}
long long n(double x) {
  return std::llround(x);
}
}  // namespace

TEST(FirstLayerCost, ReproducesThePapersTable) {
  struct Row {
    rewrite::FirstLayerCostConfig cfg;
    long long removed, without1, with1, red1, red16, red256, red1024, extra, delta, total_100m,
        rel_pct;
  };
  const std::vector<Row> rows{
      {pythia(), 184549376, 184553472, 16384, 11264, 704, 44, 11, 619315200, 434765824, 69, 6},
      {mistral(), 25165824, 25169920, 10240, 2458, 154, 10, 3, 196608000, 171442176, 72, 2},
      {mixtral_parallel(), 1434451968, 1434456064, 10240, 140084, 8756, 548, 137, 196608000,
       -1237843968, 467, -3},
  };
  for (const Row& r : rows) {
    const auto c1 = rewrite::first_layer_cost(r.cfg, 1);
    EXPECT_EQ(n(c1.weights_removed), r.removed);
    EXPECT_EQ(n(c1.reads_without), r.without1);
    EXPECT_EQ(n(c1.reads_with), r.with1);
    EXPECT_EQ(n(c1.reduction), r.red1);
    EXPECT_EQ(n(rewrite::first_layer_cost(r.cfg, 16).reduction), r.red16);
    EXPECT_EQ(n(rewrite::first_layer_cost(r.cfg, 256).reduction), r.red256);
    EXPECT_EQ(n(rewrite::first_layer_cost(r.cfg, 1024).reduction), r.red1024);
    EXPECT_EQ(n(c1.table_extra), r.extra);
    EXPECT_EQ(n(c1.memory_delta), r.delta);
    EXPECT_EQ(n(c1.total_weights / 1e8), r.total_100m);  // 6.9B, 7.2B, 46.7B
    EXPECT_EQ(n(100 * c1.memory_delta_relative), r.rel_pct);
    EXPECT_DOUBLE_EQ(c1.bytes_per_token_with, 2.0 * static_cast<double>(r.with1));
  }
}

// The paper counts all 8 experts of the hypothetical parallel Mixtral as read at batch 1. With
// top-2 routing one token reads 2 experts: d + QKV + 2 * 3 d f values.
TEST(FirstLayerCost, RoutedExpertsAtBatchOneReadTopK) {
  auto cfg = mixtral_parallel();
  cfg.expert_reads = rewrite::ExpertReads::routed;
  const auto c = rewrite::first_layer_cost(cfg, 1);
  const double d = 4096, e = 1024, f = 14336;
  EXPECT_DOUBLE_EQ(c.reads_without, d + d * d + 2 * d * e + 2 * 3 * d * f);
  EXPECT_EQ(n(c.reduction), 36864);  // printed for the report: 377,491,456 / 10,240
  // Large batches touch every expert: the routed count approaches the paper's.
  EXPECT_NEAR(rewrite::first_layer_cost(cfg, 1024).reduction,
              rewrite::first_layer_cost(mixtral_parallel(), 1024).reduction, 1e-6);
  EXPECT_THROW(rewrite::first_layer_cost(cfg, 0), ShapeError);
}
