// Memory that decode streams through on every token, asked to be backed by 2 MiB pages.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sinkstream {

constexpr size_t kLargePageBytes = size_t{2} << 20;

// An allocator whose large blocks have their whole 2 MiB pages advised as huge pages (Linux
// transparent huge pages, where they are enabled or in "madvise" mode). Decode reads the whole K/V
// cache of a long window every token: with 4 KiB pages that is a TLB miss every 32 rows of 128
// bytes. Measured on the default model at positions 512-1112 (interleaved runs, a 2-core VM): decode
// 2-6% faster at 1 and 2 threads. The block itself is a plain malloc of the bytes asked for (its
// unaligned ends stay in 4 KiB pages), so the memory a session takes is what its estimate says
// (Model.session_memory).
template <typename T>
struct LargePageAllocator {
  using value_type = T;
  LargePageAllocator() = default;
  template <typename U>
  LargePageAllocator(const LargePageAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    void* p = std::malloc(bytes > 0 ? bytes : 1);
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
    const uintptr_t first = (begin + kLargePageBytes - 1) / kLargePageBytes * kLargePageBytes;
    const uintptr_t last = end / kLargePageBytes * kLargePageBytes;
    if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // a hint
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <typename U>
  bool operator==(const LargePageAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LargePageAllocator<U>&) const { return false; }
};

}  // namespace sinkstream
