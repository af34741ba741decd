// mmhnet._C_cuda.bi_scan_fwd / bi_scan_bwd: the CUDA selective scans (arguments: scan_bind.h,
// plus the CUDA stream as an integer). Kernels are enqueued on that stream; nothing syncs.
#include <stdexcept>
#include <string>

#include "cuda/scan_kernels.h"
#include "registry.h"
#include "scan_bind.h"

namespace py = pybind11;

namespace mmhnet {
namespace {

ScanParams cuda_params(const std::string& dtype, const py::tuple& sizes, const py::dict& tensors,
                       bool dt_softplus, int directions, bool quasi) {
    ScanParams P = scan_params_from_python(dtype, sizes, tensors, dt_softplus, directions, quasi);
    if (P.headdim > scan_cuda::kMaxDim || P.dstate > scan_cuda::kMaxDim) {
        throw std::invalid_argument("cuda scan: headdim and dstate must be at most " +
                                    std::to_string(scan_cuda::kMaxDim));
    }
    if (P.ntasks() > 0x7fffffff) throw std::invalid_argument("cuda scan: batch * nseq * nheads too large");
    return P;
}

void require_workspace(const ScanParams& P, bool backward) {
    if (!backward || P.z.present()) require_tensors(P, {{"ws_yhat", &P.ws_yhat}});
    if (!backward) return;
    require_tensors(P, {{"ws_gyp", &P.ws_gyp}, {"ws_dlog", &P.ws_dlog}, {"ws_xgu", &P.ws_xgu},
                        {"ws_anchor_state", &P.ws_anchor_state}, {"ws_anchor_glog", &P.ws_anchor_glog}});
    const bool half = P.dtype == ScanDtype::kFloat16 || P.dtype == ScanDtype::kBFloat16;
    if (half) require_tensors(P, {{"ws_dx", &P.ws_dx}});
}

}  // namespace

void register_scan_cuda(py::module_& m) {
    m.def(
        "bi_scan_fwd",
        [](const std::string& dtype, const py::tuple& sizes, const py::dict& tensors, bool dt_softplus,
           int directions, bool quasi, uintptr_t stream) {
            const ScanParams P = cuda_params(dtype, sizes, tensors, dt_softplus, directions, quasi);
            check_forward_tensors(P);
            require_workspace(P, false);
            py::gil_scoped_release release;
            scan_cuda::scan_forward(P, reinterpret_cast<cudaStream_t>(stream));
        },
        py::arg("dtype"), py::arg("sizes"), py::arg("tensors"), py::arg("dt_softplus"),
        py::arg("directions"), py::arg("quasi"), py::arg("stream"),
        "Fused (bi)directional selective scan forward (see csrc/scan_params.h).");
    m.def(
        "bi_scan_bwd",
        [](const std::string& dtype, const py::tuple& sizes, const py::dict& tensors, bool dt_softplus,
           int directions, bool quasi, uintptr_t stream) {
            const ScanParams P = cuda_params(dtype, sizes, tensors, dt_softplus, directions, quasi);
            check_backward_tensors(P);
            require_workspace(P, true);
            py::gil_scoped_release release;
            scan_cuda::scan_backward(P, reinterpret_cast<cudaStream_t>(stream));
        },
        py::arg("dtype"), py::arg("sizes"), py::arg("tensors"), py::arg("dt_softplus"),
        py::arg("directions"), py::arg("quasi"), py::arg("stream"),
        "Gradients of the fused (bi)directional selective scan (see csrc/scan_params.h).");
    m.def(
        "bi_scan_anchor_numel",
        [](int64_t batch, int64_t seqlen, int64_t nheads, int64_t headdim, int64_t dstate, int ndirs) {
            ScanParams P;
            P.batch = batch;
            P.seqlen = seqlen;
            P.nheads = nheads;
            P.headdim = headdim;
            P.dstate = dstate;
            return py::make_tuple(P.anchor_slots() * nheads * dstate * headdim, ndirs * P.anchor_slots() * nheads);
        },
        py::arg("batch"), py::arg("seqlen"), py::arg("nheads"), py::arg("headdim"), py::arg("dstate"),
        py::arg("ndirs"),
        "Elements of the backward's ws_anchor_state and ws_anchor_glog workspaces.");
}

}  // namespace mmhnet
