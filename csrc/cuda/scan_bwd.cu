// Backward of the fused bidirectional selective scan on CUDA (maths: scan_params.h):
//   1. (with z) the per-direction outputs are recomputed; gyp = dy silu(z) and dz;
//   2. dD partial sums per (row, head), threads over headdim, summing tokens in order (double);
//   3. per direction, in order: F_n -> dC, R_n -> dB, R_p -> dx (rank-1 scans), the second
//      direction adding into the gradients it shares with the first;
//   4. a sweep per task turns g(log a) = reverse cumsum of (C.dC - B.dB), made exact at the
//      anchors and the first step (log_decay_sweep.h), into ddt and dA (in double);
//   5. (half storage) dx, accumulated in float, is cast to the storage dtype.
#include "cuda/scan_common.cuh"
#include "cuda/scan_kernels.h"
#include "log_decay_sweep.h"

namespace mmhnet {
namespace scan_cuda {
namespace {

int64_t elementwise_blocks(int64_t total) { return std::min<int64_t>((total + 255) / 256, int64_t(1) << 20); }

template <typename S, typename C>
__global__ void output_grad_kernel(const ScanParams P, int ndirs) {
    const int64_t total = P.batch * P.seqlen * P.nheads * P.headdim;
    const C* yhat = static_cast<const C*>(P.ws_yhat.ptr);
    C* gyp = static_cast<C*>(P.ws_gyp.ptr);
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
         e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t p = e % P.headdim, h = (e / P.headdim) % P.nheads;
        const int64_t t = (e / (P.headdim * P.nheads)) % P.seqlen, b = e / (P.headdim * P.nheads * P.seqlen);
        const C dy = to_compute<C>(*at4<const S>(P.dy, b, t, h, p));
        if (!P.z.present()) {
            gyp[e] = dy;
            continue;
        }
        C yp = C(0);  // the pre-gate output
        for (int d = 0; d < ndirs; ++d) yp += yhat[d * total + e];
        if (P.D.present()) {
            const C Dv = P.d_per_channel ? static_cast<const C*>(P.D.ptr)[h * P.D.stride[0] + p * P.D.stride[1]]
                                         : at1<C>(P.D, h);
            yp += Dv * to_compute<C>(*at4<const S>(P.x, b, t, h, p));
        }
        const C z = to_compute<C>(*at4<const S>(P.z, b, t, h, p));
        const C s = sigmoid(z);
        *at4<S>(P.dz, b, t, h, p) = to_storage<S>(dy * yp * s * (C(1) + z * (C(1) - s)));
        gyp[e] = dy * z * s;
    }
}

// dD_part[row, h, p] = sum over the sequence's tokens of gyp * x; block = (row, head).
template <typename S, typename C>
__global__ void dD_kernel(const ScanParams P) {
    const TaskView task(P, blockIdx.x, false);
    const int64_t p = threadIdx.x;
    if (p >= P.headdim) return;
    const C* gyp = static_cast<const C*>(P.ws_gyp.ptr);
    double acc = 0.0;  // a sum over the whole sequence
    for (int64_t t = task.begin; t < task.begin + task.len; ++t) {
        acc += gyp[ws_index(P, task.b, t, task.head, P.headdim, p)] *
               to_compute<C>(*at4<const S>(P.x, task.b, t, task.head, p));
    }
    static_cast<C*>(P.dD_part.ptr)[task.row * P.dD_part.stride[0] + task.head * P.dD_part.stride[1] +
                                   p * P.dD_part.stride[2]] = C(acc);
}

// One thread per task: per direction, g(log a_k) = sum_{k' >= k} dlog_k' in processing order,
// made exact at each anchor from the value the R_n pass computed there (sweep_log_decay), then
// ddt (through softplus) and the dA partial sum.
template <typename C>
__global__ void sweep_kernel(const ScanParams P, int ndirs) {
    const int64_t task_id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (task_id >= P.ntasks()) return;
    const int64_t plane = P.batch * P.seqlen * P.nheads;
    const C* dlog = static_cast<const C*>(P.ws_dlog.ptr);
    const C* xgu = static_cast<const C*>(P.ws_xgu.ptr);
    const C* anchor_glog = static_cast<const C*>(P.ws_anchor_glog.ptr);
    for (int d = 0; d < ndirs; ++d) {
        const bool reverse = P.directions == kScanReverse || d == 1;
        const TaskView task(P, task_id, reverse);
        const DirectionTensors dir(P, reverse);
        const int64_t b = task.b, h = task.head;
        const C A = at1<C>(*dir.A, h);
        const bool own_dt = reverse && P.dt_rev.present(), own_A = reverse && P.A_rev.present();
        const ScanTensor& ddt = own_dt ? P.ddt_rev : P.ddt;
        double dA = 0.0;
        const auto index = [&](int64_t k) { return d * plane + (b * P.seqlen + task.token(k)) * P.nheads + h; };
        const auto at_anchor = [&](int64_t k, double& value) {
            const int64_t slot = P.dstate > 0 ? task.anchor_slot(P, k) : -1;  // none without a state
            if (slot >= 0) value = anchor_glog[(d * P.anchor_slots() + slot) * P.nheads + h];
            return slot >= 0;
        };
        sweep_log_decay(task.len, P.quasi, [&](int64_t k) { return double(dlog[index(k)]); }, at_anchor,
                        [&](int64_t k, double glog) {
            const int64_t t = task.token(k), idx = index(k);
            const C raw = dt_raw<C>(P, *dir.dt, b, t, h);
            const C eff = P.dt_softplus ? softplus(raw) : raw;
            dA += eff * glog;
            const C grad_eff = !P.dt_softplus ? C(1) : (raw > C(20) ? C(1) : sigmoid(raw));
            const C gdt = (A * C(glog) + xgu[idx]) * grad_eff;
            C* dst = at3<C>(ddt, b, t, h);
            *dst = d == 1 && !own_dt ? *dst + gdt : gdt;
        });
        const ScanTensor& part = own_A ? P.dA_rev_part : P.dA_part;
        C* dst = static_cast<C*>(part.ptr) + task.row * part.stride[0] + h * part.stride[1];
        *dst = d == 1 && !own_A ? *dst + C(dA) : C(dA);
    }
}

template <typename S, typename C>
__global__ void store_dx_kernel(const ScanParams P) {
    const int64_t total = P.batch * P.seqlen * P.nheads * P.headdim;
    const C* src = static_cast<const C*>(P.ws_dx.ptr);
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
         e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t p = e % P.headdim, h = (e / P.headdim) % P.nheads;
        const int64_t t = (e / (P.headdim * P.nheads)) % P.seqlen, b = e / (P.headdim * P.nheads * P.seqlen);
        *at4<S>(P.dx, b, t, h, p) = to_storage<S>(src[e]);
    }
}

template <typename S, typename C>
void backward_typed(const ScanParams& P, cudaStream_t stream) {
    const int ndirs = directions_count(P);
    const int64_t total = P.batch * P.seqlen * P.nheads * P.headdim;
    const auto blocks = static_cast<unsigned>(elementwise_blocks(total));
    if (P.z.present()) launch_rank1(P, Rank1Pass::kForwardOut, 0, ndirs, stream);
    output_grad_kernel<S, C><<<blocks, 256, 0, stream>>>(P, ndirs);
    check_launch("output gradient");
    if (P.D.present()) {
        const unsigned threads = static_cast<unsigned>((P.headdim + 31) / 32 * 32);
        dD_kernel<S, C><<<static_cast<unsigned>(P.ntasks()), threads, 0, stream>>>(P);
        check_launch("dD");
    }
    for (int d = 0; d < ndirs; ++d) {
        launch_rank1(P, Rank1Pass::kGradC, d, 1, stream);
        launch_rank1(P, Rank1Pass::kGradB, d, 1, stream);
        launch_rank1(P, Rank1Pass::kGradInput, d, 1, stream);
    }
    sweep_kernel<C><<<static_cast<unsigned>((P.ntasks() + 127) / 128), 128, 0, stream>>>(P, ndirs);
    check_launch("decay gradient sweep");
    if (P.ws_dx.present()) {
        store_dx_kernel<S, C><<<blocks, 256, 0, stream>>>(P);
        check_launch("dx store");
    }
}

}  // namespace

void scan_backward(const ScanParams& P, cudaStream_t stream) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: backward_typed<float, float>(P, stream); break;
        case ScanDtype::kFloat64: backward_typed<double, double>(P, stream); break;
        case ScanDtype::kFloat16: backward_typed<__half, float>(P, stream); break;
        case ScanDtype::kBFloat16: backward_typed<__nv_bfloat16, float>(P, stream); break;
    }
}

}  // namespace scan_cuda
}  // namespace mmhnet
