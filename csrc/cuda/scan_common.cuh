// Device helpers shared by the CUDA scan kernels (maths and layout: scan_params.h).
// S is the storage dtype of the big tensors, C the compute dtype (double for double storage,
// float otherwise). Everything is indexed in int64.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "scan_params.h"

namespace mmhnet {
namespace scan_cuda {

template <typename C, typename S>
__device__ __forceinline__ C to_compute(S v) {
    return C(v);
}
template <>
__device__ __forceinline__ float to_compute<float, __half>(__half v) {
    return __half2float(v);
}
template <>
__device__ __forceinline__ float to_compute<float, __nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename S, typename C>
__device__ __forceinline__ S to_storage(C v) {
    return S(v);
}
template <>
__device__ __forceinline__ __half to_storage<__half, float>(float v) {
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 to_storage<__nv_bfloat16, float>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename C>
__device__ __forceinline__ C softplus(C v) {  // as torch: beta 1, threshold 20
    return v > C(20) ? v : log1p(exp(v));
}
template <typename C>
__device__ __forceinline__ C sigmoid(C v) {
    return C(1) / (C(1) + exp(-v));
}

// Element (b, t, head, i) of a (b, l, h, inner) tensor, or (b, t, head) of a (b, l, h) one.
template <typename T>
__device__ __forceinline__ T* at4(const ScanTensor& t, int64_t b, int64_t tok, int64_t head, int64_t i) {
    return static_cast<T*>(t.ptr) + b * t.stride[0] + tok * t.stride[1] + head * t.stride[2] + i * t.stride[3];
}
template <typename T>
__device__ __forceinline__ T* at3(const ScanTensor& t, int64_t b, int64_t tok, int64_t head) {
    return static_cast<T*>(t.ptr) + b * t.stride[0] + tok * t.stride[1] + head * t.stride[2];
}
template <typename T>
__device__ __forceinline__ T at1(const ScanTensor& t, int64_t i) {
    return static_cast<const T*>(t.ptr)[i * t.stride[0]];
}

// One (batch row, sequence, head) task and one direction of it.
struct TaskView {
    int64_t b, row, head, group, begin, len;
    bool reverse;

    __device__ TaskView(const ScanParams& P, int64_t task, bool rev) : reverse(rev) {
        head = task % P.nheads;
        row = task / P.nheads;
        const int64_t seq = row % P.nseq;
        b = row / P.nseq;
        group = head / (P.nheads / P.ngroups);
        begin = P.cu_seqlens ? P.cu_seqlens[seq] : 0;
        len = P.cu_seqlens ? P.cu_seqlens[seq + 1] - begin : P.seqlen;
    }

    // token of processing step k of this direction
    __device__ int64_t token(int64_t k) const { return reverse ? begin + len - 1 - k : begin + k; }

    // The anchor slot of processing step m (scan_params.h), or -1 if m is not an anchor.
    __device__ int64_t anchor_slot(const ScanParams& P, int64_t m) const {
        const int64_t every = P.anchor_steps();
        if (m <= 0 || m >= len || m % every != 0) return -1;
        return (b * P.seqlen + begin) / every + m / every - 1;
    }
};

// The parameters one direction reads (the reverse ones where given).
struct DirectionTensors {
    const ScanTensor *dt, *A, *B, *C;

    __device__ DirectionTensors(const ScanParams& P, bool rev) {
        dt = rev && P.dt_rev.present() ? &P.dt_rev : &P.dt;
        A = rev && P.A_rev.present() ? &P.A_rev : &P.A;
        B = rev && P.B_rev.present() ? &P.B_rev : &P.B;
        C = rev && P.C_rev.present() ? &P.C_rev : &P.C;
    }
};

// dt' at token t for head h (bias and softplus applied), and the raw value.
template <typename C>
__device__ __forceinline__ C dt_raw(const ScanParams& P, const ScanTensor& dt, int64_t b, int64_t t, int64_t h) {
    C v = *at3<const C>(dt, b, t, h);
    if (P.dt_bias.present()) v += at1<C>(P.dt_bias, h);
    return v;
}
template <typename C>
__device__ __forceinline__ C dt_eff(const ScanParams& P, const ScanTensor& dt, int64_t b, int64_t t, int64_t h) {
    const C v = dt_raw<C>(P, dt, b, t, h);
    return P.dt_softplus ? softplus(v) : v;
}

// Flat index of a contiguous (b, l, h, inner) workspace entry.
__device__ __forceinline__ int64_t ws_index(const ScanParams& P, int64_t b, int64_t t, int64_t h, int64_t inner,
                                            int64_t i) {
    return ((b * P.seqlen + t) * P.nheads + h) * inner + i;
}

// Row i of the state saved at an anchor slot for head h: (slot, h, dstate, headdim) layout.
template <typename C>
__device__ __forceinline__ C* anchor_row(const ScanParams& P, int64_t slot, int64_t h, int64_t i) {
    return static_cast<C*>(P.ws_anchor_state.ptr) + ((slot * P.nheads + h) * P.dstate + i) * P.headdim;
}

inline int directions_count(const ScanParams& P) { return P.directions == kScanBoth ? 2 : 1; }

}  // namespace scan_cuda
}  // namespace mmhnet
