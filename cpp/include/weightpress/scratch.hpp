// Uninitialised scratch arrays for large temporaries that are written before they are read.
// From 2 MiB on (Linux) they are 2 MiB-aligned and advised as transparent huge pages, so
// their first touch faults once per 2 MiB instead of once per 4 KiB: the BPDN guess's 16 MiB
// float32 copy at 1024×4096 faulted 4096 times per solve, the batch OMP Gram matrix 2048 times
// at 1024 atoms. The advice is only advice: without huge pages they are ordinary memory.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace wp {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
using Scratch = std::unique_ptr<T[], FreeDeleter>;

template <class T>
Scratch<T> scratch(std::size_t count) {
  const std::size_t bytes = std::max<std::size_t>(count * sizeof(T), 1);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  if (bytes >= kHuge) {
    const std::size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    if (void* p = std::aligned_alloc(kHuge, rounded)) {
      (void)madvise(p, rounded, MADV_HUGEPAGE);
      return Scratch<T>(static_cast<T*>(p));
    }
  }
#endif
  void* p = std::malloc(bytes);
  if (!p) throw std::bad_alloc();
  return Scratch<T>(static_cast<T*>(p));
}

}  // namespace wp
