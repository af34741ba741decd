// Per-thread scratch of the CPU kernels: 64-byte aligned buffers that only grow, reused across
// calls so that large calls do not page-fault on every block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace mmhnet {
namespace cpu {

template <typename T>
struct AlignedAllocator {
    using value_type = T;
    AlignedAllocator() = default;
    template <typename U>
    AlignedAllocator(const AlignedAllocator<U>&) {}
    T* allocate(std::size_t n) {
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
    }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <typename U>
    bool operator==(const AlignedAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

template <typename T>
using Buffer = std::vector<T, AlignedAllocator<T>>;

template <typename T>
inline T* grown(Buffer<T>& buf, int64_t n) {
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    return buf.data();
}

}  // namespace cpu
}  // namespace mmhnet
