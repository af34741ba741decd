// Forward of the fused bidirectional selective scan on CUDA (maths: scan_params.h): one launch
// runs both directions (one block per task and direction, concurrently), each writing its
// yhat into ws_yhat; a second, elementwise kernel adds them, D x and the gate into y.
#include "cuda/scan_common.cuh"
#include "cuda/scan_kernels.h"

namespace mmhnet {
namespace scan_cuda {
namespace {

template <typename S, typename C>
__global__ void combine_kernel(const ScanParams P, int ndirs) {
    const int64_t total = P.batch * P.seqlen * P.nheads * P.headdim;
    const C* yhat = static_cast<const C*>(P.ws_yhat.ptr);
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
         e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t p = e % P.headdim, h = (e / P.headdim) % P.nheads;
        const int64_t t = (e / (P.headdim * P.nheads)) % P.seqlen, b = e / (P.headdim * P.nheads * P.seqlen);
        C y = C(0);
        for (int d = 0; d < ndirs; ++d) y += yhat[d * total + e];
        if (P.D.present()) {
            const C Dv = P.d_per_channel ? static_cast<const C*>(P.D.ptr)[h * P.D.stride[0] + p * P.D.stride[1]]
                                         : at1<C>(P.D, h);
            y += Dv * to_compute<C>(*at4<const S>(P.x, b, t, h, p));
        }
        if (P.z.present()) {
            const C z = to_compute<C>(*at4<const S>(P.z, b, t, h, p));
            y *= z * sigmoid(z);
        }
        *at4<S>(P.y, b, t, h, p) = to_storage<S>(y);
    }
}

template <typename S, typename C>
void combine(const ScanParams& P, cudaStream_t stream) {
    const int64_t total = P.batch * P.seqlen * P.nheads * P.headdim;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, int64_t(1) << 20);
    combine_kernel<S, C><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(P, directions_count(P));
    check_launch("combine");
}

}  // namespace

void scan_forward(const ScanParams& P, cudaStream_t stream) {
    launch_rank1(P, Rank1Pass::kForwardOut, 0, directions_count(P), stream);
    switch (P.dtype) {
        case ScanDtype::kFloat32: combine<float, float>(P, stream); break;
        case ScanDtype::kFloat64: combine<double, double>(P, stream); break;
        case ScanDtype::kFloat16: combine<__half, float>(P, stream); break;
        case ScanDtype::kBFloat16: combine<__nv_bfloat16, float>(P, stream); break;
    }
}

}  // namespace scan_cuda
}  // namespace mmhnet
