// WeightBinder: finds tensors by name and checks their shapes and types before the model trusts them
// ("the loader validates, the model trusts"). Errors name the file, tensor, expected and actual shape.
#pragma once
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "ops/ops.h"

namespace sinkstream {

std::string shape_string(const std::vector<int64_t>& dims);  // "(576, 49152)" in ggml order

class WeightBinder {
 public:
  explicit WeightBinder(const GgufFile& file) : file_(file) {}

  const GgufTensorInfo& require(const std::string& name) const;
  // A 2-D weight of `rows` rows of `cols` (ggml dims (cols, rows)) of a type the kernels support.
  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols) const;
  // A 1-D tensor of n values, converted to float32 (norm weights, biases).
  std::vector<float> vector(const std::string& name, int64_t n) const;
  std::vector<float> optional_vector(const std::string& name, int64_t n) const;  // empty if absent
  // A 3-D stack of `count` matrices of `rows` x `cols` (ggml dims (cols, rows, count): a mixture of
  // experts' weights), one WeightMatrix per matrix, pointing into the mapped file (no copy).
  std::vector<WeightMatrix> matrix_stack(const std::string& name, int64_t count, int64_t rows, int64_t cols) const;
  // A 2-D tensor of ggml dims (cols, rows) converted to float32, rows contiguous (expert biases).
  std::vector<float> table(const std::string& name, int64_t rows, int64_t cols) const;

 private:
  // Type and alignment checks of a tensor whose shape was checked, as `rows` x `cols`.
  WeightMatrix checked_matrix(const std::string& name, const GgufTensorInfo& t, int64_t rows, int64_t cols) const;
  const GgufFile& file_;
};

}  // namespace sinkstream
