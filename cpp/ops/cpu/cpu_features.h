// What the CPU can run, detected once at run time (CPUID + the OS's XSAVE state on x86-64), and the
// kernel level (Isa) chosen from it. SIMD kernels are compiled with per-file flags and only called
// after this check, so one binary runs everywhere.
#pragma once
#include <string>

namespace sinkstream {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool os_avx = false;     // the OS saves YMM state (XCR0 bits 1, 2)
  bool os_avx512 = false;  // the OS saves ZMM and opmask state (XCR0 bits 5, 6, 7)
  bool neon = false, neon_dotprod = false;  // aarch64 (NEON is baseline there)
};

// Kernel levels, ordered: a level may use every kernel of the levels below it.
enum class Isa { Scalar = 0, Neon = 1, Avx2 = 2, Avx512 = 3 };

const CpuFeatures& cpu_features();  // detected once, thread-safe

// The best level this CPU (and OS) supports:
//   Avx2   = AVX2 + FMA + F16C with YMM state enabled (the x86-64 fast-path baseline)
//   Avx512 = Avx2 + AVX-512 F/BW/VL/DQ/VNNI with ZMM state enabled
//   Neon   = aarch64 with NEON
Isa best_isa();

// The level kernels run at: best_isa(), lowered by the environment variable
// SINKSTREAM_ISA=scalar|neon|avx2|avx512 (read once). Asking for a level above best_isa() gives
// best_isa(); an unknown value throws ArgumentError naming it.
Isa active_isa();

// Whether kernels of level `isa` can run here: scalar always; neon on aarch64; avx2 / avx512 up to
// best_isa() on x86-64.
bool isa_supported(Isa isa);

const char* isa_name(Isa isa);
// "scalar" | "neon" | "avx2" | "avx512" -> Isa; throws ArgumentError naming the value otherwise.
Isa parse_isa(const std::string& name);

}  // namespace sinkstream
