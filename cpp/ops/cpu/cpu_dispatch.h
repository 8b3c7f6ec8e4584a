// Run-time CPU checks for the SIMD variants (never -march=native: a wheel runs on any x86-64).
#pragma once

namespace sinkstream {

// True when the AVX2+FMA+F16C kernels may run: the CPU (and OS, via CPUID/XGETBV) supports them
// and SINKSTREAM_ISA does not ask for the scalar path.
bool cpu_has_avx2_fma_f16c();

}  // namespace sinkstream
