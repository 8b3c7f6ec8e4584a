#include "ops/cpu/cpu_dispatch.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdlib>
#include <cstring>

namespace sinkstream {

bool cpu_has_avx2_fma_f16c() {
#if defined(__x86_64__) || defined(__i386__)
  const char* isa = std::getenv("SINKSTREAM_ISA");
  if (isa != nullptr && std::strcmp(isa, "scalar") == 0) return false;
  // GCC/Clang's __builtin_cpu_supports reads CPUID once and accounts for OS support of AVX state.
  __builtin_cpu_init();
  // F16C straight from CPUID leaf 1 (ECX bit 29): clang 14 (Debian's, used for the fuzzers)
  // rejects __builtin_cpu_supports("f16c"). OS support of the AVX state is covered by "avx2".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

}  // namespace sinkstream
