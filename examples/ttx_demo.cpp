// ttx_demo (foundation version): builds a small decoder-only model from a fixed seed, runs the
// reference oracle's greedy generation and prints what it did. Later issues replace this with the
// vanilla vs rewritten comparison.
#include <cmath>
#include <cstdio>
#include <random>
#include <ttx/ttx.hpp>

int main() {
  using namespace ttx;
  const Index d = 64, heads = 4, f = 160, vocab = 256, layers = 2;
  reference::ModelConfig cfg;
  cfg.vocab = vocab;
  cfg.layers = layers;
  cfg.block.attn.shape = {d, heads, heads, d / heads};
  cfg.block.attn.rope = RopeSpec::full(d / heads, RopeLayout::half_split);
  cfg.block.norm = NormSpec::rms(1e-6);
  cfg.block.ffn = FfnSpec::swiglu();
  cfg.final_norm_spec = NormSpec::rms(1e-6);

  std::mt19937_64 rng(2024);
  auto mat = [&](Index r, Index c, double sd) {
    std::normal_distribution<double> n(0, sd);
    RowMatrix<double> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
    return m;
  };
  auto gain = [&] { return RowVector<double>(mat(1, d, 0.1).array() + 1.0); };
  reference::ModelWeights<double> w;
  w.embedding = mat(vocab, d, 1.0);
  for (Index l = 0; l < layers; ++l) {
    reference::BlockWeights<double> b;
    b.norm1.gain = gain();
    b.norm2.gain = gain();
    const double s = 1.0 / std::sqrt(double(d));
    b.attn.wq = mat(d, d, s), b.attn.wk = mat(d, d, s), b.attn.wv = mat(d, d, s),
    b.attn.wo = mat(d, d, s);
    b.ffn.w_in = mat(d, f, s), b.ffn.w_up = mat(d, f, s),
    b.ffn.w_out = mat(f, d, 1.0 / std::sqrt(double(f)));
    w.blocks.push_back(b);
  }
  w.final_norm.gain = gain();
  w.lm_head = mat(d, vocab, 1.0 / std::sqrt(double(d)));

  reference::DecoderModel<double> model(cfg, w);
  const std::vector<int> prompt{1, 17, 42, 7};
  const auto tokens = model.generate(prompt, 16);
  std::printf("ttx demo (reference oracle, double): d=%ld heads=%ld layers=%ld vocab=%ld\n",
              long(d), long(heads), long(layers), long(vocab));
  std::printf("prompt:");
  for (int t : prompt) std::printf(" %d", t);
  std::printf("\ngenerated:");
  for (int t : tokens) std::printf(" %d", t);
  std::printf("\nKV cache rows per layer: %ld\n", long(model.position()));
  return 0;
}
