// ttx-test-labels: first_layer
// The first-layer runtime (kernel/first_layer.hpp): the table path is bitwise equal to the
// computed path; both follow the SPEC §5 rule against the double reference (rotated q and k, v,
// residual); keys-only caches (raw or rotated); whole small models generate the same greedy tokens
// with layer 1 from the table; bad ids, shapes, capacities and overflow are clear errors.
#include "ttx/kernel/first_layer.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/tolerance.hpp"

using namespace ttx;

namespace {

// The oracle's Eigen products would fork OpenMP threads on this shared 2-core machine.
[[maybe_unused]] const int kSingleThreadedOracle = (Eigen::setNbThreads(1), 0);

constexpr Index kD = 64, kHeads = 4, kHeadDim = 16, kFfn = 96;

struct Case {
  BlockKind kind;
  Index kv_heads;
  bool biases;
  NormSpec norm;
  FfnSpec ffn;
  RopeLayout layout;
  std::string name() const {
    return std::string(kind == BlockKind::serial ? "serial" : "parallel") +
           "/kv:" + std::to_string(kv_heads) + (biases ? "/bias" : "/nobias") +
           (norm.kind == NormKind::rms ? "/rms" : "/layer") +
           (layout == RopeLayout::half_split ? "/half_split" : "/interleaved");
  }
};

std::vector<Case> cases() {
  return {
      {BlockKind::serial, 4, false, NormSpec::rms(1e-6), FfnSpec::swiglu(), RopeLayout::half_split},
      {BlockKind::serial, 2, true, NormSpec::rms(1e-5), FfnSpec::swiglu(), RopeLayout::interleaved},
      {BlockKind::serial, 1, false, NormSpec::layer(1e-5), FfnSpec::mlp(Activation::gelu_erf),
       RopeLayout::half_split},
      {BlockKind::parallel, 4, true, NormSpec::layer(1e-5), FfnSpec::mlp(Activation::gelu_tanh),
       RopeLayout::half_split},
      {BlockKind::parallel, 2, false, NormSpec::rms(1e-6), FfnSpec::swiglu(),
       RopeLayout::interleaved},
  };
}

ModelConfig model_config(const Case& c, Index vocab, Index layers) {
  ModelConfig mc;
  mc.vocab = vocab;
  mc.layers = layers;
  mc.block.kind = c.kind;
  mc.block.attn.shape = {kD, kHeads, c.kv_heads, kHeadDim};
  // Partial rotary width on the interleaved cases (GPT-J rotates part of each head).
  mc.block.attn.rope = RopeSpec::full(kHeadDim, c.layout);
  if (c.layout == RopeLayout::interleaved) mc.block.attn.rope.rotary_dim = kHeadDim / 2;
  mc.block.norm = c.norm;
  mc.block.ffn = c.ffn;
  mc.final_norm_spec = c.norm;
  return mc;
}

ModelWeights<double> random_weights(const Case& c, const ModelConfig& mc, test::Rng& rng) {
  test::BiasOptions b;
  if (c.biases) b = test::BiasOptions::all();
  return test::random_model<double>(mc, kFfn, rng, b, c.biases);
}

/// Layer 1 with the reference oracle in T for tokens at positions start...: rotated q, rotated k,
/// v, and the residual (x, plus ffn(norm2(x)) for parallel blocks).
template <class T>
struct Vanilla {
  RowMatrix<T> q, k, v, residual;
};
template <class T>
Vanilla<T> vanilla(const RowMatrix<T>& E, const BlockWeights<T>& b, const BlockConfig& cfg,
                   const std::vector<int>& ids, Index start) {
  const AttentionShape& s = cfg.attn.shape;
  RowMatrix<T> X(static_cast<Index>(ids.size()), s.d);
  for (Index r = 0; r < X.rows(); ++r) X.row(r) = E.row(ids[static_cast<size_t>(r)]);
  const RowMatrix<T> xn = reference::norm<T>(X, b.norm1, cfg.norm);
  Vanilla<T> o;
  o.q = reference::rope<T>(reference::linear<T>(xn, b.attn.wq, b.attn.bq), s.heads, s.head_dim,
                           cfg.attn.rope, start);
  o.k = reference::rope<T>(reference::linear<T>(xn, b.attn.wk, b.attn.bk), s.kv_heads, s.head_dim,
                           cfg.attn.rope, start);
  o.v = reference::linear<T>(xn, b.attn.wv, b.attn.bv);
  o.residual = X;
  if (cfg.kind == BlockKind::parallel)
    o.residual += reference::ffn<T>(reference::norm<T>(X, b.norm2, cfg.norm), b.ffn, cfg.ffn);
  return o;
}

RowMatrix<double> d(const Eigen::Ref<const RowMatrix<float>>& m) {
  return m.cast<double>();
}
template <class T>
RowMatrix<double> d(const Eigen::Map<const RowMatrix<T>>& m) {
  return m.template cast<double>();
}

const std::vector<int> kPrompt{5, 17, 0, 299, 42, 17};

}  // namespace

TEST(FirstLayerKernel, TableLookupIsBitwiseTheComputedPath) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name());
    test::Rng rng(21);
    const ModelConfig mc = model_config(c, 300, 1);
    const ModelWeights<float> w = test::cast<float>(random_weights(c, mc, rng));
    const auto table = rewrite::build_first_layer_table<float>(mc, w);
    const AttentionShape& s = mc.block.attn.shape;
    KVCache<float> ct(s, 16), cc(s, 16);
    KVCache<bf16> bt(s, 16), bc(s, 16);
    RowCache<float> raw_t(s.kv_width(), 16), raw_c(s.kv_width(), 16);
    RowCache<float> rot_t(s.kv_width(), 16), rot_c(s.kv_width(), 16);
    // A prefill of 6 tokens, then two decode steps.
    for (const std::vector<int>& ids : {kPrompt, std::vector<int>{7}, std::vector<int>{299}}) {
      const Index n = static_cast<Index>(ids.size());
      RowMatrix<float> qt(n, s.q_width()), rt(n, s.d), qc(n, s.q_width()), rc(n, s.d);
      kernel::first_layer_lookup(table, ids, ct, qt, rt);
      kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, ids, cc, qc, rc);
      EXPECT_TRUE(test::bitwise_equal(qt, qc));
      EXPECT_TRUE(test::bitwise_equal(rt, rc));
      kernel::first_layer_lookup(table, ids, bt, qt, rt);
      kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, ids, bc, qc, rc);
      kernel::first_layer_lookup(table, ids, raw_t, KeyStorage::raw, qt, rt);
      kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, ids, raw_c, KeyStorage::raw,
                                  qc, rc);
      kernel::first_layer_lookup(table, ids, rot_t, KeyStorage::rotated, qt, rt);
      kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, ids, rot_c,
                                  KeyStorage::rotated, qc, rc);
      EXPECT_TRUE(test::bitwise_equal(qt, qc));
      EXPECT_TRUE(test::bitwise_equal(rt, rc));
    }
    EXPECT_EQ(ct.size(), 8);
    EXPECT_TRUE(test::bitwise_equal(ct.keys().view(), cc.keys().view()));
    EXPECT_TRUE(test::bitwise_equal(ct.values().view(), cc.values().view()));
    EXPECT_TRUE(test::bitwise_equal(bt.keys().view(), bc.keys().view()));
    EXPECT_TRUE(test::bitwise_equal(bt.values().view(), bc.values().view()));
    EXPECT_TRUE(test::bitwise_equal(raw_t.view(), raw_c.view()));
    EXPECT_TRUE(test::bitwise_equal(rot_t.view(), rot_c.view()));
    // The keys-only caches hold what the KV cache holds: rotated keys, or the table's raw keys.
    EXPECT_TRUE(test::bitwise_equal(rot_t.view(), ct.keys().view()));
    const auto L = table.layout;
    RowMatrix<float> raw_expect(8, L.kv_width);
    std::vector<int> all = kPrompt;
    all.push_back(7);
    all.push_back(299);
    for (Index r = 0; r < 8; ++r)
      raw_expect.row(r) =
          table.rows.row(all[static_cast<size_t>(r)]).segment(L.k_offset(), L.kv_width);
    EXPECT_TRUE(test::bitwise_equal(raw_t.view(), raw_expect));
    // Slim attention's KCache, raw and rotated, holds the same keys.
    KCache<float> kraw(s, 8, KeyStorage::raw), krot(s, 8, KeyStorage::rotated);
    KCache<float> kraw_c(s, 8, KeyStorage::raw);
    {
      RowMatrix<float> q8(8, s.q_width()), r8(8, s.d), q8c(8, s.q_width()), r8c(8, s.d);
      kernel::first_layer_lookup(table, all, kraw, q8, r8);
      kernel::first_layer_lookup(table, all, krot, q8, r8);
      kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, all, kraw_c, q8c, r8c);
      EXPECT_TRUE(test::bitwise_equal(q8, q8c));
    }
    EXPECT_TRUE(test::bitwise_equal(kraw.view(), raw_expect));
    EXPECT_TRUE(test::bitwise_equal(kraw_c.view(), raw_expect));
    EXPECT_TRUE(test::bitwise_equal(krot.view(), ct.keys().view()));
    // The cache-free variant at explicit positions gives the same rows.
    std::vector<Index> pos{0, 1, 2, 3, 4, 5, 6, 7};
    RowMatrix<float> q(8, s.q_width()), k(8, s.kv_width()), v(8, s.kv_width()), res(8, s.d);
    kernel::first_layer_lookup(table, all, pos, q, k, v, res);
    EXPECT_TRUE(test::bitwise_equal(k, ct.keys().view()));
    EXPECT_TRUE(test::bitwise_equal(v, ct.values().view()));
  }
}

// Candidate: the table path (table computed in float, or in double and stored at T). Baseline:
// the vanilla layer in the same storage (reference oracle in float on weights stored as T, keys
// and values rounded to T as the cache stores them). Reference: the oracle in double.
template <class T>
void check_rule() {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name() + " " + type_name<T>());
    test::Rng rng(22);
    const ModelConfig mc = model_config(c, 300, 1);
    const ModelWeights<double> w = random_weights(c, mc, rng);
    const AttentionShape& s = mc.block.attn.shape;
    const bool f32 = std::is_same_v<T, float>;
    const auto table = f32 ? rewrite::build_first_layer_table<T>(mc, test::cast<float>(w))
                           : rewrite::build_first_layer_table<T>(
                                 mc, w, {rewrite::TableCompute::exact, 512, {}, 0});
    // The vanilla path sees the weights as stored in T.
    const ModelWeights<double> wt = test::cast<double>(test::cast<T>(w));
    const RowMatrix<float> Ef = test::cast<float>(wt.embedding);
    const BlockWeights<float> bf = test::cast<float>(wt.blocks[0]);
    KVCache<T> cache(s, 16);
    Index start = 0;
    for (const std::vector<int>& ids : {kPrompt, std::vector<int>{123}}) {
      const Index n = static_cast<Index>(ids.size());
      RowMatrix<float> q(n, s.q_width()), res(n, s.d);
      kernel::first_layer_lookup(table, ids, cache, q, res);
      const Vanilla<double> ref = vanilla<double>(w.embedding, w.blocks[0], mc.block, ids, start);
      const Vanilla<float> van = vanilla<float>(Ef, bf, mc.block, ids, start);
      const RowMatrix<double> vk = van.k.template cast<T>().template cast<double>();
      const RowMatrix<double> vv = van.v.template cast<T>().template cast<double>();
      // A float-sized floor for every type: at bf16/half the errors are ~1e-3 and the factor of
      // 2 over the vanilla path decides alone.
      const test::Tolerance tol{2.0, test::roundoff_floor<float>(), ""};
      EXPECT_TRUE(test::within_rule(d(q), d(van.q), ref.q, tol, type_name<T>()));
      EXPECT_TRUE(test::within_rule(d(res), d(van.residual), ref.residual, tol, type_name<T>()));
      EXPECT_TRUE(
          test::within_rule(d(cache.keys().rows(start, n)), vk, ref.k, tol, type_name<T>()));
      EXPECT_TRUE(
          test::within_rule(d(cache.values().rows(start, n)), vv, ref.v, tol, type_name<T>()));
      start += n;
    }
  }
}

TEST(FirstLayerKernel, FollowsTheRuleF32) {
  check_rule<float>();
}
TEST(FirstLayerKernel, FollowsTheRuleBf16) {
  check_rule<bf16>();
}
TEST(FirstLayerKernel, FollowsTheRuleHalf) {
  check_rule<f16>();
}

namespace {

/// Runs a model with layer 1 from the first-layer table (K and V in a ttx::KVCache<float>) and
/// layers 2..L from the double reference; greedy decoding like reference::DecoderModel::generate.
class TableModel {
 public:
  TableModel(const ModelConfig& mc, const ModelWeights<double>& w,
             const rewrite::FirstLayerTable<float>& table)
      : mc_(mc), w_(w), table_(table), cache1_(mc.block.attn.shape, 64) {
    caches_.resize(static_cast<size_t>(mc.layers - 1));
  }

  RowMatrix<double> forward(const std::vector<int>& ids) {
    const AttentionShape& s = mc_.block.attn.shape;
    const Index n = static_cast<Index>(ids.size()), start = cache1_.size();
    RowMatrix<float> q(n, s.q_width()), res(n, s.d);
    kernel::first_layer_lookup(table_, ids, cache1_, q, res);
    const auto& b = w_.blocks[0];
    const RowMatrix<double> K = cache1_.keys().view().cast<double>();
    const RowMatrix<double> V = cache1_.values().view().cast<double>();
    const RowMatrix<double> heads = reference::attend<double>(
        q.cast<double>(), K, V, s, mc_.block.attn.effective_scale(), true, start);
    RowMatrix<double> h =
        res.cast<double>() + reference::linear<double>(heads, b.attn.wo, b.attn.bo);
    if (mc_.block.kind == BlockKind::serial)
      h += reference::ffn<double>(reference::norm<double>(h, b.norm2, mc_.block.norm), b.ffn,
                                  mc_.block.ffn);
    for (Index l = 1; l < mc_.layers; ++l)
      h = reference::block<double>(h, w_.blocks[static_cast<size_t>(l)], mc_.block,
                                   caches_[static_cast<size_t>(l - 1)]);
    h = reference::norm<double>(h, w_.final_norm, mc_.final_norm_spec);
    return reference::linear<double>(h, w_.lm_head);
  }

  std::vector<int> generate(const std::vector<int>& prompt, Index steps) {
    std::vector<int> out;
    RowMatrix<double> L = forward(prompt);
    for (Index st = 0; st < steps; ++st) {
      Index best = 0;
      L.row(L.rows() - 1).maxCoeff(&best);
      out.push_back(static_cast<int>(best));
      if (st + 1 < steps) L = forward({static_cast<int>(best)});
    }
    return out;
  }

 private:
  const ModelConfig& mc_;
  const ModelWeights<double>& w_;
  const rewrite::FirstLayerTable<float>& table_;
  KVCache<float> cache1_;
  std::vector<reference::KVCache<double>> caches_;
};

}  // namespace

TEST(FirstLayerKernel, WholeModelGeneratesTheSameGreedyTokens) {
  for (const Case& c : cases()) {
    for (bool fold : {false, true}) {
      SCOPED_TRACE(c.name() + (fold ? " (FlashNorm-folded table)" : ""));
      test::Rng rng(23);
      const ModelConfig mc = model_config(c, 2500, 3);
      const ModelWeights<double> w = random_weights(c, mc, rng);
      reference::DecoderModel<double> ref(mc, w);
      const std::vector<int> want = ref.generate(kPrompt, 12);
      // The table from float weights (working precision); optionally from weights whose norm1
      // and norm2 gains were folded into the projections (W* = diag(g) W), with all-ones gains.
      ModelWeights<float> wf = test::cast<float>(w);
      if (fold && c.norm.kind == NormKind::rms) {
        auto& b = wf.blocks[0];
        const RowVector<float> g1 = b.norm1.gain, g2 = b.norm2.gain;
        for (RowMatrix<float>* W : {&b.attn.wq, &b.attn.wk, &b.attn.wv})
          *W = g1.transpose().asDiagonal() * *W;
        b.ffn.w_in = g2.transpose().asDiagonal() * b.ffn.w_in;
        if (c.ffn.kind == FfnKind::glu) b.ffn.w_up = g2.transpose().asDiagonal() * b.ffn.w_up;
        b.norm1.gain.setOnes();
        b.norm2.gain.setOnes();
      }
      const auto table = rewrite::build_first_layer_table<float>(mc, wf);
      TableModel m(mc, w, table);
      const std::vector<int> got = m.generate(kPrompt, 12);
      EXPECT_EQ(got, want);
      // A table that is not layer 1 must not pass this test: a wrong table changes the tokens.
      if (!fold && c.kind == BlockKind::serial && c.kv_heads == 4) {
        auto broken = table;
        broken.rows.col(table.layout.v_offset()) *= 3.0f;
        broken.rows.col(1) *= -1.0f;
        TableModel bad(mc, w, broken);
        EXPECT_NE(bad.generate(kPrompt, 12), want) << "the greedy check is blind";
      }
    }
  }
}

TEST(FirstLayerKernel, BadInputIsAClearError) {
  test::Rng rng(24);
  const Case c = cases()[1];
  const ModelConfig mc = model_config(c, 300, 1);
  const ModelWeights<float> w = test::cast<float>(random_weights(c, mc, rng));
  const auto table = rewrite::build_first_layer_table<float>(mc, w);
  const AttentionShape& s = mc.block.attn.shape;
  KVCache<float> cache(s, 4);
  RowMatrix<float> q(2, s.q_width()), res(2, s.d);
  auto expect = [&](auto&& call, auto tag, const std::string& text) {
    using E = decltype(tag);
    try {
      call();
      ADD_FAILURE() << "expected an error with '" << text << "'";
    } catch (const E& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
    EXPECT_EQ(cache.size(), 0) << "a failed call must leave the cache unchanged";
  };
  expect(
      [&] {
        kernel::first_layer_lookup(table, {3, 300}, cache, q, res);
      },
      ShapeError{""}, "ids[1] expected in [0, 300), got 300");
  expect(
      [&] {
        kernel::first_layer_lookup(table, {-1, 3}, cache, q, res);
      },
      ShapeError{""}, "ids[0] expected in [0, 300), got -1");
  expect(
      [&] {
        kernel::first_layer_compute(w.embedding, w.blocks[0], mc.block, {3, 300}, cache, q, res);
      },
      ShapeError{""}, "ids[1] expected in [0, 300), got 300");
  RowMatrix<float> q_bad(2, 10), res_bad(3, s.d);
  expect(
      [&] {
        kernel::first_layer_lookup(table, {1, 2}, cache, q_bad, res);
      },
      ShapeError{""}, "q expected 2x64, got 2x10");
  expect(
      [&] {
        kernel::first_layer_lookup(table, {1, 2}, cache, q, res_bad);
      },
      ShapeError{""}, "residual expected 2x64, got 3x64");
  KVCache<float> other(AttentionShape{kD, kHeads, kHeads, kHeadDim}, 4);
  try {
    kernel::first_layer_lookup(table, {1, 2}, other, q, res);
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("cache.shape() expected {d=64, heads=4, kv_heads=2, "
                                         "head_dim=16}, got {d=64, heads=4, kv_heads=4"),
              std::string::npos)
        << e.what();
  }
  RowMatrix<float> q5(5, s.q_width()), res5(5, s.d);
  expect(
      [&] {
        kernel::first_layer_lookup(table, {1, 2, 3, 4, 5}, cache, q5, res5);
      },
      CapacityError{""}, "cache capacity expected >= 5 rows (0 cached + 5 new), got capacity 4");
  RowCache<float> keys_bad(s.d, 4);
  expect(
      [&] {
        kernel::first_layer_lookup(table, {1, 2}, keys_bad, KeyStorage::raw, q, res);
      },
      ShapeError{""}, "keys.width() (= e = kv_heads * head_dim) expected 32, got 64");
  RowCache<float> keys(s.kv_width(), 1);
  try {
    kernel::first_layer_lookup(table, {1, 2}, keys, KeyStorage::rotated, q, res);
    ADD_FAILURE() << "expected CapacityError";
  } catch (const CapacityError& e) {
    EXPECT_NE(std::string(e.what()).find("RowCache::extend: cache capacity expected >= 2"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(keys.size(), 0);
  // A completed-basis KCache (width d) holds K* = X W_K*, which the table does not store.
  KCache<float> wide(s, 4, KeyStorage::raw, s.d);
  try {
    kernel::first_layer_lookup(table, {1, 2}, wide, q, res);
    ADD_FAILURE() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("cache.width() expected e = 32, got 64"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(wide.size(), 0);
  // Keys too large for half: the write is refused and the cache rolled back.
  auto big = table;
  big.rows.col(table.layout.k_offset() + 3).setConstant(1e6f);
  KVCache<f16> half(s, 4);
  try {
    kernel::first_layer_lookup(big, {1, 2}, half, q, res);
    ADD_FAILURE() << "expected NumericalError";
  } catch (const NumericalError& e) {
    EXPECT_NE(std::string(e.what()).find("overflows f16"), std::string::npos) << e.what();
  }
  EXPECT_EQ(half.size(), 0);
  std::vector<Index> pos{0};
  RowMatrix<float> k(2, s.kv_width()), v(2, s.kv_width());
  try {
    kernel::first_layer_lookup(table, {1, 2}, pos, q, k, v, res);
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("positions.size() (= ids.size()) expected 2, got 1"),
              std::string::npos)
        << e.what();
  }
}
