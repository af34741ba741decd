// Shared by the CPU routing kernels (csrc/cpu/routing_*.cpp): storage dtypes and their
// conversion to the compute type, dtype dispatch, and raw-pointer helpers. No torch headers.
//
// Storage dtypes: float32, float64, float16, bfloat16. Arithmetic is in double for float64
// storage and in float otherwise.
#pragma once

#include "compute_type.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace mmhnet {
namespace routing {

// Loops with less work than this (in elements) run on one thread: waking the OpenMP team costs
// more than it saves, and much more when the cores are busy.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct Half {
    uint16_t bits;
};
struct BFloat16 {
    uint16_t bits;
};

inline float bits_to_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

inline uint32_t float_to_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    return bits;
}

inline float half_to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        if (man == 0) return bits_to_float(sign);
        // subnormal: shift the mantissa up to the implicit bit, lowering the exponent
        int shifts = 0;
        while ((man & 0x400u) == 0) {
            man <<= 1;
            ++shifts;
        }
        man &= 0x3ffu;
        return bits_to_float(sign | static_cast<uint32_t>(113 - shifts) << 23 | man << 13);
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | man << 13);
    return bits_to_float(sign | (exp + 112) << 23 | man << 13);
}

// Round to nearest, ties to even (what torch does).
inline uint16_t float_to_half(float f) {
    uint32_t x = float_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax < 0x38800000u) {
        // below the smallest normal half (2^-14): a multiple of 2^-24, rounded to nearest even
        float scaled = bits_to_float(ax) * 16777216.0f;
        return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
    }
    uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3ffu);
    uint32_t rest = ax & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may reach infinity
    if (h >= 0x7c00u) h = 0x7c00u;
    return static_cast<uint16_t>(sign | h);
}

inline uint16_t float_to_bfloat16(float f) {
    uint32_t x = float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const Half* p, int64_t i) { return half_to_float(p[i].bits); }
inline float load(const BFloat16* p, int64_t i) { return bits_to_float(static_cast<uint32_t>(p[i].bits) << 16); }

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(Half* p, int64_t i, float v) { p[i].bits = float_to_half(v); }
inline void store(BFloat16* p, int64_t i, float v) { p[i].bits = float_to_bfloat16(v); }

// Calls f(T{}) with T the C++ type of the storage dtype.
template <class F>
void dispatch(int dtype, const char* op, F&& f) {
    switch (static_cast<Dtype>(dtype)) {
        case Dtype::kFloat32: f(float{}); return;
        case Dtype::kFloat64: f(double{}); return;
        case Dtype::kFloat16: f(Half{}); return;
        case Dtype::kBFloat16: f(BFloat16{}); return;
    }
    throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(dtype));
}

// Large outputs are written right after torch allocated them, so their first touch page-faults
// page by page. Asking for transparent huge pages first (where THP is in "madvise" mode) makes
// that 512 times fewer faults. Only the 2 MiB-aligned inside of the buffer is advised; it is a
// hint and never fails the call.
inline void advise_huge_pages(uintptr_t address, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    if (bytes < static_cast<int64_t>(4 * kHuge)) return;
    const uintptr_t begin = (address + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t end = (address + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)address;
    (void)bytes;
#endif
}

// The number of threads the next parallel region gets (1 without OpenMP).
inline int64_t max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Streaming (non-temporal) stores. A plain store first reads the cache line it writes (read for
// ownership), so a pass that only writes an output moves its bytes twice; a streaming store
// writes the line without reading it and without keeping it in cache. That pays for outputs
// unlikely to stay in the last-level cache until they are read again; small ones are better left
// in cache for the next op. Outputs of at least streaming_bytes() bytes are streamed: 4 MiB by
// default, an eighth of a 32 MiB L3. (Measured on a 2-core EPYC VM: a 256 MB copy 1.75x faster,
// zero-filling 1.9x; the routing round trip at 9375 x 1024 fp32 ~5% faster with 4 MiB than with
// 16 MiB, which leaves its 9.6 MB (chunks, dim) outputs cached, and ~20% faster than without.)
inline std::atomic<int64_t>& streaming_threshold() {
    static std::atomic<int64_t> bytes{int64_t(4) << 20};
    return bytes;
}
inline int64_t streaming_bytes() { return streaming_threshold().load(std::memory_order_relaxed); }
inline bool streams(int64_t output_bytes) {
    return output_bytes > 0 && output_bytes >= streaming_bytes();
}

#if defined(__SSE2__)
// One streaming store of the widest vector the build targets (x86 only).
#if defined(__AVX512F__)
constexpr int64_t kStreamVector = 64;
inline void stream_vector(char* dst, const char* src) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst),
                        src ? _mm512_loadu_si512(src) : _mm512_setzero_si512());
}
#elif defined(__AVX__)
constexpr int64_t kStreamVector = 32;
inline void stream_vector(char* dst, const char* src) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst),
                        src ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))
                            : _mm256_setzero_si256());
}
#else
constexpr int64_t kStreamVector = 16;
inline void stream_vector(char* dst, const char* src) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst),
                     src ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src))
                         : _mm_setzero_si128());
}
#endif
#endif

// Writes `bytes` bytes of src to dst (zeros when src is null); with `stream`, the vector-aligned
// middle of dst by streaming stores (on x86; elsewhere plain copies). A thread that streamed must
// call streaming_fence() before other threads read what it wrote.
inline void write_bytes(void* dst, const void* src, int64_t bytes, bool stream) {
    char* d = static_cast<char*>(dst);
    const char* s = static_cast<const char*>(src);
    auto plain = [](char* to, const char* from, int64_t n) {
        if (n <= 0) return;
        if (from)
            std::memcpy(to, from, static_cast<size_t>(n));
        else
            std::memset(to, 0, static_cast<size_t>(n));
    };
#if defined(__SSE2__)
    if (stream) {
        const int64_t misalignment =
            static_cast<int64_t>(reinterpret_cast<uintptr_t>(d) % kStreamVector);
        const int64_t head =
            std::min<int64_t>(bytes, (kStreamVector - misalignment) % kStreamVector);
        plain(d, s, head);
        int64_t i = head;
        for (; i + kStreamVector <= bytes; i += kStreamVector)
            stream_vector(d + i, s ? s + i : nullptr);
        plain(d + i, s ? s + i : nullptr, bytes - i);
        return;
    }
#endif
    (void)stream;
    plain(d, s, bytes);
}

// Makes this thread's streaming stores visible before what it does next (its next barrier).
inline void streaming_fence() {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

// Where a kernel writes an output: the output itself, or, when the output is streamed, a small
// buffer that is copied out with streaming stores every kBlock elements. (Staging a whole row
// and streaming it afterwards was ~30% slower for route_boundaries' backward: the loads that
// feed a row and its stores then run in turns instead of together.)
//   out.write(dst, n, [&](T* o, int64_t d0, int64_t m) { /* o[j] = element d0 + j, j < m */ });
// or, for a piece of at most kBlock elements: T* o = out.begin(dst); ...; out.done(m);
template <class T>
class RowOutput {
   public:
    static constexpr int64_t kBlock = 64;
    explicit RowOutput(bool stream) : stream_(stream) {}
    T* begin(T* dst) {
        dst_ = dst;
        return stream_ ? buffer_ : dst;
    }
    void done(int64_t m) {
        if (stream_) write_bytes(dst_, buffer_, m * static_cast<int64_t>(sizeof(T)), true);
    }
    template <class F>
    void write(T* dst, int64_t n, F&& fill) {
        if (!stream_) {
            fill(dst, int64_t(0), n);
            return;
        }
        for (int64_t d0 = 0; d0 < n; d0 += kBlock) {
            const int64_t m = std::min(kBlock, n - d0);
            fill(begin(dst + d0), d0, m);
            done(m);
        }
    }
    // (prefetching a streamed output's lines would read them in: what streaming avoids)
    bool streamed() const { return stream_; }

   private:
    bool stream_;
    alignas(64) T buffer_[kBlock];
    T* dst_ = nullptr;
};

// Calls fn(lo, hi) on contiguous ranges covering [0, n), one per OpenMP thread (one range on
// one thread when `work` is below kMinParallelWork). fn may stream its stores.
template <class F>
void parallel_ranges(int64_t n, int64_t work, F&& fn) {
#ifdef _OPENMP
#pragma omp parallel if (work >= kMinParallelWork)
    {
        const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();
        const int64_t lo = n * part / parts, hi = n * (part + 1) / parts;
        if (lo < hi) fn(lo, hi);
        streaming_fence();
    }
#else
    (void)work;
    if (n > 0) fn(0, n);
    streaming_fence();
#endif
}

// Asks for the cache lines of n elements from `row` ahead of their use. Kernels that walk the
// rows of a (rows, dim) tensor a group of columns at a time touch a new 4 KiB page on nearly
// every row, and the hardware prefetchers stop at page boundaries.
template <class T>
inline void prefetch(const T* row, int64_t n, bool for_write = false) {
    const char* first = reinterpret_cast<const char*>(row);
    const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
    for (int64_t i = 0; i < bytes; i += 64) {
        if (for_write)
            __builtin_prefetch(first + i, 1, 3);
        else
            __builtin_prefetch(first + i, 0, 3);
    }
}

template <class T>
T* ptr(uintptr_t address) {
    return reinterpret_cast<T*>(address);
}

// An index tensor is int32 or int64; read it as int64.
inline int64_t load_index(uintptr_t address, bool is64, int64_t i) {
    return is64 ? ptr<const int64_t>(address)[i] : ptr<const int32_t>(address)[i];
}

}  // namespace routing
}  // namespace mmhnet
