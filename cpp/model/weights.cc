#include "model/weights.h"

#include "core/error.h"

namespace sinkstream {

std::string shape_string(const std::vector<int64_t>& dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) out += cat(i ? ", " : "", dims[i]);
  return out + ")";
}

const GgufTensorInfo& WeightBinder::require(const std::string& name) const {
  const GgufTensorInfo* t = file_.find_tensor(name);
  if (t == nullptr) throw ModelError(cat(file_.path(), ": missing tensor '", name, "'"));
  return *t;
}

namespace {
void check_shape(const GgufFile& file, const std::string& name, const GgufTensorInfo& t,
                 const std::vector<int64_t>& dims) {
  if (t.dims != dims)
    throw ModelError(cat(file.path(), ": tensor '", name, "' has shape ", shape_string(t.dims), ", expected ",
                         shape_string(dims)));
}
}  // namespace

std::vector<WeightMatrix> WeightBinder::matrix_stack(const std::string& name, int64_t count, int64_t rows,
                                                     int64_t cols) const {
  const GgufTensorInfo& t = require(name);
  check_shape(file_, name, t, {cols, rows, count});
  WeightMatrix first = checked_matrix(name, t, rows, cols);
  std::vector<WeightMatrix> stack;
  for (int64_t e = 0; e < count; ++e) {
    WeightMatrix w = first;
    w.name = cat(name, "[", e, "]");
    w.data = first.data + e * rows * first.row_bytes;
    stack.push_back(w);
  }
  return stack;
}

std::vector<float> WeightBinder::table(const std::string& name, int64_t rows, int64_t cols) const {
  const GgufTensorInfo& t = require(name);
  check_shape(file_, name, t, {cols, rows});
  return file_.tensor_to_f32(t);
}

WeightMatrix WeightBinder::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const GgufTensorInfo& t = require(name);
  check_shape(file_, name, t, {cols, rows});
  return checked_matrix(name, t, rows, cols);
}

WeightMatrix WeightBinder::checked_matrix(const std::string& name, const GgufTensorInfo& t, int64_t rows,
                                          int64_t cols) const {
  const GgmlTypeInfo& info = ggml_type_info(t.type);
  if (!info.can_dequantize)
    throw ModelError(cat(file_.path(), ": tensor '", name, "' has type ", info.name, ", which sinkstream cannot run"));
  // The kernels read weights in place, block structs included: misaligned data (a small
  // general.alignment; fuzz_gguf_parse found it in tensor_to_f32) would be undefined behaviour.
  if (reinterpret_cast<uintptr_t>(t.data) % kTensorDataAlignment != 0)
    throw ModelError(cat(file_.path(), ": tensor '", name, "' data starts at byte ", file_.data_offset() + t.offset,
                         ", not a multiple of ", kTensorDataAlignment, " (general.alignment ", file_.alignment(),
                         "; the GGUF spec asks for a multiple of 8): re-save the file with the default alignment 32"));
  WeightMatrix w;
  w.name = name;
  w.type = t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = ggml_row_bytes(info, cols);
  return w;
}

std::vector<float> WeightBinder::vector(const std::string& name, int64_t n) const {
  const GgufTensorInfo& t = require(name);
  if (t.dims.size() != 1 || t.dims[0] != n)
    throw ModelError(cat(file_.path(), ": tensor '", name, "' has shape ", shape_string(t.dims), ", expected (", n,
                         ")"));
  return file_.tensor_to_f32(t);
}

std::vector<float> WeightBinder::optional_vector(const std::string& name, int64_t n) const {
  return file_.find_tensor(name) ? vector(name, n) : std::vector<float>();
}

}  // namespace sinkstream
