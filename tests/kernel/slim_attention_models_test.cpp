// ttx-test-labels: slim
// Slim attention on model-shaped layers at small n (a 3-token prompt and one decode step), float
// cache, against the reference oracle in double (SPEC.md §5). The offline LU / QR in double on
// d ~ 3000 takes seconds, so under sanitizers only SmolLM2 runs.
#include <gtest/gtest.h>

#include "kernel/slim_harness.hpp"

using namespace ttx;
using namespace ttx::slim_test;
using rewrite::CacheForm;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

void model_case(const char* label, AttentionShape s, RopeSpec rope, CacheForm form, bool big,
                bool position_bias = false, double scale = 0) {
  if (big && kSanitized) GTEST_SKIP() << label << ": too slow under sanitizers (runs in release)";
  Case st{s, rope, {}, form};
  st.prompt = 3;
  st.steps = 1;
  st.position_bias = position_bias;
  st.scale = scale;
  st.label = label;
  check<float>(st, 15);
}

TEST(SlimAttentionModels, SmolLM2_1_7B) {
  model_case("SmolLM2-1.7B d 2048 h 32", {2048, 32, 32, 64},
             RopeSpec::full(64, RopeLayout::half_split), CacheForm::keys, false);
}
TEST(SlimAttentionModels, Phi3Mini) {
  model_case("Phi-3-mini d 3072 h 32", {3072, 32, 32, 96},
             RopeSpec::full(96, RopeLayout::half_split), CacheForm::keys, true);
}
TEST(SlimAttentionModels, CodeGemma7B) {
  model_case("CodeGemma-7B d 3072 e 4096", {3072, 16, 16, 256},
             RopeSpec::full(256, RopeLayout::half_split), CacheForm::keys, true);
}
TEST(SlimAttentionModels, T5_3B_KeysAndInputs) {
  model_case("T5-3B-like d 1024 e 4096, keys", {1024, 32, 32, 128}, RopeSpec::none(),
             CacheForm::keys, true, true, 1.0);
  model_case("T5-3B-like d 1024 e 4096, inputs", {1024, 32, 32, 128}, RopeSpec::none(),
             CacheForm::inputs, true, true, 1.0);
}
TEST(SlimAttentionModels, Gemma2_9B) {
  model_case("Gemma2-9B-like d 3584 e 2048 GQA", {3584, 16, 8, 256},
             RopeSpec::full(256, RopeLayout::half_split), CacheForm::keys, true);
}

}  // namespace
