// ttx-test-labels: io
// The memory-mapped safetensors reader: round trips of F32/F16/BF16 (exact conversion, unaligned
// data), the committed checkpoint files, and every malformed-file error naming file, tensor,
// expected and actual.
#include "ttx/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <functional>

#include "io/io_test_util.hpp"
#include "support/tolerance.hpp"

using namespace ttx;
using test::StEntry;
using test::throws_with;

namespace {

std::vector<StEntry> sample_entries() {
  return {
      {"a.f32", "F32", {2, 3}, test::raw_bytes<float>({1.5, -2.25, 3.0e-8, 65504.0, -0.0, 7.0})},
      {"b.f16", "F16", {4}, test::raw_bytes<f16>({0.1, -3.0, 6.1e-5, 1024.5})},
      {"c.bf16", "BF16", {3, 2}, test::raw_bytes<bf16>({0.1, -3.0, 1e-30, 3e38, 0.5, -7.0})},
  };
}

std::string write_sample(const test::TempDir& dir, size_t pad = 8) {
  const auto entries = sample_entries();
  const std::string path = dir.file("sample.safetensors");
  test::write_file(path,
                   test::st_bytes(test::st_header(entries, {{"format", "pt"}}), entries, pad));
  return path;
}

/// Expected float values: each stored value widened exactly (what the format holds).
template <class T>
RowMatrix<float> stored(Index rows, Index cols, std::initializer_list<double> v) {
  RowMatrix<float> m(rows, cols);
  Index i = 0;
  for (double x : v) m.data()[i++] = static_cast<float>(static_cast<T>(x));
  return m;
}

}  // namespace

TEST(Safetensors, RoundTripF32F16BF16) {
  test::TempDir dir;
  for (size_t pad : {8, 1}) {  // pad 1: header length not a multiple of 8, data unaligned
    const io::SafetensorsFile f(write_sample(dir, pad));
    ASSERT_EQ(f.size(), 3u);
    EXPECT_EQ(f.names(), (std::vector<std::string>{"a.f32", "b.f16", "c.bf16"}));
    EXPECT_EQ(f.metadata().at("format"), "pt");
    const io::TensorView& b = f.tensor("b.f16");
    EXPECT_EQ(b.dtype, io::DType::f16);
    EXPECT_EQ(b.shape, (std::vector<Index>{4}));
    EXPECT_EQ(b.bytes, 8u);
    EXPECT_TRUE(test::bitwise_equal(io::to_float_matrix(f.tensor("a.f32")),
                                    stored<float>(2, 3, {1.5, -2.25, 3.0e-8, 65504.0, -0.0, 7.0})))
        << "pad " << pad;
    EXPECT_TRUE(
        test::bitwise_equal(io::to_float_matrix(b), stored<f16>(1, 4, {0.1, -3.0, 6.1e-5, 1024.5})))
        << "pad " << pad;
    EXPECT_TRUE(test::bitwise_equal(io::to_float_matrix(f.tensor("c.bf16")),
                                    stored<bf16>(3, 2, {0.1, -3.0, 1e-30, 3e38, 0.5, -7.0})))
        << "pad " << pad;
  }
}

TEST(Safetensors, MovedFileKeepsViewsValid) {
  test::TempDir dir;
  io::SafetensorsFile a(write_sample(dir));
  const unsigned char* p = a.tensor("c.bf16").data;
  io::SafetensorsFile b(std::move(a));
  EXPECT_EQ(b.tensor("c.bf16").data, p);
  EXPECT_EQ(io::to_float_matrix(b.tensor("c.bf16"))(0, 1), -3.0f);
}

TEST(Safetensors, OpensCommittedCheckpointFile) {
  const io::SafetensorsFile f(std::string(TTX_TEST_DATA_DIR) +
                              "/checkpoints/qwen2_f16_tied/model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.header_bytes() % 8, 0u);
  const io::TensorView& q = f.tensor("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.dtype, io::DType::f16);
  EXPECT_EQ(q.shape, (std::vector<Index>{64, 64}));
  EXPECT_TRUE(f.contains("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_FALSE(f.contains("lm_head.weight"));  // tied
}

TEST(Safetensors, ZeroElementTensorIsValid) {
  test::TempDir dir;
  std::vector<StEntry> e = {{"empty", "F32", {0, 4}, ""},
                            {"x", "BF16", {1}, test::raw_bytes<bf16>({2.0})}};
  test::write_file(dir.file("z.safetensors"), test::st_bytes(test::st_header(e), e));
  const io::SafetensorsFile f(dir.file("z.safetensors"));
  EXPECT_EQ(io::to_float_matrix(f.tensor("empty")).rows(), 0);
  EXPECT_EQ(io::to_float_matrix(f.tensor("x"))(0, 0), 2.0f);
}

TEST(Safetensors, MissingFile) {
  EXPECT_TRUE(throws_with<FormatError>([] { io::SafetensorsFile f("/nonexistent/x.safetensors"); },
                                       {"cannot open", "/nonexistent/x.safetensors"}));
}

TEST(Safetensors, ShorterThanLengthField) {
  test::TempDir dir;
  test::write_file(dir.file("s.safetensors"), "abc");
  EXPECT_TRUE(throws_with<FormatError>([&] { io::SafetensorsFile f(dir.file("s.safetensors")); },
                                       {"s.safetensors", "file is 3 bytes", "at least 8"}));
}

TEST(Safetensors, BadHeaderLength) {
  test::TempDir dir;
  std::string bytes = test::read_file(write_sample(dir));
  const size_t size = bytes.size();
  bytes[5] = '\x7f';  // header length now ~2^47
  test::write_file(dir.file("bad.safetensors"), bytes);
  EXPECT_TRUE(throws_with<FormatError>([&] { io::SafetensorsFile f(dir.file("bad.safetensors")); },
                                       {"bad.safetensors", "header length field says",
                                        "expected at most " + std::to_string(size - 8)}));
}

TEST(Safetensors, TruncatedFile) {
  test::TempDir dir;
  const std::string bytes = test::read_file(write_sample(dir));
  // Cut into the data: the last tensor's end (c.bf16, 12 bytes) lies beyond the file.
  test::write_file(dir.file("t.safetensors"), bytes.substr(0, bytes.size() - 5));
  EXPECT_TRUE(throws_with<FormatError>([&] { io::SafetensorsFile f(dir.file("t.safetensors")); },
                                       {"t.safetensors", "tensor 'c.bf16'", "truncated"}));
  // Cut into the header: the length field promises more than there is.
  test::write_file(dir.file("h.safetensors"), bytes.substr(0, 40));
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::SafetensorsFile f(dir.file("h.safetensors")); },
      {"h.safetensors", "header length field says", "expected at most 32"}));
}

TEST(Safetensors, HeaderNotJson) {
  test::TempDir dir;
  std::vector<StEntry> none;
  std::string bytes = test::st_bytes(nlohmann::json::object(), none);
  bytes.replace(8, 2, "[}");
  test::write_file(dir.file("j.safetensors"), bytes);
  EXPECT_TRUE(throws_with<FormatError>([&] { io::SafetensorsFile f(dir.file("j.safetensors")); },
                                       {"j.safetensors", "not a JSON object"}));
}

TEST(Safetensors, OffsetsInconsistentWithDtypeAndShape) {
  test::TempDir dir;
  auto e = sample_entries();
  auto h = test::st_header(e);
  h["b.f16"]["shape"] = {5};  // 5 x F16 = 10 bytes, but the offsets span 8
  test::write_file(dir.file("o.safetensors"), test::st_bytes(h, e));
  EXPECT_TRUE(throws_with<FormatError>(
      [&] { io::SafetensorsFile f(dir.file("o.safetensors")); },
      {"o.safetensors", "tensor 'b.f16'", "span 8 bytes", "expected 10", "[5]"}));
}

TEST(Safetensors, MalformedEntries) {
  test::TempDir dir;
  const auto e = sample_entries();
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"unknown dtype",
       [](nlohmann::json& h) { h["a.f32"]["dtype"] = "F7"; },
       {"tensor 'a.f32'", "unknown dtype \"F7\""}},
      {"no dtype",
       [](nlohmann::json& h) { h["a.f32"].erase("dtype"); },
       {"tensor 'a.f32'", "\"dtype\" expected a string, got nothing"}},
      {"negative dim",
       [](nlohmann::json& h) {
         h["a.f32"]["shape"] = {2, -3};
       },
       {"tensor 'a.f32'", "non-negative integers", "[2,-3]"}},
      {"three offsets",
       [](nlohmann::json& h) {
         h["b.f16"]["data_offsets"] = {24, 32, 40};
       },
       {"tensor 'b.f16'", "expected [begin, end]", "[24,32,40]"}},
      {"begin > end",
       [](nlohmann::json& h) {
         h["b.f16"]["data_offsets"] = {32, 24};
       },
       {"tensor 'b.f16'", "[32, 24]", "begin <= end"}},
      {"overlap",
       [](nlohmann::json& h) {
         h["b.f16"]["data_offsets"] = {20, 28};
         h["c.bf16"]["data_offsets"] = {28, 40};
       },
       {"tensor 'b.f16'", "starts at data offset 20, expected 24", "overlaps"}},
      {"gap",
       [](nlohmann::json& h) {
         h["a.f32"]["data_offsets"] = {4, 28};
       },
       {"starts at data offset 4, expected 0", "gap"}},
      {"metadata value",
       [](nlohmann::json& h) {
         h["__metadata__"] = {{"n", 3}};
       },
       {"\"__metadata__\" entry 'n'", "expected a string value, got 3"}},
  };
  for (const auto& c : cases) {
    auto h = test::st_header(e);
    c.edit(h);
    const std::string path = dir.file("m.safetensors");
    test::write_file(path, test::st_bytes(h, e));
    try {
      io::SafetensorsFile f(path);
      ADD_FAILURE() << c.what << ": no exception";
    } catch (const FormatError& ex) {
      const std::string m = ex.what();
      EXPECT_NE(m.find("m.safetensors"), std::string::npos) << c.what << ": " << m;
      for (const auto& p : c.parts)
        EXPECT_NE(m.find(p), std::string::npos) << c.what << ": lacks '" << p << "': " << m;
    }
  }
}

TEST(Safetensors, TrailingBytesBeyondLastTensor) {
  test::TempDir dir;
  const auto e = sample_entries();
  test::write_file(dir.file("x.safetensors"), test::st_bytes(test::st_header(e), e) + "junk");
  EXPECT_TRUE(throws_with<FormatError>([&] { io::SafetensorsFile f(dir.file("x.safetensors")); },
                                       {"x.safetensors", "data section is 48 bytes, expected 44"}));
}

TEST(Safetensors, MissingTensorNamesFileAndTensor) {
  test::TempDir dir;
  const io::SafetensorsFile f(write_sample(dir));
  EXPECT_TRUE(throws_with<FormatError>([&] { f.tensor("nope.weight"); },
                                       {"sample.safetensors", "missing tensor 'nope.weight'"}));
}

TEST(Safetensors, UnsupportedDtypeOpensButDoesNotConvert) {
  test::TempDir dir;
  std::vector<StEntry> e = {{"ids", "I64", {2}, test::raw_bytes<std::int64_t>({3, 4})},
                            {"w", "F32", {1}, test::raw_bytes<float>({1.0})}};
  test::write_file(dir.file("i.safetensors"), test::st_bytes(test::st_header(e), e));
  const io::SafetensorsFile f(dir.file("i.safetensors"));
  EXPECT_EQ(f.tensor("ids").dtype, io::DType::i64);
  EXPECT_TRUE(throws_with<UnsupportedError>(
      [&] { io::to_float_matrix(f.tensor("ids")); },
      {"i.safetensors", "tensor 'ids'", "dtype I64", "supported: F32, F16, BF16"}));
}

TEST(Safetensors, RankThreeDoesNotConvertToMatrix) {
  test::TempDir dir;
  std::vector<StEntry> e = {{"t", "F32", {1, 1, 2}, test::raw_bytes<float>({1.0, 2.0})}};
  test::write_file(dir.file("r.safetensors"), test::st_bytes(test::st_header(e), e));
  const io::SafetensorsFile f(dir.file("r.safetensors"));
  EXPECT_TRUE(throws_with<ShapeError>([&] { io::to_float_matrix(f.tensor("t")); },
                                      {"tensor 't'", "rank 1 or 2", "[1, 1, 2]"}));
}
