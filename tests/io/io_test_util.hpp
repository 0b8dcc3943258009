// Helpers for the io tests: a scratch directory, a safetensors writer (the byte format written
// directly, so tests can build damaged files at run time instead of committing them), and an
// exception-message check.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ttx/io/safetensors.hpp"

namespace ttx::test {

/// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("ttx_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
             (info ? info->name() : "x"));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

/// One tensor to write: name, dtype string, shape and raw little-endian bytes.
struct StEntry {
  std::string name;
  std::string dtype;
  std::vector<long long> shape;
  std::string bytes;
};

/// The JSON header the format defines for `entries` packed in order.
inline nlohmann::json st_header(const std::vector<StEntry>& entries,
                                const nlohmann::json& metadata = nlohmann::json()) {
  nlohmann::json h = nlohmann::json::object();
  std::uint64_t at = 0;
  for (const auto& e : entries) {
    h[e.name] = {
        {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {at, at + e.bytes.size()}}};
    at += e.bytes.size();
  }
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  return h;
}

/// File bytes: 8-byte little-endian length, the header text (padded with spaces to `pad`), data.
inline std::string st_bytes(const nlohmann::json& header, const std::vector<StEntry>& entries,
                            size_t pad = 8) {
  std::string h = header.dump();
  while (pad > 1 && h.size() % pad != 0) h += ' ';
  const std::uint64_t n = h.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += h;
  for (const auto& e : entries) out += e.bytes;
  return out;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// Every tensor of an existing file, as entries (raw bytes copied).
inline std::vector<StEntry> st_entries(const io::SafetensorsFile& f) {
  std::vector<StEntry> v;
  for (const auto& kv : f.tensors()) {
    const io::TensorView& t = kv.second;
    v.push_back({t.name, io::dtype_name(t.dtype),
                 std::vector<long long>(t.shape.begin(), t.shape.end()),
                 std::string(reinterpret_cast<const char*>(t.data), t.bytes)});
  }
  return v;
}

/// Raw little-endian bytes of values stored as T (float, Eigen::half, Eigen::bfloat16, ...).
template <class T, class V>
std::string raw_bytes(std::initializer_list<V> values) {
  std::string s;
  for (V v : values) {
    const T x = static_cast<T>(v);
    s.append(reinterpret_cast<const char*>(&x), sizeof x);
  }
  return s;
}

/// Runs f, expects exception E whose message contains every one of `parts`.
template <class E, class F>
::testing::AssertionResult throws_with(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const E& e) {
    const std::string m = e.what();
    for (const auto& p : parts)
      if (m.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message lacks '" << p << "': " << m;
    return ::testing::AssertionSuccess() << m;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "wrong exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << "no exception";
}

}  // namespace ttx::test
