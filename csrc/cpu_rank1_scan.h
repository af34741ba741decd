// The one inner loop of every CPU scan pass (scan_params.h): a register-tiled rank-1 scan
//     S_k = m_k S_{k-1} + v_k (x) b_k,     out_k[i] = sum_j c_k[j] S_k[i][j]
// over a block of steps. The passes keep their state in "rescaled" form (cpu_scan_common.h), so
// the decay is folded into v, c and the output scale and appears here only as the rare
// multiplier m_k != 1; a step costs two FMAs per state element.
//
// Layout: v and out rows hold I (lanes) elements, b and c rows J (broadcast) elements, all rows
// padded with zeros to `ipad` / `jpad`, multiples of kPad. The state is stored S[j][i]. A tile
// keeps one vector of lanes times kTileJ state columns in registers across all steps of the
// block; b_k[j] and c_k[j] are broadcast from memory.
#pragma once

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

// One tile: lanes [i0, i0 + kLanes) x columns [j0, j0 + kTileJ); pointers already offset.
template <typename T>
inline void rank1_scan_tile(int64_t nsteps, const T* v, const T* b, const T* c, const T* mult,
                            int64_t ipad, int64_t jpad, T* state, T* out, bool accumulate) {
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
            s[j] += vk * bk[j];
            acc[j % kAccumulators] += s[j] * ck[j];
        }
#pragma GCC unroll 4
        for (int a = 1; a < kAccumulators; ++a) acc[0] += acc[a];
        T* ok = out + k * ipad;
        vstore(ok, accumulate ? acc[0] + vload(ok) : acc[0]);
    }
#pragma GCC unroll 16
    for (int j = 0; j < kTileJ; ++j) vstore(state + j * ipad, s[j]);
}

// All tiles of a block of steps. state: jpad x ipad; out: nsteps x ipad (overwritten).
template <typename T>
void rank1_scan_block(int64_t nsteps, const T* v, const T* b, const T* c, const T* mult,
                      int64_t ipad, int64_t jpad, T* state, T* out) {
    if (jpad == 0) {
        std::memset(out, 0, sizeof(T) * nsteps * ipad);
        return;
    }
    for (int64_t i0 = 0; i0 < ipad; i0 += kLanes<T>) {
        for (int64_t j0 = 0; j0 < jpad; j0 += kTileJ) {
            rank1_scan_tile(nsteps, v + i0, b + j0, c + j0, mult, ipad, jpad,
                            state + j0 * ipad + i0, out + i0, j0 > 0);
        }
    }
}

}  // namespace cpu
}  // namespace mmhnet
