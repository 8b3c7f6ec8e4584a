#include "gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "quant/dequantize.h"

namespace sinkstream {

namespace {

// The reader copies little-endian fields straight out of the map.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sinkstream reads GGUF on little-endian hosts only");

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxDims = 4;                  // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;            // nested arrays deeper than this are rejected
constexpr uint64_t kMaxStringBytes = 1ull << 30;
// Parsed metadata and tensor infos take more memory than their encoding (a 1-byte uint8 array
// element becomes a GgufValue of ~100 bytes), which a hostile file could use to ask for many GiB.
// The decoded size is capped; real files stay far below it (a 256k-token vocabulary with its merges
// needs ~150 MiB, a few thousand tensor infos under 1 MiB).
constexpr uint64_t kMaxParsedMemory = 1ull << 30;
// Counts come from the file: reserve at most this many entries up front, grow as records parse.
constexpr uint64_t kMaxReserve = 4096;

uint32_t byte_swap32(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

// Keys and tensor names become Python str and dictionary keys: they must be valid UTF-8 without
// NUL bytes (the spec asks for ASCII keys; UTF-8 is the lenient superset).
bool is_valid_utf8_name(const std::string& s) {
  static const uint32_t kMinCodePoint[] = {0, 0x80, 0x800, 0x10000};  // shorter forms are overlong
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = (unsigned char)s[i];
    if (c == 0) return false;
    if (c < 0x80) { ++i; continue; }
    size_t extra;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; }
    else return false;
    if (i + extra >= s.size()) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const unsigned char cc = (unsigned char)s[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < kMinCodePoint[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

// A bounds-checked cursor over the file image. Every read checks the remaining bytes first, so a
// lying count or length ends in a GgufError, never a read past the map or a giant allocation.
class Reader {
 public:
  Reader(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw GgufError(cat(path_, ": ", what, " (at byte offset ", pos_, ")"));
  }
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      fail(cat("file truncated while reading ", what, ": need ", n, " bytes, ", remaining(), " left"));
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > kMaxStringBytes) fail(cat(what, " has an implausible length ", len));
    need(len, what);
    charge(len, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), (size_t)len);
    pos_ += len;
    return s;
  }
  // Accounts for memory the parsed header will hold; refuses past kMaxParsedMemory.
  void charge(uint64_t bytes, const char* what) {
    if (bytes > kMaxParsedMemory - charged_)
      fail(cat("the header would need more than ", kMaxParsedMemory >> 20, " MiB of memory once parsed (at ",
               what, ")"));
    charged_ += bytes;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t charged_ = 0;
};

bool valid_value_type(uint32_t t) { return t <= (uint32_t)GgufValueType::FLOAT64; }

// Smallest encoded size of one element: lets a lying array length be refused before allocating.
uint64_t min_encoded_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    case GgufValueType::STRING: return 8;   // the length prefix
    case GgufValueType::ARRAY: return 12;   // element type + count
  }
  return 1;
}

GgufValue read_value(Reader& r, GgufValueType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::UINT8: v.u = r.read<uint8_t>("a uint8 value"); break;
    case GgufValueType::INT8: v.i = r.read<int8_t>("an int8 value"); break;
    case GgufValueType::UINT16: v.u = r.read<uint16_t>("a uint16 value"); break;
    case GgufValueType::INT16: v.i = r.read<int16_t>("an int16 value"); break;
    case GgufValueType::UINT32: v.u = r.read<uint32_t>("a uint32 value"); break;
    case GgufValueType::INT32: v.i = r.read<int32_t>("an int32 value"); break;
    case GgufValueType::UINT64: v.u = r.read<uint64_t>("a uint64 value"); break;
    case GgufValueType::INT64: v.i = r.read<int64_t>("an int64 value"); break;
    case GgufValueType::FLOAT32: v.f = r.read<float>("a float32 value"); break;
    case GgufValueType::FLOAT64: v.f = r.read<double>("a float64 value"); break;
    case GgufValueType::BOOL: {
      const uint8_t b = r.read<uint8_t>("a bool value");
      if (b > 1) r.fail(cat("metadata key '", key, "': bool value is ", (int)b, ", not 0 or 1"));
      v.u = b;
      break;
    }
    case GgufValueType::STRING: v.s = r.read_string("a string value"); break;
    case GgufValueType::ARRAY: {
      if (depth >= kMaxArrayDepth)
        r.fail(cat("metadata key '", key, "': arrays nested deeper than ", kMaxArrayDepth));
      const uint32_t elem = r.read<uint32_t>("an array element type");
      if (!valid_value_type(elem))
        r.fail(cat("metadata key '", key, "': unknown array element type ", elem));
      v.element_type = (GgufValueType)elem;
      const uint64_t n = r.read<uint64_t>("an array length");
      if (n > r.remaining() / min_encoded_bytes(v.element_type))
        r.fail(cat("metadata key '", key, "': array length ", n, " does not fit in the ",
                   r.remaining(), " bytes left in the file"));
      r.charge(n * sizeof(GgufValue), "an array");
      v.array.reserve((size_t)n);
      for (uint64_t k = 0; k < n; ++k) v.array.push_back(read_value(r, v.element_type, key, depth + 1));
      break;
    }
  }
  return v;
}

}  // namespace

const char* gguf_value_type_name(GgufValueType type) {
  static const char* const names[] = {"uint8", "int8",   "uint16", "int16",  "uint32",
                                      "int32", "float32", "bool",  "string", "array",
                                      "uint64", "int64", "float64"};
  const uint32_t t = (uint32_t)type;
  return t < sizeof(names) / sizeof(names[0]) ? names[t] : "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16:
    case GgufValueType::INT16: case GgufValueType::UINT32: case GgufValueType::INT32:
    case GgufValueType::UINT64: case GgufValueType::INT64: return true;
    default: return false;
  }
}

namespace {
bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::UINT8 || t == GgufValueType::UINT16 || t == GgufValueType::UINT32 ||
         t == GgufValueType::UINT64 || t == GgufValueType::BOOL;
}
}  // namespace

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a regular file).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw GgufError(cat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw GgufError(cat(path, ": cannot stat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw GgufError(cat(path, S_ISDIR(st.st_mode) ? ": is a directory, not a GGUF file" : ": not a regular file"));
  }
  file->size_ = (uint64_t)st.st_size;
  if (file->size_ > 0) {
    void* map = mmap(nullptr, (size_t)file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw GgufError(cat(path, ": cannot map ", file->size_, " bytes: ", std::strerror(err)));
    }
    file->mapping_ = map;
    file->base_ = static_cast<const uint8_t*>(map);
  }
  ::close(fd);  // the mapping keeps the file alive
  file->parse();
  return file;
}

std::shared_ptr<GgufFile> GgufFile::from_bytes(const std::string& name, const void* data, size_t size) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->path_ = name;
  file->owned_.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + size);
  file->base_ = file->owned_.data();
  file->size_ = size;
  file->parse();
  return file;
}

void GgufFile::release_pages(const uint8_t* begin, uint64_t bytes) const {
  if (mapping_ == nullptr || begin < base_ || bytes > size_ || begin - base_ > (ptrdiff_t)(size_ - bytes)) return;
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t first = (reinterpret_cast<uintptr_t>(begin) + page - 1) / page * page;
  const uintptr_t last = (reinterpret_cast<uintptr_t>(begin) + bytes) / page * page;
  // A private read-only file mapping: the dropped pages are read from the file again if touched.
  if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

GgufFile::~GgufFile() {
  if (mapping_ != nullptr) munmap(mapping_, (size_t)size_);
}

void GgufFile::parse() {
  Reader r(path_, base_, size_);
  if (size_ == 0) throw GgufError(cat(path_, ": the file is empty (0 bytes), not a GGUF file"));
  if (size_ < 4 && std::memcmp(base_, "GGUF", (size_t)size_) != 0)
    throw GgufError(cat(path_, ": not a GGUF file (the first bytes are not 'GGUF')"));
  if (r.read<uint32_t>("the magic") != kGgufMagic)
    throw GgufError(cat(path_, ": not a GGUF file (the first 4 bytes are not 'GGUF')"));
  version_ = r.read<uint32_t>("the version");
  // GGUF v3 allows big-endian files: the magic bytes stay "GGUF" and every number, the version
  // included, is stored big-endian (spec, "Version 3"), so a byte-swapped small version means one.
  if ((version_ & 0x00ffffffu) == 0 && version_ != 0)
    r.fail(cat("big-endian GGUF is not supported (version field reads ", byte_swap32(version_),
               " byte-swapped); convert the file to little-endian"));
  if (version_ == 1) r.fail("GGUF version 1 is not supported (only versions 2 and 3)");
  if (version_ != 2 && version_ != 3) r.fail(cat("unsupported GGUF version ", version_, " (only 2 and 3)"));
  const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  const uint64_t n_kv = r.read<uint64_t>("the metadata count");
  // Each metadata pair takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
  // least 8 + 4 + 4 + 8. Refuse counts the file cannot hold before reserving anything.
  if (n_kv > r.remaining() / 13) r.fail(cat("metadata count ", n_kv, " does not fit in the file"));
  if (n_tensors > r.remaining() / 24) r.fail(cat("tensor count ", n_tensors, " does not fit in the file"));

  metadata_.reserve((size_t)std::min(n_kv, kMaxReserve));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = r.read_string("a metadata key");
    if (key.empty()) r.fail(cat("metadata pair ", k, " has an empty key"));
    if (!is_valid_utf8_name(key)) r.fail(cat("metadata pair ", k, " has a key that is not valid UTF-8 text"));
    r.charge(sizeof(std::pair<std::string, GgufValue>) + 64, "a metadata pair");  // + index entry
    const uint32_t type = r.read<uint32_t>("a metadata value type");
    if (!valid_value_type(type)) r.fail(cat("metadata key '", key, "' has unknown value type ", type));
    GgufValue value = read_value(r, (GgufValueType)type, key, 0);
    if (metadata_index_.count(key)) r.fail(cat("duplicate metadata key '", key, "'"));
    metadata_index_[key] = metadata_.size();
    metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = find("general.alignment"); a != nullptr && !a->is_integer())
    r.fail(cat("general.alignment is a ", gguf_value_type_name(a->type), ", expected an integer (uint32)"));
  if (std::optional<int64_t> align = get_int("general.alignment")) {
    if (*align <= 0 || (*align & (*align - 1)) != 0 || *align > (1 << 20))
      r.fail(cat("general.alignment is ", *align, ", not a power of two up to 1 MiB"));
    alignment_ = (uint64_t)*align;
  }

  tensors_.reserve((size_t)std::min(n_tensors, kMaxReserve));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    r.charge(sizeof(GgufTensorInfo) + 64, "a tensor info");  // + index entry
    GgufTensorInfo t;
    t.name = r.read_string("a tensor name");
    if (t.name.empty()) r.fail(cat("tensor ", k, " has an empty name"));
    if (!is_valid_utf8_name(t.name)) r.fail(cat("tensor ", k, " has a name that is not valid UTF-8 text"));
    const uint32_t n_dims = r.read<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      r.fail(cat("tensor '", t.name, "' has ", n_dims, " dimensions (1 to ", kMaxDims, " allowed)"));
    uint64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = r.read<uint64_t>("a tensor dimension");
      if (dim == 0 || dim > (uint64_t)std::numeric_limits<int64_t>::max())
        r.fail(cat("tensor '", t.name, "' dimension ", d, " is ", dim));
      if (n_elements > (uint64_t)std::numeric_limits<int64_t>::max() / dim)
        r.fail(cat("tensor '", t.name, "' element count overflows 64 bits"));
      n_elements *= dim;
      t.dims.push_back((int64_t)dim);
    }
    const uint32_t type_id = r.read<uint32_t>("a tensor type");
    const GgmlTypeInfo* info = ggml_type_info(type_id);
    if (info == nullptr) r.fail(cat("tensor '", t.name, "' has unknown type id ", type_id));
    t.type = info->type;
    if (t.dims[0] % info->block_size != 0)
      r.fail(cat("tensor '", t.name, "' row length ", t.dims[0], " is not a multiple of the ",
                 info->name, " block size ", info->block_size));
    t.offset = r.read<uint64_t>("a tensor offset");
    if (t.offset % alignment_ != 0)
      r.fail(cat("tensor '", t.name, "' offset ", t.offset, " is not a multiple of the alignment ", alignment_));
    t.n_elements = n_elements;
    const uint64_t n_blocks = n_elements / (uint64_t)info->block_size;
    if (n_blocks > size_ / (uint64_t)info->block_bytes)
      r.fail(cat("tensor '", t.name, "' needs ", n_blocks, " blocks of ", info->block_bytes, " bytes (", info->name,
                 "), more than the file's ", size_, " bytes"));
    t.n_bytes = n_blocks * (uint64_t)info->block_bytes;
    if (tensor_index_.count(t.name)) r.fail(cat("duplicate tensor name '", t.name, "'"));
    tensor_index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t end_of_infos = r.pos();
  data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty() && data_offset_ > size_)
    throw GgufError(cat(path_, ": file truncated: the data section would start at byte ", data_offset_,
                        " but the file has ", size_, " bytes"));
  const uint64_t data_size = tensors_.empty() ? 0 : size_ - data_offset_;
  for (auto& t : tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset)
      throw GgufError(cat(path_, ": tensor '", t.name, "' data (offset ", t.offset, ", ", t.n_bytes,
                          " bytes) lies outside the data section of ", data_size, " bytes (file truncated?)"));
    t.data = base_ + data_offset_ + t.offset;
  }
  // Overlapping tensors would let one write alias another's bytes in a careless consumer; reject them.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k - 1]->offset + by_offset[k - 1]->n_bytes > by_offset[k]->offset)
      throw GgufError(cat(path_, ": tensors '", by_offset[k - 1]->name, "' and '", by_offset[k]->name,
                          "' overlap in the data section"));
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GgufValue& v,
                             const char* wanted) {
  throw GgufError(cat(path, ": metadata key '", key, "' is ", gguf_value_type_name(v.type),
                      v.type == GgufValueType::ARRAY ? cat(" of ", gguf_value_type_name(v.element_type)) : "",
                      ", expected ", wanted));
}
int64_t as_int(const std::string& path, const std::string& key, const GgufValue& v) {
  if (!v.is_integer() && v.type != GgufValueType::BOOL) wrong_type(path, key, v, "an integer");
  if (is_unsigned(v.type)) {
    if (v.u > (uint64_t)std::numeric_limits<int64_t>::max())
      throw GgufError(cat(path, ": metadata key '", key, "' value ", v.u, " is too large"));
    return (int64_t)v.u;
  }
  return v.i;
}
double as_float(const std::string& path, const std::string& key, const GgufValue& v) {
  if (v.is_float()) return v.f;
  return (double)as_int(path, key, v);
}
}  // namespace

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::STRING) wrong_type(path_, key, *v, "a string");
  return v->s;
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  return as_int(path_, key, *v);
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  return as_float(path_, key, *v);
}

std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::BOOL) wrong_type(path_, key, *v, "a bool");
  return v->u != 0;
}

std::optional<std::vector<std::string>> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::ARRAY || v->element_type != GgufValueType::STRING)
    wrong_type(path_, key, *v, "an array of strings");
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const auto& e : v->array) out.push_back(e.s);
  return out;
}

std::optional<std::vector<double>> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::ARRAY) wrong_type(path_, key, *v, "a numeric array");
  std::vector<double> out;
  out.reserve(v->array.size());
  for (const auto& e : v->array) out.push_back(as_float(path_, key, e));
  return out;
}

std::optional<std::vector<int64_t>> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::ARRAY) wrong_type(path_, key, *v, "an integer array");
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (const auto& e : v->array) out.push_back(as_int(path_, key, e));
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> GgufFile::tensor_to_f32(const GgufTensorInfo& tensor) const {
  const GgmlTypeInfo& info = ggml_type_info(tensor.type);
  if (!info.can_dequantize)
    throw GgufError(cat(path_, ": tensor '", tensor.name, "' has type ", info.name,
                        ", which sinkstream cannot dequantize"));
  std::vector<float> out((size_t)tensor.n_elements);
  // Data a small general.alignment left misaligned is dequantized from an aligned copy
  // (fuzz_gguf_parse finding: a Q4_1 block read at an odd address, undefined behaviour).
  const void* src = tensor.data;
  std::vector<uint64_t> aligned_copy;
  if (reinterpret_cast<uintptr_t>(src) % kTensorDataAlignment != 0) {
    aligned_copy.resize((size_t)((tensor.n_bytes + 7) / 8));
    std::memcpy(aligned_copy.data(), tensor.data, (size_t)tensor.n_bytes);
    src = aligned_copy.data();
  }
  try {
    dequantize_row(tensor.type, src, out.data(), (int64_t)tensor.n_elements);
  } catch (const ArgumentError& e) {  // a type the table lists but the kernels do not handle yet
    throw GgufError(cat(path_, ": tensor '", tensor.name, "' has type ", info.name,
                        ", which sinkstream cannot dequantize (", e.what(), ")"));
  }
  return out;
}

}  // namespace sinkstream
