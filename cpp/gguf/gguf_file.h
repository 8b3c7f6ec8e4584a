// GgufFile: a GGUF v2/v3 file, memory-mapped, parsed and validated once; tensor data stays in the map
// (zero-copy). Every offset, count and size a hostile file could lie about is checked; failures
// throw GgufError naming the file and the problem; parsed metadata is capped at 1 GiB of memory.
// Spec: ggml/docs/gguf.md (v2: 64-bit counts and lengths; v3: adds big-endian files, refused here).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "quant/quant_types.h"

namespace sinkstream {

// Alignment the kernels need for tensor data read in place (block structs hold fp16 and float
// fields). The spec asks general.alignment to be a multiple of 8, but files with 1, 2 or 4 exist
// (gguf-py writes them, llama.cpp reads them) and are accepted; their data may sit anywhere.
constexpr uint64_t kTensorDataAlignment = 8;

enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

const char* gguf_value_type_name(GgufValueType type);

// One metadata value. Scalars use the field matching their type; arrays hold elements (which may
// themselves be arrays) of element_type.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  uint64_t u = 0;     // UINT8..UINT64, BOOL
  int64_t i = 0;      // INT8..INT64
  double f = 0.0;     // FLOAT32, FLOAT64
  std::string s;      // STRING
  GgufValueType element_type = GgufValueType::UINT8;  // ARRAY
  std::vector<GgufValue> array;                       // ARRAY

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::FLOAT32 || type == GgufValueType::FLOAT64; }
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;        // from the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the map

  int64_t row_length() const { return dims.empty() ? 1 : dims[0]; }
  int64_t n_rows() const { return n_elements == 0 ? 0 : (int64_t)(n_elements / (uint64_t)row_length()); }
};

class GgufFile {
 public:
  // Maps and validates the file; throws GgufError naming the file and the problem (I/O included).
  static std::shared_ptr<GgufFile> open(const std::string& path);
  // Parses an in-memory image (tests, fuzzing); the buffer is copied.
  static std::shared_ptr<GgufFile> from_bytes(const std::string& name, const void* data, size_t size);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }
  // The whole file image (file_size() bytes): header, metadata, tensor infos, then tensor data.
  const uint8_t* image() const { return base_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;

  // Typed lookups: nullopt when absent; GgufError when present with an incompatible type.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;     // any integer type
  std::optional<double> get_float(const std::string& key) const;    // any float or integer type
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::vector<std::string>> get_string_array(const std::string& key) const;
  std::optional<std::vector<double>> get_float_array(const std::string& key) const;  // numeric arrays
  std::optional<std::vector<int64_t>> get_int_array(const std::string& key) const;   // integer arrays

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;

  // Lets the OS drop the resident pages that lie wholly inside [begin, begin + bytes) of the mapped
  // file (a matrix the engine keeps its own packed copy of); they are read from the file again when
  // touched. Does nothing for an in-memory image or a range outside the file.
  void release_pages(const uint8_t* begin, uint64_t bytes) const;

  // Dequantizes a whole tensor to float32 (n_elements values, ggml order). Throws for types
  // sinkstream cannot dequantize.
  std::vector<float> tensor_to_f32(const GgufTensorInfo& tensor) const;

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  void* mapping_ = nullptr;          // mmap'ed region, or nullptr
  std::vector<uint8_t> owned_;       // from_bytes copies here
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace sinkstream
