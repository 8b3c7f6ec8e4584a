// Vectorized gated activations (ops.h silu_mul, gelu_tanh_mul) for the ISA levels that have them.
// They use a polynomial exp (within 2 ulp of expf) instead of libm's scalar expf, whose cost ruled
// the feed-forward once the matmuls got fast (prefill of 64 tokens on the default model: 2.9 million
// expf calls, about a sixth of the pass). Every element goes through the same vector code (a
// masked tail, no scalar epilogue), so an element's value does not depend on where it sits in a
// call: chunked and one-shot evaluation stay bit-identical.
#pragma once
#include <cstdint>

#include "ops/cpu/cpu_features.h"
#include "ops/ops.h"

namespace sinkstream {

using GluFn = void (*)(const float* gate, const float* up, int64_t n, float* out);

// The function CpuBackend::glu uses for `act` at level `isa`: a vector one where it exists, else
// the portable one of ops.h.
GluFn select_glu(FfnActivation act, Isa isa);

GluFn avx512_glu(FfnActivation act);  // nullptr where not compiled or not vectorized
GluFn avx2_glu(FfnActivation act);    // the same

}  // namespace sinkstream
