// ttx-test-labels: slim
// The streaming decode kernels against double-precision references: decode_vanilla against
// reference::attend, decode_weighted_keys / decode_weighted_rows against the explicit formula
// softmax(scale q K^T + bias) K. Each kernel and a straightforward float computation (the baseline,
// same working precision) are compared with the double reference under SPEC §5's rule. For
// bfloat16/half storage both paths read the stored (rounded) values, so the rule measures the
// kernel's own error; the storage rounding is checked separately against a computed first-order
// bound.
#include "ttx/kernel/decode.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/throws.hpp"
#include "support/tolerance.hpp"
#include "ttx/reference/attention.hpp"
#include "ttx/reference/rope.hpp"

using namespace ttx;
using kernel::DecodeOptions;
using kernel::KeyRotation;

namespace {

const char* rotation_name(KeyRotation r) {
  return r == KeyRotation::none ? "none"
                                : (r == KeyRotation::rotate_on_read ? "rotate" : "unrotate");
}

/// h x n additive bias: small random values, every 5th key of each head masked with -inf, and
/// (when `mask_head0`) every key of head 0 masked, which must give a zero row.
std::vector<float> make_bias(Index h, Index n, bool mask_head0, test::Rng& rng) {
  std::normal_distribution<double> g(0.0, 0.5);
  std::vector<float> b(static_cast<size_t>(h * n));
  for (Index i = 0; i < h; ++i)
    for (Index j = 0; j < n; ++j)
      b[static_cast<size_t>(i * n + j)] = (mask_head0 && i == 0) || (j % 5 == 2)
                                              ? -std::numeric_limits<float>::infinity()
                                              : static_cast<float>(g(rng));
  return b;
}

/// Explicit slim formula in scalar S: U_i = softmax(scale q_i Ks_g(i)^T + bias_i) Kw, where Ks/Kw
/// are K with the first e columns rotated (+) / un-rotated (-) as `rot` says.
template <class S>
RowMatrix<S> slim_formula(const RowVector<S>& q, const RowMatrix<S>& K, const AttentionShape& sh,
                          double scale, KeyRotation rot, const RopeSpec* rope,
                          const std::vector<float>* bias) {
  const Index n = K.rows(), e = sh.kv_width(), dk = sh.head_dim;
  RowMatrix<S> Ks = K, Kw = K;
  if (rot == KeyRotation::rotate_on_read)
    Ks.leftCols(e) = reference::rope<S>(RowMatrix<S>(K.leftCols(e)), sh.kv_heads, dk, *rope, 0, +1);
  if (rot == KeyRotation::unrotate_on_read)
    Kw.leftCols(e) = reference::rope<S>(RowMatrix<S>(K.leftCols(e)), sh.kv_heads, dk, *rope, 0, -1);
  RowMatrix<S> U(sh.heads, K.cols());
  for (Index i = 0; i < sh.heads; ++i) {
    const Index g = sh.kv_head_of(i);
    RowVector<S> s = (q.segment(i * dk, dk) * Ks.middleCols(g * dk, dk).transpose()) * S(scale);
    if (bias)
      for (Index j = 0; j < n; ++j) s(j) += S((*bias)[static_cast<size_t>(i * n + j)]);
    stable_softmax(s);
    U.row(i) = s * Kw;
  }
  return U;
}

/// Inputs-form formula: U_i = softmax(scale Qt_i X^T + bias_i) X.
template <class S>
RowMatrix<S> rows_formula(const RowMatrix<S>& Qt, const RowMatrix<S>& X, double scale,
                          const std::vector<float>* bias) {
  const Index n = X.rows();
  RowMatrix<S> U(Qt.rows(), X.cols());
  for (Index i = 0; i < Qt.rows(); ++i) {
    RowVector<S> s = (Qt.row(i) * X.transpose()) * S(scale);
    if (bias)
      for (Index j = 0; j < n; ++j) s(j) += S((*bias)[static_cast<size_t>(i * n + j)]);
    stable_softmax(s);
    U.row(i) = s * X;
  }
  return U;
}

reference::ScoreBias bias_fn(const std::vector<float>* bias, Index n) {
  if (!bias) return {};
  return [bias, n](Index h, Index, Index k) {
    return static_cast<double>((*bias)[static_cast<size_t>(h * n + k)]);
  };
}

/// First-order bound on the relative (Frobenius) change of softmax(scale q Ks^T + b) Vs when every
/// stored key and value is rounded with relative error <= u: |dv| <= u|v|, |ds_j| <= u*sigma with
/// sigma = max_j scale * sum_t |q_t||k_jt|, |dp_j| <= 2 u sigma p_j, so elementwise
/// |d out| <= u (1 + 2 sigma) sum_j p_j |v_j|; 10% added for second-order terms.
double storage_bound(const RowVector<double>& q, const RowMatrix<double>& K,
                     const RowMatrix<double>& V, const AttentionShape& sh, double scale,
                     bool values_are_keys, const std::vector<float>* bias, double u,
                     const RowMatrix<double>& out) {
  const Index n = K.rows(), dk = sh.head_dim;
  double num = 0;
  for (Index i = 0; i < sh.heads; ++i) {
    const Index g = sh.kv_head_of(i);
    const auto Kh = K.middleCols(g * dk, dk);
    const RowVector<double> qi = q.segment(i * dk, dk);
    RowVector<double> s = (qi * Kh.transpose()) * scale;
    if (bias)
      for (Index j = 0; j < n; ++j) s(j) += (*bias)[static_cast<size_t>(i * n + j)];
    stable_softmax(s);
    const double sigma = ((Kh.cwiseAbs() * qi.cwiseAbs().transpose()) * scale).maxCoeff();
    const RowVector<double> a = values_are_keys
                                    ? RowVector<double>(s * V.cwiseAbs())
                                    : RowVector<double>(s * V.middleCols(g * dk, dk).cwiseAbs());
    num += (u * (1 + 2 * sigma) * 1.1 * a).squaredNorm();
  }
  return std::sqrt(num) / out.norm();
}

struct Shape {
  Index heads, kv_heads, head_dim;
};

const std::vector<Shape> kShapes = {{4, 4, 64}, {8, 2, 24}, {4, 1, 33}, {2, 2, 128}};
const std::vector<Index> kSizes = {1, 3, 7, 1000};

template <class T>
void vanilla_case(const Shape& s, Index n, bool with_bias, Index tile, int threads, double qscale,
                  test::Rng& rng) {
  const AttentionShape sh{s.heads * s.head_dim, s.heads, s.kv_heads, s.head_dim};
  SCOPED_TRACE(testing::Message() << type_name<T>() << " h=" << s.heads << " kv=" << s.kv_heads
                                  << " dk=" << s.head_dim << " n=" << n << " bias=" << with_bias
                                  << " tile=" << tile << " threads=" << threads);
  const RowMatrix<float> K0 = test::random_matrix<float>(n, sh.kv_width(), 1.0, rng);
  const RowMatrix<float> V0 = test::random_matrix<float>(n, sh.kv_width(), 1.0, rng);
  const RowVector<float> q = test::random_vector<float>(sh.q_width(), 0.0, qscale, rng);
  KVCache<T> cache(sh, n + 3);
  cache.append(K0, V0);
  const std::vector<float> bias =
      with_bias ? make_bias(sh.heads, n, n > 3, rng) : std::vector<float>{};
  const std::vector<float>* bp = with_bias ? &bias : nullptr;

  DecodeOptions opt;
  opt.tile = tile;
  opt.threads = threads;
  opt.score_bias = with_bias ? bias.data() : nullptr;
  RowVector<float> out(sh.q_width());
  kernel::decode_vanilla<T>(q, cache, sh, opt, out);

  // Both the baseline and the reference read the stored values.
  const RowMatrix<float> Kf = cache.keys().view().template cast<float>();
  const RowMatrix<float> Vf = cache.values().view().template cast<float>();
  const double scale = sh.default_scale();
  const RowMatrix<double> ref = reference::attend<double>(
      q.cast<double>(), Kf.cast<double>(), Vf.cast<double>(), sh, scale, false, n, bias_fn(bp, n));
  const RowMatrix<float> base =
      reference::attend<float>(q, Kf, Vf, sh, scale, false, n, bias_fn(bp, n));
  EXPECT_TRUE(test::within_rule(
      out, base, ref, {2.0, test::roundoff_floor<float>(), "float accumulation"}, type_name<T>()));
  if constexpr (!std::is_same_v<T, float>) {
    if (n == 1000) {  // storage rounding, stated on its own: exact data vs stored data
      const RowMatrix<double> exact =
          reference::attend<double>(q.cast<double>(), K0.cast<double>(), V0.cast<double>(), sh,
                                    scale, false, n, bias_fn(bp, n));
      const double bound = storage_bound(q.cast<double>(), K0.cast<double>(), V0.cast<double>(), sh,
                                         scale, false, bp, unit_roundoff<T>(), exact);
      EXPECT_TRUE(
          test::close_to(ref, exact, bound, "storage rounding, first-order bound", type_name<T>()));
    }
  }
}

template <class T>
void slim_case(const Shape& s, Index n, Index extra, KeyRotation rot, const RopeSpec& rope,
               bool with_bias, Index tile, int threads, test::Rng& rng) {
  const AttentionShape sh{s.heads * s.head_dim, s.heads, s.kv_heads, s.head_dim};
  SCOPED_TRACE(
      testing::Message() << type_name<T>() << " h=" << s.heads << " kv=" << s.kv_heads
                         << " dk=" << s.head_dim << " n=" << n << " extra=" << extra
                         << " rot=" << rotation_name(rot) << " r=" << rope.rotary_dim << " layout="
                         << (rope.layout == RopeLayout::interleaved ? "interleaved" : "half_split")
                         << " bias=" << with_bias << " tile=" << tile << " threads=" << threads);
  const Index w = sh.kv_width() + extra;
  const RowMatrix<float> K0 = test::random_matrix<float>(n, w, 1.0, rng);
  const RowVector<float> q = test::random_vector<float>(sh.q_width(), 0.0, 1.0, rng);
  RowCache<T> keys(w, n + 2);
  keys.append(K0);
  const std::vector<float> bias =
      with_bias ? make_bias(sh.heads, n, n > 3, rng) : std::vector<float>{};
  const std::vector<float>* bp = with_bias ? &bias : nullptr;

  DecodeOptions opt;
  opt.tile = tile;
  opt.threads = threads;
  opt.rotation = rot;
  opt.rope = rot == KeyRotation::none ? nullptr : &rope;
  opt.score_bias = with_bias ? bias.data() : nullptr;
  RowMatrix<float> U(sh.heads, w);
  kernel::decode_weighted_keys<T>(q, keys, sh, opt, U);

  const RowMatrix<float> Kf = keys.view().template cast<float>();
  const double scale = sh.default_scale();
  const RowMatrix<double> ref =
      slim_formula<double>(q.cast<double>(), Kf.cast<double>(), sh, scale, rot, &rope, bp);
  const RowMatrix<float> base = slim_formula<float>(q, Kf, sh, scale, rot, &rope, bp);
  EXPECT_TRUE(test::within_rule(
      U, base, ref, {2.0, test::roundoff_floor<float>(), "float accumulation"}, type_name<T>()));
  if constexpr (!std::is_same_v<T, float>) {
    if (n == 1000 && rot == KeyRotation::none) {
      const RowMatrix<double> exact =
          slim_formula<double>(q.cast<double>(), K0.cast<double>(), sh, scale, rot, &rope, bp);
      const double bound = storage_bound(q.cast<double>(), K0.cast<double>(), K0.cast<double>(), sh,
                                         scale, true, bp, unit_roundoff<T>(), exact);
      EXPECT_TRUE(
          test::close_to(ref, exact, bound, "storage rounding, first-order bound", type_name<T>()));
    }
  }
}

template <class T>
class DecodeTyped : public ::testing::Test {};
// double storage is read through its own AVX-512 load (two 8-lane loads narrowed to float), which
// once read double rows as half; the data are float values, so double storage is exact and the
// storage-rounding checks above must find no difference at all.
using StorageTypes = ::testing::Types<float, double, bf16, f16>;
TYPED_TEST_SUITE(DecodeTyped, StorageTypes);

TYPED_TEST(DecodeTyped, VanillaMatchesReferenceAttend) {
  test::Rng rng(11);
  for (const Shape& s : kShapes)
    for (Index n : kSizes)
      for (bool bias : {false, true})
        if (bias || n < 1000) vanilla_case<TypeParam>(s, n, bias, 0, 1, 1.0, rng);
}

TYPED_TEST(DecodeTyped, VanillaTilesThreadsAndLargeScores) {
  test::Rng rng(12);
  for (auto [tile, threads] : {std::pair<Index, int>{7, 1}, {13, 2}, {100, 2}, {999, 1}})
    vanilla_case<TypeParam>({8, 2, 64}, 1000, true, tile, threads, 1.0, rng);
  // Scores spread over tens of units: the running max changes from tile to tile.
  vanilla_case<TypeParam>({4, 4, 64}, 1000, false, 64, 2, 8.0, rng);
  // Seven or eight heads per group (MQA, GQA): float keys take the 8-row kernel. head_dim 24 and
  // 40 are all tail (2 and 3 vectors, the last partial), 64 one 48-column slab and one vector.
  for (Shape s : {Shape{8, 1, 24}, Shape{7, 1, 40}, Shape{16, 2, 64}})
    for (Index n : {Index(7), Index(300)}) vanilla_case<TypeParam>(s, n, n == 300, 0, 2, 1.0, rng);
  // One head per group (MHA) runs heads in blocks of four over 64-column slabs: 5 and 7 heads
  // leave blocks of one and three, head_dim 80 and 200 leave 16 and 8 columns past the last slab,
  // 33 is narrower than one slab. Tile 13 on one thread spreads the next-tile prefetch over odd
  // strides; 2 threads with the automatic tile leave each a partial last tile. (The bias masks all
  // of head 0, so the unbiased run is the one that checks head 0's columns.)
  for (Shape s : {Shape{5, 5, 80}, Shape{7, 7, 200}, Shape{3, 3, 33}})
    for (auto [tile, threads] : {std::pair<Index, int>{0, 2}, {13, 1}})
      vanilla_case<TypeParam>(s, 300, tile == 13, tile, threads, 1.0, rng);
}

TYPED_TEST(DecodeTyped, WeightedKeysMatchesFormula) {
  test::Rng rng(21);
  for (const Shape& s : kShapes)
    for (Index n : kSizes)
      for (bool bias : {false, true})
        if (bias || n < 1000)
          slim_case<TypeParam>(s, n, 0, KeyRotation::none, RopeSpec::none(), bias, 0, 1, rng);
}

TYPED_TEST(DecodeTyped, WeightedKeysRotationModes) {
  test::Rng rng(22);
  const std::vector<Shape> shapes = {{4, 4, 64}, {8, 2, 24}, {4, 1, 128}};
  for (const Shape& s : shapes)
    for (KeyRotation rot : {KeyRotation::rotate_on_read, KeyRotation::unrotate_on_read})
      for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split})
        for (Index r : {s.head_dim, s.head_dim / 2 - (s.head_dim / 2) % 2}) {
          RopeSpec rope = RopeSpec::full(s.head_dim, layout);
          rope.rotary_dim = r;
          for (Index n : {Index(3), Index(300)})
            slim_case<TypeParam>(s, n, 0, rot, rope, n == 300, 0, 1, rng);
        }
}

// The rotation kernels' blocking (detail/rotated_keys.hpp): scores rotate four keys at a time for
// up to four heads of a group (1, 2, 3 and 4 + 1 heads per group below) in steps of 16 lanes
// (half-split r/2 and interleaved r of 4, 7, 8, 12, 20 and 40 leave masked tails; r < head_dim
// leaves unrotated columns), a block of fewer than four keys runs on a padded copy (n 5 and 150,
// tile 13), and positions cross the cos/sin tables' 64-position rows (n 150); the un-rotation
// for the sum writes whole rows the same way.
TYPED_TEST(DecodeTyped, WeightedKeysRotationBlocks) {
  test::Rng rng(24);
  const std::vector<Shape> shapes = {{5, 5, 40}, {4, 2, 16}, {6, 2, 80}, {10, 2, 24}};
  for (const Shape& s : shapes)
    for (KeyRotation rot : {KeyRotation::rotate_on_read, KeyRotation::unrotate_on_read})
      for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split})
        for (Index r : {s.head_dim, 2 * (s.head_dim * 3 / 10)}) {
          RopeSpec rope = RopeSpec::full(s.head_dim, layout);
          rope.rotary_dim = r;
          for (Index n : {Index(5), Index(150)})
            for (auto [tile, threads] : {std::pair<Index, int>{0, 2}, {13, 1}})
              slim_case<TypeParam>(s, n, 0, rot, rope, n == 150, tile, threads, rng);
        }
}

TYPED_TEST(DecodeTyped, WeightedKeysWideCacheTilesAndThreads) {
  test::Rng rng(23);
  // w > e (a completed GQA basis): the extra columns join the weighted sum, never the scores.
  RopeSpec rope = RopeSpec::full(24, RopeLayout::half_split);
  rope.inv_freq = {1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005, 1e-4, 5e-5, 1e-5, 5e-6};
  for (KeyRotation rot :
       {KeyRotation::none, KeyRotation::rotate_on_read, KeyRotation::unrotate_on_read})
    for (auto [tile, threads] : {std::pair<Index, int>{0, 2}, {13, 1}})
      slim_case<TypeParam>({8, 2, 24}, 1000, 40, rot, rope, true, tile, threads, rng);
}

TYPED_TEST(DecodeTyped, WeightedRowsMatchesFormula) {
  test::Rng rng(31);
  // Scores run up to four heads at a time (h 5, 6, 7, 8 leave blocks of 1, 2, 3, 4) over four
  // keys at a time (tile 97 and n 1, 3, 7 leave single keys).
  for (Index w : {Index(64), Index(33), Index(68), Index(160)})
    for (Index n : kSizes)
      for (Index h : {Index(1), Index(5), Index(6), Index(7), Index(8)})
        for (int threads : {1, 2}) {
          SCOPED_TRACE(testing::Message() << type_name<TypeParam>() << " w=" << w << " n=" << n
                                          << " h=" << h << " threads=" << threads);
          const RowMatrix<float> X0 = test::random_matrix<float>(n, w, 1.0, rng);
          const RowMatrix<float> Qt = test::random_matrix<float>(h, w, 0.2, rng);
          RowCache<TypeParam> rows(w, n);
          rows.append(X0);
          const std::vector<float> bias = make_bias(h, n, false, rng);
          DecodeOptions opt;
          opt.scale = 0.7;
          opt.threads = threads;
          opt.tile = n == 1000 ? 97 : 0;
          opt.score_bias = bias.data();
          RowMatrix<float> U(h, w);
          kernel::decode_weighted_rows<TypeParam>(Qt, rows, opt, U);
          const RowMatrix<float> Xf = rows.view().template cast<float>();
          const RowMatrix<double> ref =
              rows_formula<double>(Qt.cast<double>(), Xf.cast<double>(), 0.7, &bias);
          const RowMatrix<float> base = rows_formula<float>(Qt, Xf, 0.7, &bias);
          EXPECT_TRUE(test::within_rule(U, base, ref,
                                        {2.0, test::roundoff_floor<float>(), "float accumulation"},
                                        type_name<TypeParam>()));
        }
}

// Splitting the keys over threads only changes the order of float sums.
TEST(Decode, ThreadsAgreeWithinRoundoff) {
  test::Rng rng(41);
  const AttentionShape sh{512, 8, 8, 64};
  const Index n = 2000;
  RowCache<float> keys(sh.kv_width(), n);
  keys.append(test::random_matrix<float>(n, sh.kv_width(), 1.0, rng));
  KVCache<float> kv(sh, n);
  kv.append(test::random_matrix<float>(n, sh.kv_width(), 1.0, rng),
            test::random_matrix<float>(n, sh.kv_width(), 1.0, rng));
  const RowVector<float> q = test::random_vector<float>(sh.q_width(), 0.0, 1.0, rng);
  const RopeSpec rope = RopeSpec::full(64, RopeLayout::interleaved);
  DecodeOptions one, two;
  one.threads = 1;
  two.threads = 2;
  one.rope = two.rope = &rope;
  one.rotation = two.rotation = KeyRotation::rotate_on_read;
  RowMatrix<float> U1(8, sh.kv_width()), U2(8, sh.kv_width());
  kernel::decode_weighted_keys<float>(q, keys, sh, one, U1);
  kernel::decode_weighted_keys<float>(q, keys, sh, two, U2);
  const double bound = 64 * unit_roundoff<float>();
  EXPECT_TRUE(test::close_to(U2, U1, bound, "thread split reorders float sums", "f32"));
  one.rotation = two.rotation = KeyRotation::none;
  RowVector<float> o1(sh.q_width()), o2(sh.q_width());
  kernel::decode_vanilla<float>(q, kv, sh, one, o1);
  kernel::decode_vanilla<float>(q, kv, sh, two, o2);
  EXPECT_TRUE(test::close_to(o2, o1, bound, "thread split reorders float sums", "f32"));
}

// The decode kernels' cos/sin lanes: cos/sin(m theta_p) from the 64-position tables by angle
// addition in double, rounded once. Against std::cos/sin of the double angle m * theta_p: the two
// angles differ by rounding (<= 4097 * 2^-52 ~ 1e-12 here), which can move a value across a float
// rounding boundary, so each lane is within one float ulp plus 1e-11. Laid out per the layout
// (interleaved: (c, c) and sign (-s, s) per pair), in chunks of 16 `stride` apart, zero past the
// last lane.
TEST(Decode, RopeLanesMatchCosSin) {
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split})
    for (Index r : {Index(2), Index(26), Index(40), Index(128)}) {
      RopeSpec spec = RopeSpec::full(r, layout);
      kernel::detail::RopeTable table;
      table.prepare(spec, 5000);
      const std::vector<double> freqs = spec.frequencies();
      const Index lanes = table.lanes(), chunks = (lanes + 15) / 16, stride = 24;
      ASSERT_EQ(lanes, layout == RopeLayout::interleaved ? r : r / 2);
      for (Index m :
           {Index(0), Index(1), Index(63), Index(64), Index(65), Index(1000), Index(4097)})
        for (float sign : {1.0f, -1.0f}) {
          std::vector<float> c(static_cast<size_t>(chunks * stride), 7.0f), s = c;
          table.at_lanes(m, sign, c.data(), s.data(), stride);
          for (Index x = 0; x < chunks * 16; ++x) {
            SCOPED_TRACE(testing::Message()
                         << "r=" << r << " m=" << m << " sign=" << sign << " lane=" << x);
            const size_t at = static_cast<size_t>((x / 16) * stride + x % 16);
            if (x >= lanes) {
              EXPECT_EQ(c[at], 0.0f);
              EXPECT_EQ(s[at], 0.0f);
              continue;
            }
            const Index p = layout == RopeLayout::interleaved ? x / 2 : x;
            const double angle = static_cast<double>(m) * freqs[static_cast<size_t>(p)];
            const float lane_sign = layout == RopeLayout::interleaved && x % 2 == 0 ? -1.0f : 1.0f;
            const float want_c = static_cast<float>(std::cos(angle));
            const float want_s = lane_sign * sign * static_cast<float>(std::sin(angle));
            EXPECT_LE(std::abs(c[at] - want_c),
                      std::nextafter(std::abs(want_c), 2.0f) - std::abs(want_c));
            EXPECT_LE(std::abs(s[at] - want_s),
                      std::nextafter(std::abs(want_s), 2.0f) - std::abs(want_s));
          }
          for (Index x = 0; x < chunks; ++x)  // the gaps between chunks are not written
            for (Index g = 16; g < stride && x + 1 < chunks; ++g)
              EXPECT_EQ(c[static_cast<size_t>(x * stride + g)], 7.0f);
        }
    }
}

// A rope table built for one spec must not be reused for another (it is cached per thread).
TEST(Decode, RopeSpecChangesBetweenCalls) {
  test::Rng rng(42);
  const AttentionShape sh{128, 2, 2, 64};
  const Index n = 200;
  const RowMatrix<float> K0 = test::random_matrix<float>(n, 128, 1.0, rng);
  RowCache<float> keys(128, n);
  keys.append(K0);
  const RowVector<float> q = test::random_vector<float>(128, 0.0, 1.0, rng);
  for (double base : {10000.0, 500000.0, 10000.0}) {
    const RopeSpec rope = RopeSpec::full(64, RopeLayout::half_split, base);
    DecodeOptions opt;
    opt.rope = &rope;
    opt.rotation = KeyRotation::rotate_on_read;
    RowMatrix<float> U(2, 128);
    kernel::decode_weighted_keys<float>(q, keys, sh, opt, U);
    const RowMatrix<double> ref = slim_formula<double>(
        q.cast<double>(), K0.cast<double>(), sh, sh.default_scale(), opt.rotation, &rope, nullptr);
    const RowMatrix<float> bsl =
        slim_formula<float>(q, K0, sh, sh.default_scale(), opt.rotation, &rope, nullptr);
    EXPECT_TRUE(test::within_rule(U, bsl, ref, {2.0, test::roundoff_floor<float>(), ""}, "f32"))
        << "base " << base;
  }
}

// Slim's second half: head_i = U_i W[:, g(i)], one thread and split over W's rows (from 1 MB of
// W: the MHA and GQA cases below; the small one stays on one thread), against the same products
// per group in float (the baseline) and in double (the reference), SPEC.md §5.
TEST(Decode, HeadsFromWeightedMatchesPerGroupProducts) {
  test::Rng rng(43);
  struct Case {
    AttentionShape sh;
    Index w;
  };
  for (const Case& c :
       {Case{{512, 4, 4, 128}, 512}, Case{{1024, 16, 4, 64}, 1100}, Case{{64, 4, 2, 16}, 40}}) {
    const Index h = c.sh.heads, dk = c.sh.head_dim, G = c.sh.group();
    const RowMatrix<float> U = test::random_matrix<float>(h, c.w, 1.0, rng);
    const RowMatrix<float> W = test::random_matrix<float>(c.w, c.sh.kv_width(), 1.0, rng);
    RowMatrix<float> bsl(h, dk);
    RowMatrix<double> ref(h, dk);
    for (Index g = 0; g < c.sh.kv_heads; ++g) {
      bsl.middleRows(g * G, G) = U.middleRows(g * G, G) * W.middleCols(g * dk, dk);
      ref.middleRows(g * G, G) =
          U.middleRows(g * G, G).cast<double>() * W.middleCols(g * dk, dk).cast<double>();
    }
    for (int threads : {1, 2, 0}) {
      RowMatrix<float> H = RowMatrix<float>::Constant(h, dk, -7.0f);
      kernel::decode_heads_from_weighted(U, W, c.sh, threads, H);
      EXPECT_TRUE(test::within_rule(H, bsl, ref, {2.0, test::roundoff_floor<float>(), ""}, "f32"))
          << "h " << h << " kv " << c.sh.kv_heads << " w " << c.w << " threads " << threads;
    }
  }
  const AttentionShape sh{64, 4, 2, 16};
  const RowMatrix<float> U = RowMatrix<float>::Ones(4, 40), W = RowMatrix<float>::Ones(40, 32);
  RowMatrix<float> H(4, 16);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_heads_from_weighted(U, RowMatrix<float>::Ones(40, 31), sh, 1, H); },
      "W expected 40x32, got 40x31");
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_heads_from_weighted(RowMatrix<float>::Ones(4, 39), W, sh, 1, H); },
      "U expected 4x40, got 4x39");
  RowMatrix<float> badH(4, 15);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_heads_from_weighted(U, W, sh, 1, badH); }, "H expected 4x16, got 4x15");
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_heads_from_weighted(U, W, sh, -1, H); },
      "threads expected >= 0, got -1");
}

TEST(Decode, BadInputsNameTheArgument) {
  const AttentionShape sh{64, 4, 2, 16};
  KVCache<float> kv(sh, 8);
  RowCache<float> keys(32, 8);
  const RowVector<float> q = RowVector<float>::Ones(64);
  RowVector<float> out(64);
  RowMatrix<float> U(4, 32);
  DecodeOptions opt;
  // empty caches
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_vanilla<float>(q, kv, sh, opt, out); }, "cache size");
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, opt, U); }, "cache size");
  kv.append(RowMatrix<float>::Ones(3, 32), RowMatrix<float>::Ones(3, 32));
  keys.append(RowMatrix<float>::Ones(3, 32));
  // vanilla
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_vanilla<float>(RowVector<float>::Ones(63), kv, sh, opt, out); },
      "q.cols() (= heads*head_dim) expected 64, got 63");
  RowVector<float> short_out(32);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_vanilla<float>(q, kv, sh, opt, short_out); },
      "out.cols() (= heads*head_dim) expected 64, got 32");
  test::expect_error_containing<ShapeError>(
      [&] {
        kernel::decode_vanilla<float>(q, kv, AttentionShape{64, 4, 4, 16}, opt, out);
      },
      "cache.shape()");
  test::expect_error_containing<ShapeError>(
      [&] {
        kernel::decode_vanilla<float>(q, kv, AttentionShape{64, 4, 3, 16}, opt, out);
      },
      "shape.kv_heads");
  DecodeOptions rot;
  rot.rotation = KeyRotation::rotate_on_read;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_vanilla<float>(q, kv, sh, rot, out); }, "opt.rotation");
  // weighted keys
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, rot, U); },
      "opt.rope expected a RopeSpec");
  RopeSpec odd = RopeSpec::full(16, RopeLayout::interleaved);
  odd.rotary_dim = 7;
  rot.rope = &odd;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, rot, U); }, "rope.rotary_dim");
  RowMatrix<float> badU(4, 31);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, opt, badU); },
      "U expected 4x32, got 4x31");
  RowCache<float> narrow(16, 4);
  narrow.append(RowMatrix<float>::Ones(1, 16));
  RowMatrix<float> U16(4, 16);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, narrow, sh, opt, U16); },
      "keys.width() expected >= kv_width=32, got 16");
  DecodeOptions neg;
  neg.tile = -1;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, neg, U); },
      "opt.tile expected >= 0, got -1");
  neg.tile = 0;
  neg.threads = -2;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_keys<float>(q, keys, sh, neg, U); },
      "opt.threads expected >= 0, got -2");
  // weighted rows
  const RowMatrix<float> Qt = RowMatrix<float>::Ones(4, 32);
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_rows<float>(Qt, keys, opt, U); }, "opt.scale expected nonzero");
  DecodeOptions one;
  one.scale = 1;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_rows<float>(RowMatrix<float>::Ones(4, 30), keys, one, U); },
      "Qt.cols() (= rows.width()) expected 32, got 30");
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_rows<float>(Qt, keys, one, badU); },
      "U expected 4x32, got 4x31");
  one.rotation = KeyRotation::unrotate_on_read;
  test::expect_error_containing<ShapeError>(
      [&] { kernel::decode_weighted_rows<float>(Qt, keys, one, U); }, "opt.rotation");
}

}  // namespace
