#include "bindings/bindings.h"

namespace sinkstream::bindings {
void bind_model(nanobind::module_&) {}
}  // namespace sinkstream::bindings
