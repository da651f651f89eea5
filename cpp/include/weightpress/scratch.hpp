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
#include <utility>
#include <vector>

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

// The most a buffer kept by a thread between calls may hold (Lent, pursuit's LazyPool): the
// size from which glibc maps allocations of their own (fix_mmap_threshold), so nothing kept is
// larger than what the heap would keep anyway.
constexpr std::size_t kKeepBytes = std::size_t(4) << 20;

// An allocator for std::vector that takes its memory from scratch(): from 2 MiB on, huge pages
// where the system gives them, so that a growing buffer faults once per 2 MiB.
template <class T>
struct HugeAlloc {
  using value_type = T;
  HugeAlloc() = default;
  template <class U>
  explicit HugeAlloc(const HugeAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) { return scratch<T>(n).release(); }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  friend bool operator==(const HugeAlloc&, const HugeAlloc&) noexcept { return true; }
  friend bool operator!=(const HugeAlloc&, const HugeAlloc&) noexcept { return false; }
};
template <class T>
using HugeVec = std::vector<T, HugeAlloc<T>>;

// A vector lent from a slot that the calling thread keeps (`home`, e.g. a thread_local), and
// given back when the loan ends if it holds at most kKeepBytes. glibc trims freed memory at
// the top of its heap beyond 128 KiB, so a solver's temporaries of a few MiB, allocated afresh
// in every call, page-faulted their memory in again each time (LASSO 1024×4096: 4000 faults
// per solve). The vector comes empty, with its capacity. A slot already lent lends an empty
// vector: correct, only not reused.
template <class V>
class Lent {
 public:
  explicit Lent(V& home) : v(std::move(home)), home_(home) { v.clear(); }
  Lent(const Lent&) = delete;
  Lent& operator=(const Lent&) = delete;
  ~Lent() {
    if (v.capacity() * sizeof(typename V::value_type) <= kKeepBytes) home_ = std::move(v);
  }
  V v;

 private:
  V& home_;
};

}  // namespace wp

