// The rank-1 scan on CUDA: every pass of the scans' forward and backward (scan_params.h)
//     S_k = a_k S_{k-1} + v_k (x) b_k,     out_k[i] = sum_j c_k[j] S_k[i][j]
// The dC and dB passes take their log-decay terms from the output without the step's own term
// v_k[i] (b_k . c_k) (scan_params.h), then add that term for the gradient itself.
// One block per (task, direction), one thread per state row i holding the row's J entries in
// registers; b and c rows are staged in shared memory a few steps at a time. The per-step dot
// products the backward needs (C.dC, B.dB, x.du) are reduced in a fixed order (deterministic).
// At the anchors (scan_params.h) F_n saves its state and R_n takes its inner product with it.
#include <stdexcept>
#include <string>

#include "cuda/scan_common.cuh"
#include "cuda/scan_kernels.h"

namespace mmhnet {
namespace scan_cuda {
namespace {

template <typename C>
constexpr int kStageSteps = 32 / sizeof(C);  // steps staged at once (8 float, 4 double)

template <typename S, typename C, int JMAX>
__global__ void __launch_bounds__(kMaxDim) rank1_scan_kernel(const ScanParams P, Rank1Pass pass, int dir0) {
    constexpr int T = kStageSteps<C>;
    __shared__ C sb[T][JMAX], sc[T][JMAX], sdot[T][kMaxDim];
    __shared__ C sdt[T], sdecay[T], sown[T], sanchor[kMaxDim];
    __shared__ int64_t stoken[T], starget[T];

    const int d = dir0 + blockIdx.y;
    const bool reverse = P.directions == kScanReverse || d == 1;
    const TaskView task(P, blockIdx.x, reverse);
    const int64_t n = task.len, b = task.b, h = task.head, g = task.group;
    if (n == 0) return;
    const DirectionTensors dir(P, reverse);
    const bool adjoint = pass == Rank1Pass::kGradB || pass == Rank1Pass::kGradInput;
    const bool lanes_p = pass == Rank1Pass::kForwardOut || pass == Rank1Pass::kGradInput;
    const bool exclusive = pass == Rank1Pass::kGradC || pass == Rank1Pass::kGradB;
    const int64_t I = lanes_p ? P.headdim : P.dstate, J = lanes_p ? P.dstate : P.headdim;
    const int64_t shift = P.quasi ? 1 : 0;
    const C A = at1<C>(*dir.A, h);
    const int i = threadIdx.x;
    const bool later = d == 1;  // a second direction accumulates into shared gradients
    const C* gyp = static_cast<const C*>(P.ws_gyp.ptr);

    if (pass == Rank1Pass::kForwardOut && shift && i < I) {  // quasi: the first token gets 0
        static_cast<C*>(P.ws_yhat.ptr)[d * P.batch * P.seqlen * P.nheads * P.headdim +
                                       ws_index(P, b, task.token(0), h, P.headdim, i)] = C(0);
    }

    C state[JMAX];
#pragma unroll
    for (int j = 0; j < JMAX; ++j) state[j] = C(0);

    for (int64_t s0 = 0; s0 < n; s0 += T) {
        const int ns = static_cast<int>(n - s0 < T ? n - s0 : T);
        __syncthreads();
        if (threadIdx.x < ns) {  // per-step scalars
            const int64_t s = s0 + threadIdx.x, k = adjoint ? n - 1 - s : s, tok = task.token(k);
            stoken[threadIdx.x] = tok;
            starget[threadIdx.x] = k + shift < n ? task.token(k + shift) : -1;
            sdt[threadIdx.x] = dt_eff<C>(P, *dir.dt, b, tok, h);
            if (!adjoint) {
                sdecay[threadIdx.x] = exp(sdt[threadIdx.x] * A);
            } else {  // the adjoint step k decays by a_{k+1}
                sdecay[threadIdx.x] = s == 0 ? C(1) : exp(dt_eff<C>(P, *dir.dt, b, task.token(k + 1), h) * A);
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < ns * JMAX; e += blockDim.x) {  // b and c rows
            const int kk = e / JMAX, j = e % JMAX;
            C bv = C(0), cv = C(0);
            if (j < J) {
                const int64_t tok = stoken[kk], target = starget[kk];
                switch (pass) {
                    case Rank1Pass::kForwardOut:  // b = B, c = C
                        bv = to_compute<C>(*at4<const S>(*dir.B, b, tok, g, j));
                        cv = to_compute<C>(*at4<const S>(*dir.C, b, tok, g, j));
                        break;
                    case Rank1Pass::kGradInput:  // b = C, c = B
                        bv = to_compute<C>(*at4<const S>(*dir.C, b, tok, g, j));
                        cv = to_compute<C>(*at4<const S>(*dir.B, b, tok, g, j));
                        break;
                    case Rank1Pass::kGradC:  // b = u, c = gyhat
                        bv = sdt[kk] * to_compute<C>(*at4<const S>(P.x, b, tok, h, j));
                        cv = target >= 0 ? gyp[ws_index(P, b, target, h, P.headdim, j)] : C(0);
                        break;
                    case Rank1Pass::kGradB:  // b = gyhat, c = u
                        bv = target >= 0 ? gyp[ws_index(P, b, target, h, P.headdim, j)] : C(0);
                        cv = sdt[kk] * to_compute<C>(*at4<const S>(P.x, b, tok, h, j));
                        break;
                }
            }
            sb[kk][j] = bv;
            sc[kk][j] = cv;
        }
        __syncthreads();
        if (exclusive) {  // each step's own coefficient b_k . c_k, summed in a fixed order
            if (threadIdx.x < ns) {
                C own = C(0);
                for (int j = 0; j < JMAX; ++j) own += sb[threadIdx.x][j] * sc[threadIdx.x][j];
                sown[threadIdx.x] = own;
            }
            __syncthreads();
        }
        for (int kk = 0; kk < ns; ++kk) {
            if (i >= I) break;
            const int64_t tok = stoken[kk], target = starget[kk];
            C v;
            switch (pass) {
                case Rank1Pass::kForwardOut: v = sdt[kk] * to_compute<C>(*at4<const S>(P.x, b, tok, h, i)); break;
                case Rank1Pass::kGradC: v = to_compute<C>(*at4<const S>(*dir.B, b, tok, g, i)); break;
                case Rank1Pass::kGradB: v = to_compute<C>(*at4<const S>(*dir.C, b, tok, g, i)); break;
                default: v = target >= 0 ? gyp[ws_index(P, b, target, h, P.headdim, i)] : C(0); break;
            }
            const C a = sdecay[kk];
            C acc = C(0);  // exclusive: without the step's own term
            if (exclusive) {
#pragma unroll
                for (int j = 0; j < JMAX; ++j) {
                    const C decayed = a * state[j];
                    acc += sc[kk][j] * decayed;
                    state[j] = decayed + v * sb[kk][j];
                }
            } else {
#pragma unroll
                for (int j = 0; j < JMAX; ++j) {
                    state[j] = a * state[j] + v * sb[kk][j];
                    acc += sc[kk][j] * state[j];
                }
            }
            switch (pass) {
                case Rank1Pass::kForwardOut:
                    if (target >= 0) {
                        static_cast<C*>(P.ws_yhat.ptr)[d * P.batch * P.seqlen * P.nheads * P.headdim +
                                                       ws_index(P, b, target, h, P.headdim, i)] = acc;
                    }
                    break;
                case Rank1Pass::kGradC: {
                    const bool own = reverse && P.C_rev.present();
                    C* dst = at4<C>(own ? P.dC_rev_heads : P.dC_heads, b, tok, h, i);
                    const C grad = acc + v * sown[kk];
                    *dst = later && !own ? *dst + grad : grad;
                    sdot[kk][i] = acc * to_compute<C>(*at4<const S>(*dir.C, b, tok, g, i));
                    const int64_t slot = task.anchor_slot(P, s0 + kk + 1);  // state = h_{m-1}
                    if (slot >= 0) {
                        C* saved = anchor_row<C>(P, slot, h, i);
#pragma unroll
                        for (int j = 0; j < JMAX; ++j) {
                            if (j < J) saved[j] = state[j];
                        }
                    }
                    break;
                }
                case Rank1Pass::kGradB: {
                    const bool own = reverse && P.B_rev.present();
                    C* dst = at4<C>(own ? P.dB_rev_heads : P.dB_heads, b, tok, h, i);
                    const C grad = acc + v * sown[kk];
                    *dst = later && !own ? *dst + grad : grad;
                    sdot[kk][i] = acc * to_compute<C>(*at4<const S>(*dir.B, b, tok, g, i));
                    const int64_t slot = task.anchor_slot(P, n - 1 - (s0 + kk));  // state = dS_m
                    if (slot >= 0) {
                        const C* saved = anchor_row<C>(P, slot, h, i);
                        C part = C(0);
#pragma unroll
                        for (int j = 0; j < JMAX; ++j) {
                            if (j < J) part += state[j] * saved[j];
                        }
                        sanchor[i] = part;
                    }
                    break;
                }
                case Rank1Pass::kGradInput: {
                    sdot[kk][i] = acc * to_compute<C>(*at4<const S>(P.x, b, tok, h, i));
                    C dx = sdt[kk] * acc;
                    if (!later && P.D.present()) {
                        const C Dv = P.d_per_channel ? static_cast<const C*>(P.D.ptr)[h * P.D.stride[0] + i * P.D.stride[1]]
                                                     : at1<C>(P.D, h);
                        dx += Dv * gyp[ws_index(P, b, tok, h, P.headdim, i)];
                    }
                    if (P.ws_dx.present()) {
                        C* dst = static_cast<C*>(P.ws_dx.ptr) + ws_index(P, b, tok, h, P.headdim, i);
                        *dst = later ? *dst + dx : dx;
                    } else {
                        C* dst = at4<C>(P.dx, b, tok, h, i);  // storage is the compute dtype
                        *dst = later ? *dst + dx : dx;
                    }
                    break;
                }
            }
        }
        if (pass == Rank1Pass::kForwardOut) continue;
        __syncthreads();
        if (threadIdx.x < ns) {  // fixed-order sums of the per-step dot products
            C sum = C(0);
            for (int64_t r = 0; r < I; ++r) sum += sdot[threadIdx.x][r];
            const int64_t idx = d * P.batch * P.seqlen * P.nheads + (b * P.seqlen + stoken[threadIdx.x]) * P.nheads + h;
            if (pass == Rank1Pass::kGradC) static_cast<C*>(P.ws_dlog.ptr)[idx] = sum;
            if (pass == Rank1Pass::kGradB) static_cast<C*>(P.ws_dlog.ptr)[idx] -= sum;
            if (pass == Rank1Pass::kGradInput) static_cast<C*>(P.ws_xgu.ptr)[idx] = sum;
        }
        if (pass == Rank1Pass::kGradB && threadIdx.x == 0) {  // g(log a_m) = a_m <dS_m, S_{m-1}>
            for (int kk = 0; kk < ns; ++kk) {
                const int64_t m = n - 1 - (s0 + kk), slot = task.anchor_slot(P, m);
                if (slot < 0) continue;
                C sum = C(0);
                for (int64_t r = 0; r < I; ++r) sum += sanchor[r];
                const C a_m = exp(dt_eff<C>(P, *dir.dt, b, task.token(m), h) * A);
                static_cast<C*>(P.ws_anchor_glog.ptr)[(d * P.anchor_slots() + slot) * P.nheads + h] = a_m * sum;
            }
        }
    }
}

template <typename S, typename C>
void launch_typed(const ScanParams& P, Rank1Pass pass, int dir0, int ndirs, cudaStream_t stream) {
    const bool lanes_p = pass == Rank1Pass::kForwardOut || pass == Rank1Pass::kGradInput;
    const int64_t I = lanes_p ? P.headdim : P.dstate, J = lanes_p ? P.dstate : P.headdim;
    if (I == 0) return;  // dstate 0: no dB/dC, and ws_dlog stays zero
    const dim3 grid(static_cast<unsigned>(P.ntasks()), static_cast<unsigned>(ndirs));
    const dim3 block(static_cast<unsigned>((I + 31) / 32 * 32));
    if (J <= 32) {
        rank1_scan_kernel<S, C, 32><<<grid, block, 0, stream>>>(P, pass, dir0);
    } else if (J <= 64) {
        rank1_scan_kernel<S, C, 64><<<grid, block, 0, stream>>>(P, pass, dir0);
    } else if (J <= 128) {
        rank1_scan_kernel<S, C, 128><<<grid, block, 0, stream>>>(P, pass, dir0);
    } else {
        rank1_scan_kernel<S, C, 256><<<grid, block, 0, stream>>>(P, pass, dir0);
    }
    check_launch("rank-1 scan");
}

}  // namespace

void check_launch(const char* what) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        throw std::runtime_error(std::string("cuda scan: ") + what + " launch failed: " + cudaGetErrorString(err));
    }
}

void launch_rank1(const ScanParams& P, Rank1Pass pass, int dir0, int ndirs, cudaStream_t stream) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: launch_typed<float, float>(P, pass, dir0, ndirs, stream); break;
        case ScanDtype::kFloat64: launch_typed<double, double>(P, pass, dir0, ndirs, stream); break;
        case ScanDtype::kFloat16: launch_typed<__half, float>(P, pass, dir0, ndirs, stream); break;
        case ScanDtype::kBFloat16: launch_typed<__nv_bfloat16, float>(P, pass, dir0, ndirs, stream); break;
    }
}

}  // namespace scan_cuda
}  // namespace mmhnet
