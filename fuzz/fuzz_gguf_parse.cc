// libFuzzer target: GgufFile::from_bytes on arbitrary bytes, then every metadata accessor on every
// key and every small tensor dequantized. The contract (gguf_file.h): a malformed file throws
// GgufError; anything else (another exception, a sanitizer report, a crash, a hang, a huge
// allocation) is a finding. Build and run: scripts/run_fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "core/error.h"
#include "gguf/gguf_file.h"

using namespace sinkstream;

namespace {

// Dequantizing costs memory and time per element; bigger tensors add no new parser paths.
constexpr uint64_t kMaxDequantizeElements = 1 << 16;

[[noreturn]] void invariant_broken(const char* what) {
  std::fprintf(stderr, "fuzz_gguf_parse: invariant broken: %s\n", what);
  std::abort();
}

template <typename Lookup>
void read_ignoring_type_errors(Lookup lookup) {
  try {
    lookup();
  } catch (const GgufError&) {
    // a type mismatch is reported as GgufError by contract
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<GgufFile> file;
  try {
    file = GgufFile::from_bytes("fuzz-input.gguf", data, size);
  } catch (const GgufError&) {
    return 0;
  }

  if (file->data_offset() > file->file_size() && !file->tensors().empty()) invariant_broken("data offset past the end");
  for (const auto& pair : file->metadata()) {
    const std::string& key = pair.first;  // (a plain reference: C++17 lambdas cannot capture bindings)
    const GgufValue& value = pair.second;
    if (file->find(key) != &value) invariant_broken("find(key) does not return the parsed value");
    read_ignoring_type_errors([&] { (void)file->get_string(key); });
    read_ignoring_type_errors([&] { (void)file->get_int(key); });
    read_ignoring_type_errors([&] { (void)file->get_float(key); });
    read_ignoring_type_errors([&] { (void)file->get_bool(key); });
    read_ignoring_type_errors([&] { (void)file->get_string_array(key); });
    read_ignoring_type_errors([&] { (void)file->get_float_array(key); });
    read_ignoring_type_errors([&] { (void)file->get_int_array(key); });
    (void)gguf_value_type_name(value.type);
  }
  for (const auto& tensor : file->tensors()) {
    if (file->find_tensor(tensor.name) != &tensor) invariant_broken("find_tensor(name) does not return the info");
    if (tensor.dims.empty() || tensor.n_elements == 0) invariant_broken("tensor without elements");
    if (tensor.offset % file->alignment() != 0) invariant_broken("unaligned tensor offset accepted");
    const uint64_t data_section = file->file_size() - file->data_offset();
    if (tensor.offset > data_section || tensor.n_bytes > data_section - tensor.offset)
      invariant_broken("tensor data outside the file");
    (void)tensor.n_rows();
    if (tensor.n_elements <= kMaxDequantizeElements) {
      try {
        const std::vector<float> values = file->tensor_to_f32(tensor);
        if (values.size() != tensor.n_elements) invariant_broken("tensor_to_f32 returned the wrong count");
      } catch (const GgufError&) {
        // a type sinkstream cannot dequantize: reported by contract
      }
    }
  }
  return 0;
}
