// GgufFile::from_bytes on buffers crafted field by field from the GGUF spec (ggml docs/gguf.md):
// a valid file reads back exactly; every truncation and a table of lying fields throw GgufError;
// every single-byte corruption of the header either parses or throws GgufError (nothing else,
// and under the sanitizers no bad memory access).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "check.h"
#include "core/error.h"
#include "core/fp16.h"
#include "gguf/gguf_file.h"

using namespace sinkstream;

namespace {

enum : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32V, BOOL, STRING, ARRAY, U64, I64, F64 };
constexpr uint32_t kTypeF32 = 0, kTypeF16 = 1, kTypeQ8_0 = 8;

// Little-endian GGUF image, built field by field.
struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    b.insert(b.end(), raw, raw + sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& raw(const std::vector<uint8_t>& more) {
    b.insert(b.end(), more.begin(), more.end());
    return *this;
  }
  void pad_to(size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
  }
};

struct Tensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  std::vector<uint8_t> data;
  uint64_t offset;  // relative to the data section
};

// A file with the given metadata pairs (already encoded: key, type, value) and tensors laid out at
// the given offsets after a 32-byte aligned data section.
std::vector<uint8_t> build(const std::vector<std::vector<uint8_t>>& kv, const std::vector<Tensor>& tensors,
                           uint32_t version = 3, size_t alignment = 32) {
  Bytes f;
  f.put<uint32_t>(0x46554747).put<uint32_t>(version).put<uint64_t>(tensors.size()).put<uint64_t>(kv.size());
  for (const auto& pair : kv) f.raw(pair);
  for (const auto& t : tensors) {
    f.str(t.name).put<uint32_t>((uint32_t)t.dims.size());
    for (uint64_t d : t.dims) f.put<uint64_t>(d);
    f.put<uint32_t>(t.type).put<uint64_t>(t.offset);
  }
  if (tensors.empty()) return f.b;
  f.pad_to(alignment);
  const size_t data_start = f.b.size();
  for (const auto& t : tensors) {
    if (f.b.size() < data_start + t.offset) f.b.resize(data_start + t.offset, 0);
    f.raw(t.data);
  }
  return f.b;
}

std::vector<uint8_t> kv_pair(const std::string& key, uint32_t type, const std::vector<uint8_t>& value) {
  Bytes p;
  p.str(key).put<uint32_t>(type).raw(value);
  return p.b;
}
template <typename T>
std::vector<uint8_t> scalar(T v) {
  return Bytes().put<T>(v).b;
}
std::vector<uint8_t> string_value(const std::string& s) { return Bytes().str(s).b; }
std::vector<uint8_t> i32_array(const std::vector<int32_t>& values) {
  Bytes a;
  a.put<uint32_t>(I32).put<uint64_t>(values.size());
  for (int32_t v : values) a.put<int32_t>(v);
  return a.b;
}
std::vector<uint8_t> floats(const std::vector<float>& values) {
  Bytes d;
  for (float v : values) d.put<float>(v);
  return d.b;
}

std::shared_ptr<GgufFile> parse(const std::vector<uint8_t>& bytes) {
  return GgufFile::from_bytes("crafted.gguf", bytes.data(), bytes.size());
}

// Parses, then reads every accessor of every key and every tensor; only GgufError may come out.
bool parses_or_gguf_error(const std::vector<uint8_t>& bytes, std::string* other_error) {
  try {
    auto f = parse(bytes);
    for (const auto& [key, value] : f->metadata()) {
      try { f->get_string(key); } catch (const GgufError&) {}
      try { f->get_int(key); } catch (const GgufError&) {}
      try { f->get_float(key); } catch (const GgufError&) {}
      try { f->get_bool(key); } catch (const GgufError&) {}
      try { f->get_string_array(key); } catch (const GgufError&) {}
      try { f->get_float_array(key); } catch (const GgufError&) {}
      try { f->get_int_array(key); } catch (const GgufError&) {}
    }
    for (const auto& t : f->tensors()) {
      try { f->tensor_to_f32(t); } catch (const GgufError&) {}
    }
    return true;
  } catch (const GgufError&) {
    return true;
  } catch (const std::exception& e) {
    *other_error = e.what();
    return false;
  }
}

}  // namespace

int main() {
  // ---- a valid file reads back exactly --------------------------------------------------------
  const std::vector<float> w_values = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-30f, 65504.0f, -7.0f};
  const std::vector<uint16_t> h_bits = {0x3c00, 0xc000, 0x0001};  // 1, -2, smallest subnormal
  Bytes h_data;
  for (uint16_t h : h_bits) h_data.put<uint16_t>(h);
  // One Q8_0 block: fp16 scale 0.5, then 32 int8 quants -16..15.
  Bytes q_data;
  q_data.put<uint16_t>(0x3800);
  for (int i = 0; i < 32; ++i) q_data.put<int8_t>((int8_t)(i - 16));

  const std::vector<std::vector<uint8_t>> kv = {
      kv_pair("general.architecture", STRING, string_value("llama")),
      kv_pair("x.u32", U32, scalar<uint32_t>(7)),
      kv_pair("x.i8", I8, scalar<int8_t>(-5)),
      kv_pair("x.u64", U64, scalar<uint64_t>(1ull << 40)),
      kv_pair("x.f32", F32V, scalar<float>(1.5f)),
      kv_pair("x.f64", F64, scalar<double>(-0.125)),
      kv_pair("x.bool", BOOL, scalar<uint8_t>(1)),
      kv_pair("x.arr", ARRAY, i32_array({1, -2, 3})),
  };
  const std::vector<Tensor> tensors = {
      {"w", {4, 2}, kTypeF32, floats(w_values), 0},
      {"h", {3}, kTypeF16, h_data.b, 32},
      {"q", {32}, kTypeQ8_0, q_data.b, 64},
  };
  const std::vector<uint8_t> valid = build(kv, tensors);
  {
    auto f = parse(valid);
    CHECK_EQ(f->version(), 3u);
    CHECK_EQ(f->alignment(), 32u);
    CHECK_EQ(f->data_offset() % 32, 0u);
    CHECK_EQ(f->metadata().size(), kv.size());
    CHECK(f->get_string("general.architecture") == std::optional<std::string>("llama"));
    CHECK(f->get_int("x.u32") == std::optional<int64_t>(7));
    CHECK(f->get_int("x.i8") == std::optional<int64_t>(-5));
    CHECK(f->get_int("x.u64") == std::optional<int64_t>(int64_t(1) << 40));
    CHECK(f->get_float("x.f32") == std::optional<double>(1.5));
    CHECK(f->get_float("x.f64") == std::optional<double>(-0.125));
    CHECK(f->get_float("x.u32") == std::optional<double>(7.0));  // integers widen to float
    CHECK(f->get_bool("x.bool") == std::optional<bool>(true));
    CHECK(f->get_int_array("x.arr") == std::optional<std::vector<int64_t>>({1, -2, 3}));
    CHECK(f->get_float_array("x.arr") == std::optional<std::vector<double>>({1.0, -2.0, 3.0}));
    CHECK(!f->get_int("absent").has_value());
    CHECK_THROWS(GgufError, f->get_int("general.architecture"));
    CHECK_THROWS(GgufError, f->get_string("x.u32"));
    CHECK_THROWS(GgufError, f->get_bool("x.u32"));
    CHECK_THROWS(GgufError, f->get_int("x.f32"));
    CHECK_THROWS(GgufError, f->get_string_array("x.arr"));
    CHECK_EQ(f->tensors().size(), 3u);
    const GgufTensorInfo* w = f->find_tensor("w");
    CHECK(w != nullptr);
    if (w) {
      CHECK(w->dims == std::vector<int64_t>({4, 2}));
      CHECK_EQ(w->n_elements, 8u);
      CHECK_EQ(w->n_bytes, 32u);
      CHECK_EQ(w->row_length(), 4);
      CHECK_EQ(w->n_rows(), 2);
      const std::vector<float> got = f->tensor_to_f32(*w);
      CHECK(got.size() == w_values.size() && std::memcmp(got.data(), w_values.data(), 32) == 0);
    }
    if (const GgufTensorInfo* h = f->find_tensor("h")) {
      const std::vector<float> got = f->tensor_to_f32(*h);
      CHECK(got.size() == 3 && got[0] == 1.0f && got[1] == -2.0f && got[2] == std::ldexp(1.0f, -24));
    } else {
      CHECK(false, "tensor h missing");
    }
    if (const GgufTensorInfo* q = f->find_tensor("q")) {
      CHECK_EQ(q->n_bytes, 34u);
      const std::vector<float> got = f->tensor_to_f32(*q);
      bool all = got.size() == 32;
      for (int i = 0; all && i < 32; ++i) all = got[(size_t)i] == 0.5f * (float)(i - 16);  // d * q (spec)
      CHECK(all, "Q8_0 block");
    } else {
      CHECK(false, "tensor q missing");
    }
    CHECK(f->find_tensor("nope") == nullptr);
  }
  {
    // Header only, no metadata, no tensors: valid (an empty model file).
    auto f = parse(build({}, {}));
    CHECK(f->metadata().empty() && f->tensors().empty());
  }

  // ---- every truncation of the valid file is a GgufError ---------------------------------------
  for (size_t n = 0; n < valid.size(); ++n) {
    const std::vector<uint8_t> cut(valid.begin(), valid.begin() + (long)n);
    CHECK_THROWS(GgufError, parse(cut), "prefix of", n, "bytes");
  }
  CHECK_THROWS(GgufError, GgufFile::from_bytes("empty.gguf", nullptr, 0));

  // ---- lying fields ---------------------------------------------------------------------------
  auto with = [&](auto edit) {
    std::vector<uint8_t> b = valid;
    edit(b);
    return b;
  };
  auto set_u32 = [](std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); };
  auto set_u64 = [](std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); };
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { b[0] = 'X'; })), "bad magic");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u32(b, 4, 1); })), "version 1");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u32(b, 4, 4); })), "version 4");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u32(b, 4, 0x03000000); })), "big-endian");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u64(b, 8, UINT64_MAX); })), "tensor count");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u64(b, 16, UINT64_MAX); })), "kv count");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u64(b, 16, kv.size() + 1); })), "kv count + 1");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u64(b, 24, UINT64_MAX); })), "key length");
  CHECK_THROWS(GgufError, parse(with([&](auto& b) { set_u64(b, 24, 0); })), "empty key");

  CHECK_THROWS(GgufError, parse(build({kv_pair("a", 13, {})}, {})), "value type 13");
  CHECK_THROWS(GgufError, parse(build({kv_pair("a", BOOL, scalar<uint8_t>(2))}, {})), "bool 2");
  CHECK_THROWS(GgufError, parse(build({kv_pair("a", U8, {1}), kv_pair("a", U8, {2})}, {})), "duplicate key");
  CHECK_THROWS(GgufError, parse(build({kv_pair(std::string("a\0b", 3), U8, {1})}, {})), "NUL in key");
  CHECK_THROWS(GgufError, parse(build({kv_pair("\xff", U8, {1})}, {})), "invalid UTF-8 key");
  {
    Bytes huge_array;
    huge_array.put<uint32_t>(U8).put<uint64_t>(UINT64_MAX / 2);
    CHECK_THROWS(GgufError, parse(build({kv_pair("a", ARRAY, huge_array.b)}, {})), "array length");
    Bytes deep;  // 9 nested arrays of one element each, then a uint8
    for (int i = 0; i < 9; ++i) deep.put<uint32_t>(i < 8 ? ARRAY : U8).put<uint64_t>(1);
    deep.put<uint8_t>(1);
    CHECK_THROWS(GgufError, parse(build({kv_pair("a", ARRAY, deep.b)}, {})), "nesting depth");
  }
  auto one_tensor = [&](Tensor t, std::vector<std::vector<uint8_t>> pairs = {}) { return build(pairs, {t}); };
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {4, 0}, kTypeF32, floats({1, 2, 3, 4}), 0})), "zero dim");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {1, 1, 1, 1, 4}, kTypeF32, floats({1, 2, 3, 4}), 0})), "5 dims");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {}, kTypeF32, floats({1}), 0})), "0 dims");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {4}, 99, floats({1, 2, 3, 4}), 0})), "unknown type");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {4}, kTypeF32, floats({1, 2, 3, 4}), 8})), "unaligned offset");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {5}, kTypeF32, floats({1, 2, 3, 4}), 0})), "data past the end");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {16}, kTypeQ8_0, floats({1, 2, 3, 4}), 0})), "partial block");
  CHECK_THROWS(GgufError, parse(one_tensor({"t", {1ull << 62, 1ull << 62}, kTypeF32, {}, 0})), "element overflow");
  CHECK_THROWS(GgufError,
               parse(build({}, {{"a", {8}, kTypeF32, floats({1, 2, 3, 4, 5, 6, 7, 8}), 0},
                                {"b", {4}, kTypeF32, {}, 0}})),
               "overlapping tensors");
  CHECK_THROWS(GgufError,
               parse(build({}, {{"a", {4}, kTypeF32, floats({1, 2, 3, 4}), 0}, {"a", {4}, kTypeF32, floats({1, 2, 3, 4}), 32}})),
               "duplicate tensor");
  CHECK_THROWS(GgufError,
               parse(one_tensor({"t", {4}, kTypeF32, floats({1, 2, 3, 4}), 0}, {kv_pair("general.alignment", U32, scalar<uint32_t>(24))})),
               "alignment not a power of two");
  CHECK_THROWS(GgufError,
               parse(one_tensor({"t", {4}, kTypeF32, floats({1, 2, 3, 4}), 0}, {kv_pair("general.alignment", STRING, string_value("32"))})),
               "alignment of the wrong type");

  // ---- every single-byte corruption of the header and metadata --------------------------------
  // (up to the data section; the data bytes are free-form.)
  const size_t header_end = (size_t)parse(valid)->data_offset();
  int other_errors = 0;
  for (size_t at = 0; at < header_end; ++at) {
    for (uint8_t value : {0x00, 0x01, 0x07, 0x20, 0x7f, 0x80, 0xfe, 0xff}) {
      std::vector<uint8_t> b = valid;
      if (b[at] == value) continue;
      b[at] = value;
      std::string other;
      if (!parses_or_gguf_error(b, &other)) {
        ++other_errors;
        CHECK(false, "byte", at, "set to", (int)value, "threw a non-GgufError:", other);
      }
    }
  }
  CHECK_EQ(other_errors, 0);

  return sinkstream_test::check_summary("test_gguf_from_bytes");
}
