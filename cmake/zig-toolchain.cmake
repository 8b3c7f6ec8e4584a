# The portable wheels' compiler: zig's clang (the `ziglang` package from PyPI) targeting an old glibc
# (scripts/build_wheels.sh). zig links its libc++ and libc++abi statically, so the module needs only
# glibc (<= the target's version) at run time: manylinux_2_28 or lower.
#
# Environment (read here, because CMake reads a toolchain file again for each try_compile):
#   SINKSTREAM_ZIG_BIN   directory with the wrappers c++, ar, ranlib (each runs `zig ... -target`)
#   SINKSTREAM_ZIG_ARCH  x86_64 or aarch64; a target other than the host's is a cross build
if(NOT DEFINED ENV{SINKSTREAM_ZIG_BIN} OR NOT DEFINED ENV{SINKSTREAM_ZIG_ARCH})
  message(FATAL_ERROR "zig-toolchain.cmake needs SINKSTREAM_ZIG_BIN and SINKSTREAM_ZIG_ARCH (scripts/build_wheels.sh)")
endif()
cmake_host_system_information(RESULT _sinkstream_host QUERY OS_PLATFORM)
if(NOT "$ENV{SINKSTREAM_ZIG_ARCH}" STREQUAL "${_sinkstream_host}")
  set(CMAKE_SYSTEM_NAME Linux)  # makes CMAKE_CROSSCOMPILING true
  set(CMAKE_SYSTEM_PROCESSOR "$ENV{SINKSTREAM_ZIG_ARCH}")
endif()
set(CMAKE_C_COMPILER "$ENV{SINKSTREAM_ZIG_BIN}/cc")
set(CMAKE_CXX_COMPILER "$ENV{SINKSTREAM_ZIG_BIN}/c++")
set(CMAKE_AR "$ENV{SINKSTREAM_ZIG_BIN}/ar" CACHE FILEPATH "zig ar")
set(CMAKE_RANLIB "$ENV{SINKSTREAM_ZIG_BIN}/ranlib" CACHE FILEPATH "zig ranlib")
# libc++'s headers pull in less than libstdc++'s: nanobind's use stderr and count on Python.h for
# <stdio.h>, which the Limited API's Python.h (3.12+, the stable-ABI wheel) no longer includes.
set(CMAKE_CXX_FLAGS_INIT "-include cstdio")
# zig reads -march as a CPU name: the AArch64 extension files' flags (CMakeLists.txt) in its words,
# the baseline CPU plus the extension only.
set(SINKSTREAM_DOTPROD_FLAGS "-mcpu=generic+dotprod" CACHE STRING "flags of the SDOT kernels' file")
set(SINKSTREAM_I8MM_FLAGS "-mcpu=generic+dotprod+i8mm" CACHE STRING "flags of the SMMLA kernels' file")
# Symbols stripped at link time (strip and objcopy of the host may not know the target's ELF).
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-s")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-s")
set(CMAKE_STRIP "" CACHE FILEPATH "stripped at link time" FORCE)
