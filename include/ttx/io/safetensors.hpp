// Memory-mapped reader for the safetensors format (HuggingFace): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {str: str}}, then the data section; offsets are relative to the data section's start. The file
// is mapped read-only (POSIX mmap), the header is validated once at open (header length against
// the file size, every tensor's offsets inside the data section and equal to dtype size x shape,
// tensors packed without overlap or gap, as the reference Rust reader requires), and tensors are
// exposed as views into the mapping. Conversion to ttx matrices supports F32, F16 and BF16.
// Needs nlohmann/json (Debian: nlohmann-json3-dev, header-only) and a POSIX system.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "ttx/core/error.hpp"
#include "ttx/core/types.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ttx/io/safetensors.hpp reads little-endian data in place: big-endian hosts are unsupported"
#endif

namespace ttx {

/// A file that does not follow its format: truncated, a bad header, missing or inconsistent
/// entries. The message names the file, the entry, the expected and the actual value.
class FormatError : public Error {
 public:
  using Error::Error;
};

namespace io {
namespace detail {

/// Throws FormatError (or calls the -fno-exceptions handler with ErrorKind::other).
[[noreturn]] inline void raise_format(const std::string& message) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  throw FormatError(message);
#else
  ttx::detail::raise(ErrorKind::other, message);
#endif
}

inline std::string shape_string(const std::vector<Index>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(static_cast<long long>(shape[i]));
  return s + "]";
}

}  // namespace detail

/// Every dtype the safetensors format defines. Only f32, f16 and bf16 convert to matrices; the
/// others are still validated (their sizes are known) so a file holding e.g. an I64 buffer opens.
enum class DType {
  f32,
  f16,
  bf16,
  f64,
  i64,
  i32,
  i16,
  i8,
  u64,
  u32,
  u16,
  u8,
  boolean,
  f8_e4m3,
  f8_e5m2
};

/// The format's spelling ("F32", "BF16", ...).
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::f64:
      return "F64";
    case DType::i64:
      return "I64";
    case DType::i32:
      return "I32";
    case DType::i16:
      return "I16";
    case DType::i8:
      return "I8";
    case DType::u64:
      return "U64";
    case DType::u32:
      return "U32";
    case DType::u16:
      return "U16";
    case DType::u8:
      return "U8";
    case DType::boolean:
      return "BOOL";
    case DType::f8_e4m3:
      return "F8_E4M3";
    case DType::f8_e5m2:
      return "F8_E5M2";
  }
  return "?";
}

/// Bytes per element.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64:
    case DType::u64:
      return 8;
    case DType::f32:
    case DType::i32:
    case DType::u32:
      return 4;
    case DType::f16:
    case DType::bf16:
    case DType::i16:
    case DType::u16:
      return 2;
    default:
      return 1;
  }
}

/// Parses a dtype name; false when the format does not define it.
inline bool parse_dtype(const std::string& s, DType* out) {
  for (int i = 0; i <= static_cast<int>(DType::f8_e5m2); ++i)
    if (s == dtype_name(static_cast<DType>(i))) {
      *out = static_cast<DType>(i);
      return true;
    }
  return false;
}

/// True for the dtypes ttx converts to float (F32, F16, BF16).
inline bool is_float_dtype(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

/// One tensor inside a mapped file. `data` points into the mapping (valid while the
/// SafetensorsFile lives) and may be unaligned: read it through the conversions below.
struct TensorView {
  std::string name;
  std::string file;  ///< path of the file it lives in (for messages)
  DType dtype = DType::f32;
  std::vector<Index> shape;
  const unsigned char* data = nullptr;
  size_t bytes = 0;

  Index numel() const {
    Index n = 1;
    for (Index s : shape) n *= s;
    return n;
  }
  std::string shape_string() const { return detail::shape_string(shape); }
};

/// Reads element i of a float-typed tensor as float (exact: F16 and BF16 values are floats).
inline float element_as_float(const TensorView& t, Index i) {
  const unsigned char* p = t.data + static_cast<size_t>(i) * dtype_size(t.dtype);
  switch (t.dtype) {
    case DType::f32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::f16: {
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      return static_cast<float>(Eigen::numext::bit_cast<f16>(b));
    }
    case DType::bf16: {
      // bf16 is the top half of a float32.
      std::uint16_t b;
      std::memcpy(&b, p, 2);
      const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    default:
      break;
  }
  return 0.0f;
}

/// Copies a 1-D or 2-D F32/F16/BF16 tensor into a float matrix of the same shape, row-major
/// (a 1-D tensor of n becomes 1 x n). Conversion is exact. Throws UnsupportedError for other
/// dtypes and ShapeError for other ranks, naming the file and tensor.
inline RowMatrix<float> to_float_matrix(const TensorView& t) {
  ttx::detail::require(is_float_dtype(t.dtype), ErrorKind::unsupported, "io::to_float_matrix",
                       t.file, ": tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
                       "; supported: F32, F16, BF16");
  ttx::detail::require(t.shape.size() == 1 || t.shape.size() == 2, ErrorKind::shape,
                       "io::to_float_matrix", t.file, ": tensor '", t.name,
                       "' expected rank 1 or 2, got shape ", t.shape_string());
  const Index rows = t.shape.size() == 2 ? t.shape[0] : 1;
  const Index cols = t.shape.back();
  RowMatrix<float> m(rows, cols);
  if (t.dtype == DType::f32) {
    if (t.bytes) std::memcpy(m.data(), t.data, t.bytes);
  } else {
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = element_as_float(t, i);
  }
  return m;
}

/// A read-only POSIX memory mapping of a whole file (RAII, movable).
class MappedFile {
 public:
  MappedFile() = default;
  /// Maps `path`; throws FormatError naming the path and the OS error when it cannot.
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      detail::raise_format(
          ttx::detail::concat("ttx::io: cannot open ", path, ": ", std::strerror(errno)));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      detail::raise_format(
          ttx::detail::concat("ttx::io: cannot stat ", path, ": ", std::strerror(e)));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        detail::raise_format(
            ttx::detail::concat("ttx::io: cannot mmap ", path, ": ", std::strerror(e)));
      }
      data_ = static_cast<const unsigned char*>(p);
    }
    ::close(fd);  // the mapping keeps the file alive
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept { swap(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    MappedFile tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void swap(MappedFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
};

/// One .safetensors file, mapped and validated. Tensor views stay valid while it lives (moving
/// the object keeps them valid: the mapping does not move).
///
///   ttx::io::SafetensorsFile f("model.safetensors");
///   const auto& t = f.tensor("model.norm.weight");           // dtype, shape, data
///   ttx::RowMatrix<float> g = ttx::io::to_float_matrix(t);   // 1 x d
class SafetensorsFile {
 public:
  /// Safetensors' own reader refuses headers above 100 MB; so do we (a corrupt length field
  /// would otherwise be taken at face value).
  static constexpr std::uint64_t max_header_bytes = 100u * 1000u * 1000u;

  /// Maps and validates `path`. Throws FormatError naming the file (and tensor) on a truncated
  /// file, a header length out of bounds, invalid JSON, or an entry whose dtype, shape or
  /// data_offsets are malformed or inconsistent.
  explicit SafetensorsFile(const std::string& path) : map_(path) { parse(); }

  const std::string& path() const { return map_.path(); }
  size_t file_bytes() const { return map_.size(); }
  /// Bytes of the JSON header (N).
  size_t header_bytes() const { return header_bytes_; }
  /// The "__metadata__" entries (string to string), empty when absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    n.reserve(tensors_.size());
    for (const auto& kv : tensors_) n.push_back(kv.first);
    return n;
  }
  size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

  /// The named tensor; throws FormatError naming the file and tensor when it is absent.
  const TensorView& tensor(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end())
      detail::raise_format(
          ttx::detail::concat("ttx::io: ", path(), ": missing tensor '", name, "'"));
    return it->second;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    detail::raise_format(ttx::detail::concat("ttx::io: ", path(), ": ", what));
  }

  static bool as_u64(const nlohmann::json& j, std::uint64_t* out) {
    if (!j.is_number_unsigned()) return false;
    *out = j.get<std::uint64_t>();
    return true;
  }

  void parse() {
    const size_t size = map_.size();
    if (size < 8)
      fail(ttx::detail::concat("file is ", size,
                               " bytes, expected at least 8 (the header length field); "
                               "truncated?"));
    std::uint64_t n = 0;
    std::memcpy(&n, map_.data(), 8);  // little endian (checked at compile time)
    if (n > max_header_bytes || n > size - 8)
      fail(ttx::detail::concat("header length field says ", n, " bytes, expected at most ",
                               std::min<std::uint64_t>(max_header_bytes, size - 8), " (file is ",
                               size, " bytes); truncated or not safetensors?"));
    header_bytes_ = static_cast<size_t>(n);
    const char* hb = reinterpret_cast<const char*>(map_.data() + 8);
    const nlohmann::json header =
        nlohmann::json::parse(hb, hb + n, /*cb=*/nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded() || !header.is_object())
      fail(ttx::detail::concat("header (", n,
                               " bytes after the length field) is not a JSON "
                               "object"));

    const unsigned char* base = map_.data() + 8 + n;
    const std::uint64_t data_bytes = size - 8 - n;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;  // (begin, end) for packing check
    std::vector<const std::string*> span_names;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& e = it.value();
      if (name == "__metadata__") {
        if (!e.is_object()) fail("\"__metadata__\" expected a JSON object");
        for (auto m = e.begin(); m != e.end(); ++m) {
          if (!m.value().is_string())
            fail(ttx::detail::concat("\"__metadata__\" entry '", m.key(),
                                     "' expected a string value, got ", m.value().dump()));
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (!e.is_object()) fail(where + " expected a JSON object, got " + e.dump());
      auto dt = e.find("dtype");
      auto sh = e.find("shape");
      auto of = e.find("data_offsets");
      if (dt == e.end() || !dt->is_string())
        fail(where + ": \"dtype\" expected a string, got " +
             (dt == e.end() ? std::string("nothing") : dt->dump()));
      TensorView t;
      t.name = name;
      t.file = path();
      if (!parse_dtype(dt->get<std::string>(), &t.dtype))
        fail(where + ": unknown dtype \"" + dt->get<std::string>() + "\"");
      if (sh == e.end() || !sh->is_array())
        fail(where + ": \"shape\" expected an array, got " +
             (sh == e.end() ? std::string("nothing") : sh->dump()));
      std::uint64_t numel = 1;
      bool overflow = false;
      for (const auto& s : *sh) {
        std::uint64_t v = 0;
        if (!as_u64(s, &v))
          fail(where + ": \"shape\" expected non-negative integers, got " + sh->dump());
        if (v != 0 && numel > (std::uint64_t(1) << 62) / v) overflow = true;
        numel *= v;
        t.shape.push_back(static_cast<Index>(v));
      }
      if (overflow) fail(where + ": shape " + sh->dump() + " overflows");
      std::uint64_t begin = 0, end = 0;
      if (of == e.end() || !of->is_array() || of->size() != 2 || !as_u64((*of)[0], &begin) ||
          !as_u64((*of)[1], &end))
        fail(where + ": \"data_offsets\" expected [begin, end], got " +
             (of == e.end() ? std::string("nothing") : of->dump()));
      if (begin > end)
        fail(ttx::detail::concat(where, ": data_offsets [", begin, ", ", end,
                                 "] expected begin <= end"));
      const std::uint64_t expected = numel * dtype_size(t.dtype);
      if (end - begin != expected)
        fail(ttx::detail::concat(where, ": data_offsets [", begin, ", ", end, "] span ",
                                 end - begin, " bytes, expected ", expected, " (", dt->dump(),
                                 " x shape ", t.shape_string(), ")"));
      if (end > data_bytes)
        fail(ttx::detail::concat(where, ": data_offsets [", begin, ", ", end,
                                 "] end beyond the data section of ", data_bytes,
                                 " bytes (file is ", size, " bytes); truncated?"));
      t.data = base + begin;
      t.bytes = static_cast<size_t>(expected);
      auto ins = tensors_.emplace(name, std::move(t));
      spans.emplace_back(begin, end);
      span_names.push_back(&ins.first->first);
    }

    // Tensors must tile the data section exactly (what the Rust reader enforces): an overlap or
    // a gap means a corrupt header; bytes beyond the last tensor mean a damaged file.
    std::vector<size_t> order(spans.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
    std::uint64_t at = 0;
    for (size_t i : order) {
      if (spans[i].first != at)
        fail(ttx::detail::concat("tensor '", *span_names[i], "' starts at data offset ",
                                 spans[i].first, ", expected ", at,
                                 spans[i].first < at ? " (overlaps the previous tensor)"
                                                     : " (gap after the previous tensor)"));
      at = spans[i].second;
    }
    if (at != data_bytes)
      fail(ttx::detail::concat("data section is ", data_bytes, " bytes, expected ", at,
                               " (the end of the last tensor)"));
  }

  MappedFile map_;
  size_t header_bytes_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace io
}  // namespace ttx
