#include "bindings/bindings.h"

namespace sinkstream::bindings {
void bind_tokenizer(nanobind::module_&) {}
}  // namespace sinkstream::bindings
