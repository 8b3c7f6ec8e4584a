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

WeightMatrix WeightBinder::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const GgufTensorInfo& t = require(name);
  if (t.dims.size() != 2 || t.dims[0] != cols || t.dims[1] != rows)
    throw ModelError(cat(file_.path(), ": tensor '", name, "' has shape ", shape_string(t.dims), ", expected (",
                         cols, ", ", rows, ")"));
  const GgmlTypeInfo& info = ggml_type_info(t.type);
  if (!info.can_dequantize)
    throw ModelError(cat(file_.path(), ": tensor '", name, "' has type ", info.name, ", which sinkstream cannot run"));
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
