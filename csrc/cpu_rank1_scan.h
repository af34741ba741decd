// The one inner loop of every CPU scan pass (scan_params.h): a register-tiled rank-1 scan
//     S_k = m_k S_{k-1} + v_k (x) b_k,     out_k[i] = sum_j c_k[j] S_k[i][j]
// over a block of steps; or, "exclusive", out_k[i] = sum_j c_k[j] (m_k S_{k-1})[i][j], the
// output without the step's own term v_k[i] (b_k . c_k), for the backward passes whose
// log-decay terms must leave it out (scan_params.h). The passes keep their state in "rescaled" form (cpu_scan_schedule.h), so
// the decay is folded into v, c and the output scale and appears here only as the rare
// multiplier m_k != 1; a step costs two FMAs per state element.
//
// Layout: v and out rows hold I (lanes) elements, b and c rows J (broadcast) elements, all rows
// padded with zeros to `ipad` / `jpad`, multiples of kPad. The state is stored S[j][i]. A tile
// keeps one vector of lanes times kTileJ state columns in registers across all steps of the
// block; b_k[j] and c_k[j] are broadcast from memory.
//
// While it runs, the block issues the prefetches it is given (the rows the next block will
// read and write), spread evenly over its steps: inputs of other heads sit a page apart and a
// burst of misses would stall the loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace mmhnet {
namespace cpu {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;  // 32 vector registers: 16 state vectors per tile
constexpr int kTileJ = 16;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;  // 16 vector registers
constexpr int kTileJ = 8;
#else
constexpr int kVecBytes = 16;
constexpr int kTileJ = 8;
#endif
constexpr int kPad = 16;       // a multiple of every lane count and of kTileJ
constexpr int kAccumulators = 4;  // independent partial sums of out, to hide FMA latency

template <typename T>
struct VecOf {
    typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(T));

template <typename T>
inline Vec<T> vload(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <typename T>
inline void vstore(T* p, Vec<T> v) {
    std::memcpy(p, &v, sizeof v);
}

inline int64_t padded(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// Cache lines to fetch while a block runs, for reading and for writing.
struct Prefetches {
    const void* const* read = nullptr;
    int64_t nread = 0;
    const void* const* write = nullptr;
    int64_t nwrite = 0;
};

// Issues `count` prefetches spread over the steps of a loop: call issue() once per step.
template <bool kWrite>
class PrefetchIssuer {
  public:
    PrefetchIssuer(const void* const* lines, int64_t count, int64_t nsteps)
        : lines_(lines), count_(count), per_step_(nsteps > 0 ? (count + nsteps - 1) / nsteps : 0) {}

    void issue() {
        const int64_t end = std::min(count_, next_ + per_step_);
        for (; next_ < end; ++next_) __builtin_prefetch(lines_[next_], kWrite ? 1 : 0, 2);
    }

  private:
    const void* const* lines_;
    int64_t count_, per_step_, next_ = 0;
};

// One tile: lanes [i0, i0 + kLanes) x columns [j0, j0 + kTileJ); pointers already offset.
template <bool kExclusive, typename T>
inline void rank1_scan_tile(int64_t nsteps, const T* v, const T* b, const T* c, const T* mult,
                            int64_t ipad, int64_t jpad, T* state, T* out, bool accumulate,
                            const Prefetches& pf) {
    PrefetchIssuer<false> reads(pf.read, pf.nread, nsteps);
    PrefetchIssuer<true> writes(pf.write, pf.nwrite, nsteps);
    Vec<T> s[kTileJ];
#pragma GCC unroll 16
    for (int j = 0; j < kTileJ; ++j) s[j] = vload(state + j * ipad);
    for (int64_t k = 0; k < nsteps; ++k) {
        const T* bk = b + k * jpad;
        const T* ck = c + k * jpad;
        if (mult[k] != T(1)) {
            const T m = mult[k];
#pragma GCC unroll 16
            for (int j = 0; j < kTileJ; ++j) s[j] *= m;
        }
        const Vec<T> vk = vload(v + k * ipad);
        Vec<T> acc[kAccumulators] = {};
#pragma GCC unroll 16
        for (int j = 0; j < kTileJ; ++j) {
            if (kExclusive) acc[j % kAccumulators] += s[j] * ck[j];
            s[j] += vk * bk[j];
            if (!kExclusive) acc[j % kAccumulators] += s[j] * ck[j];
        }
#pragma GCC unroll 4
        for (int a = 1; a < kAccumulators; ++a) acc[0] += acc[a];
        T* ok = out + k * ipad;
        vstore(ok, accumulate ? acc[0] + vload(ok) : acc[0]);
        reads.issue();
        writes.issue();
    }
#pragma GCC unroll 16
    for (int j = 0; j < kTileJ; ++j) vstore(state + j * ipad, s[j]);
}

// All tiles of a block of steps. state: jpad x ipad; out: nsteps x ipad (overwritten).
template <bool kExclusive = false, typename T>
void rank1_scan_block(int64_t nsteps, const T* v, const T* b, const T* c, const T* mult,
                      int64_t ipad, int64_t jpad, T* state, T* out, const Prefetches& pf = {}) {
    const int64_t tiles = (ipad / kLanes<T>) * (jpad / kTileJ);
    if (tiles == 0) {
        std::memset(out, 0, sizeof(T) * nsteps * ipad);
        return;
    }
    const int64_t rshare = (pf.nread + tiles - 1) / tiles, wshare = (pf.nwrite + tiles - 1) / tiles;
    int64_t tile = 0;
    for (int64_t i0 = 0; i0 < ipad; i0 += kLanes<T>) {
        for (int64_t j0 = 0; j0 < jpad; j0 += kTileJ, ++tile) {
            Prefetches share;
            share.read = pf.read + std::min(pf.nread, tile * rshare);
            share.nread = std::max<int64_t>(0, std::min(rshare, pf.nread - tile * rshare));
            share.write = pf.write + std::min(pf.nwrite, tile * wshare);
            share.nwrite = std::max<int64_t>(0, std::min(wshare, pf.nwrite - tile * wshare));
            rank1_scan_tile<kExclusive>(nsteps, v + i0, b + j0, c + j0, mult, ipad, jpad,
                            state + j0 * ipad + i0, out + i0, j0 > 0, share);
        }
    }
}

}  // namespace cpu
}  // namespace mmhnet
