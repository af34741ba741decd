// Views of the scan operands for the CPU kernels: rows of a tensor at one batch row and head,
// the tensors one direction reads, the processing order of a direction, and B/C rows gathered
// once per block for all heads of a unit.
#pragma once

#include <cstdint>

#include "cpu_rank1_scan.h"
#include "cpu_scratch.h"
#include "cpu_scan_units.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

// Rows of a (b, l, heads|groups, inner) tensor at one batch row and head (or group): one row
// per token. For a (b, l, h) tensor `inner_stride` is 0 and a row is one element.
template <typename T>
struct Rows {
    T* base = nullptr;
    int64_t token_stride = 0, inner_stride = 0;

    Rows() = default;
    Rows(const ScanTensor& t, int64_t b, int64_t head)
        : base(t.ptr ? static_cast<T*>(t.ptr) + b * t.stride[0] + head * t.stride[2] : nullptr),
          token_stride(t.stride[1]), inner_stride(t.stride[3]) {}
    static Rows of_bl(const ScanTensor& t, int64_t b, int64_t head) {  // (b, l, h) tensors
        Rows r;
        if (t.ptr) {
            r.base = static_cast<T*>(t.ptr) + b * t.stride[0] + head * t.stride[2];
            r.token_stride = t.stride[1];
        }
        return r;
    }

    bool present() const { return base != nullptr; }
    T* row(int64_t t) const { return base + t * token_stride; }
    T& at(int64_t t) const { return base[t * token_stride]; }
};

// dst[i] = scale * src(t, i) for i < count, zeros up to `pad`.
template <typename T>
inline void gather_row(T* dst, const Rows<T>& src, int64_t t, int64_t count, int64_t pad, T scale) {
    const T* s = src.row(t);
    if (src.inner_stride == 1) {
        for (int64_t i = 0; i < count; ++i) dst[i] = scale * s[i];
    } else {
        for (int64_t i = 0; i < count; ++i) dst[i] = scale * s[i * src.inner_stride];
    }
    for (int64_t i = count; i < pad; ++i) dst[i] = T(0);
}

// The tensors one direction reads for one head (the reverse ones where given).
template <typename T>
struct HeadParams {
    Rows<T> x, dt, B, C;
    double A, dt_bias;
    int64_t group;

    HeadParams(const ScanParams& P, int64_t b, int64_t head, bool rev) {
        group = P.group_of(head);
        x = Rows<T>(P.x, b, head);
        dt = Rows<T>::of_bl(rev && P.dt_rev.present() ? P.dt_rev : P.dt, b, head);
        B = Rows<T>(rev && P.B_rev.present() ? P.B_rev : P.B, b, group);
        C = Rows<T>(rev && P.C_rev.present() ? P.C_rev : P.C, b, group);
        const ScanTensor& a = rev && P.A_rev.present() ? P.A_rev : P.A;
        A = static_cast<const T*>(a.ptr)[head * a.stride[0]];
        dt_bias = P.dt_bias.present()
                      ? static_cast<const T*>(P.dt_bias.ptr)[head * P.dt_bias.stride[0]]
                      : 0.0;
    }
};

// Processing order of one direction over a unit's tokens: step k <-> time index i <-> token.
struct Order {
    bool reverse;
    int64_t begin, len;

    int64_t index(int64_t k) const { return reverse ? len - 1 - k : k; }
    int64_t token(int64_t k) const { return begin + index(k); }
};

constexpr int64_t kBlockSteps = 64;  // steps per block: one block's rows stay in L2

// Rows of B and C for one block, gathered once for all heads of a unit that read them.
template <typename T>
struct SharedRows {
    int64_t g0 = 0, npd = 0;
    T *b = nullptr, *c = nullptr;

    void gather(const ScanParams& P, const Unit& u, const Order& o, bool rev, int64_t k0, int64_t nb,
                Buffer<T>& bbuf, Buffer<T>& cbuf) {
        g0 = P.group_of(u.h0);
        const int64_t ng = P.group_of(u.h0 + u.nh - 1) - g0 + 1;
        npd = padded(P.dstate);
        b = grown(bbuf, ng * kBlockSteps * npd);
        c = grown(cbuf, ng * kBlockSteps * npd);
        for (int64_t gl = 0; gl < ng; ++gl) {
            const HeadParams<T> hp(P, u.b, (g0 + gl) * (P.nheads / P.ngroups), rev);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t t = o.token(k0 + kk);
                gather_row(b + (gl * kBlockSteps + kk) * npd, hp.B, t, P.dstate, npd, T(1));
                gather_row(c + (gl * kBlockSteps + kk) * npd, hp.C, t, P.dstate, npd, T(1));
            }
        }
    }

    const T* b_of(int64_t group) const { return b + (group - g0) * kBlockSteps * npd; }
    const T* c_of(int64_t group) const { return c + (group - g0) * kBlockSteps * npd; }
};

}  // namespace cpu
}  // namespace mmhnet
