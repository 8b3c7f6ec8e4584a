// What the CPU can run, detected once at run time (CPUID + the OS's XSAVE state on x86-64, the
// kernel's HWCAP bits on AArch64 Linux), and the kernel level (Isa) chosen from it. SIMD kernels are compiled with per-file flags and only called
// after this check, so one binary runs everywhere.
#pragma once
#include <string>

namespace sinkstream {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool os_avx = false;     // the OS saves YMM state (XCR0 bits 1, 2)
  bool os_avx512 = false;  // the OS saves ZMM and opmask state (XCR0 bits 5, 6, 7)
  bool neon = false;          // aarch64 (Advanced SIMD is baseline there)
  bool neon_dotprod = false;  // SDOT/UDOT (HWCAP_ASIMDDP: Armv8.2+ e.g. Cortex-A76/A78, Neoverse, Pi 5, Orin)
  bool neon_i8mm = false;     // SMMLA/UMMLA (HWCAP2_I8MM: Armv8.6+ e.g. Cortex-A510/A710/X2, Neoverse V1/N2)
};

// Kernel levels, ordered within each architecture: a level may use every kernel of the levels below
// it (scalar < neon < dotprod < i8mm on AArch64; scalar < avx2 < avx512 on x86-64).
enum class Isa { Scalar = 0, Neon = 1, Dotprod = 2, I8mm = 3, Avx2 = 4, Avx512 = 5 };

// Whether `isa` is one of the AArch64 levels (neon, dotprod, i8mm).
constexpr bool is_arm_isa(Isa isa) { return isa == Isa::Neon || isa == Isa::Dotprod || isa == Isa::I8mm; }

const CpuFeatures& cpu_features();  // detected once, thread-safe

// The best level this CPU (and OS) supports:
//   Avx2   = AVX2 + FMA + F16C with YMM state enabled (the x86-64 fast-path baseline)
//   Avx512 = Avx2 + AVX-512 F/BW/VL/DQ/VNNI with ZMM state enabled
//   Neon    = aarch64 (NEON is baseline)
//   Dotprod = Neon + the dot-product extension (SDOT)
//   I8mm    = Dotprod + the int8 matrix-multiply extension (SMMLA)
Isa best_isa();

// The level kernels run at: best_isa(), lowered by the environment variable
// SINKSTREAM_ISA=scalar|neon|dotprod|i8mm|avx2|avx512 (read once). Asking for a level above best_isa() gives
// best_isa(); an unknown value throws ArgumentError naming it.
Isa active_isa();

// Whether kernels of level `isa` can run here: scalar always; the levels of this CPU's architecture
// up to best_isa().
bool isa_supported(Isa isa);

const char* isa_name(Isa isa);
// "scalar" | "neon" | "dotprod" | "i8mm" | "avx2" | "avx512" -> Isa; throws ArgumentError naming the value otherwise.
Isa parse_isa(const std::string& name);

}  // namespace sinkstream
