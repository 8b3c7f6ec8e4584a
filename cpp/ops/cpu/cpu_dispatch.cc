#include "ops/cpu/cpu_dispatch.h"

#include <cstdlib>
#include <cstring>

namespace sinkstream {

bool cpu_has_avx2_fma_f16c() {
#if defined(__x86_64__) || defined(__i386__)
  const char* isa = std::getenv("SINKSTREAM_ISA");
  if (isa != nullptr && std::strcmp(isa, "scalar") == 0) return false;
  // GCC/Clang's __builtin_cpu_supports reads CPUID once and accounts for OS support of AVX state.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace sinkstream
