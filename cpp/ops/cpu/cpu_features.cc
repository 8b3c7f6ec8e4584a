#include "ops/cpu/cpu_features.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace sinkstream {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// XCR0: which register states the OS saves on context switches. Reading it needs OSXSAVE; the
// instruction is written as inline asm so this file needs no -mxsave.
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  const bool avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (osxsave && avx) {
    const uint64_t xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;             // SSE (bit 1) and AVX (bit 2) state
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512vnni = (c >> 11) & 1;
  }
  return f;
}
#elif defined(__aarch64__)
CpuFeatures detect() {
  CpuFeatures f;
  f.neon = true;  // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
  // The bits of the Linux arm64 ABI (asm/hwcap.h), spelled out for older libc headers.
  constexpr unsigned long kHwcapAsimddp = 1ul << 20;  // HWCAP_ASIMDDP
  constexpr unsigned long kHwcap2I8mm = 1ul << 13;    // HWCAP2_I8MM
  f.neon_dotprod = (getauxval(AT_HWCAP) & kHwcapAsimddp) != 0;
  f.neon_i8mm = (getauxval(AT_HWCAP2) & kHwcap2I8mm) != 0;
#endif
  return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

Isa detect_best_isa() {
  const CpuFeatures& f = cpu_features();
  if (f.neon) return f.neon_dotprod ? (f.neon_i8mm ? Isa::I8mm : Isa::Dotprod) : Isa::Neon;
  const bool avx2 = f.os_avx && f.avx2 && f.fma && f.f16c;
  if (!avx2) return Isa::Scalar;
  const bool avx512 = f.os_avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni;
  return avx512 ? Isa::Avx512 : Isa::Avx2;
}

Isa detect_active_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv("SINKSTREAM_ISA");
  if (env == nullptr || *env == '\0') return best;
  const Isa wanted = parse_isa(env);
  // The AArch64 and x86 levels are different branches: a request off this CPU's branch means scalar.
  if (wanted != Isa::Scalar && is_arm_isa(wanted) != is_arm_isa(best)) return Isa::Scalar;
  return (int)wanted < (int)best ? wanted : best;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

Isa best_isa() {
  static const Isa isa = detect_best_isa();
  return isa;
}

Isa active_isa() {
  static const Isa isa = detect_active_isa();
  return isa;
}

bool isa_supported(Isa isa) {
  const Isa best = best_isa();
  if (isa == Isa::Scalar) return true;
  return is_arm_isa(isa) == is_arm_isa(best) && (int)isa <= (int)best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Neon: return "neon";
    case Isa::Dotprod: return "dotprod";
    case Isa::I8mm: return "i8mm";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return (char)std::tolower(ch); });
  if (lower == "scalar") return Isa::Scalar;
  if (lower == "neon") return Isa::Neon;
  if (lower == "dotprod") return Isa::Dotprod;
  if (lower == "i8mm") return Isa::I8mm;
  if (lower == "avx2") return Isa::Avx2;
  if (lower == "avx512") return Isa::Avx512;
  throw ArgumentError(cat("unknown ISA '", name, "' (SINKSTREAM_ISA / isa): expected scalar, neon, dotprod, i8mm, avx2 or avx512"));
}

}  // namespace sinkstream
