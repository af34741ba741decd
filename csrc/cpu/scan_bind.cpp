// mmhnet._C.bi_scan_fwd / bi_scan_bwd: the CPU selective scans (arguments: scan_bind.h).
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_scan.h"
#include "registry.h"
#include "scan_bind.h"

namespace py = pybind11;

namespace mmhnet {
namespace {

// Offsets must start at 0, never decrease and end at seqlen: a bad one would read out of bounds.
void check_cu_seqlens(const ScanParams& P) {
    if (!P.cu_seqlens) return;
    const int32_t* cu = P.cu_seqlens;
    bool ok = cu[0] == 0 && cu[P.nseq] == P.seqlen;
    for (int64_t s = 0; s < P.nseq; ++s) ok = ok && cu[s] <= cu[s + 1];
    if (!ok) throw std::invalid_argument("cpu scan: cu_seqlens must rise from 0 to seqlen");
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

ScanParams cpu_params(const std::string& dtype, const py::tuple& sizes, const py::dict& tensors,
                      bool dt_softplus, int directions, bool quasi) {
    ScanParams P = scan_params_from_python(dtype, sizes, tensors, dt_softplus, directions, quasi);
    if (P.dtype != ScanDtype::kFloat32 && P.dtype != ScanDtype::kFloat64) {
        throw std::invalid_argument("cpu scan: dtype must be float32 or float64, got " + dtype);
    }
    check_cu_seqlens(P);
    return P;
}

}  // namespace

void register_scan_cpu(py::module_& m) {
    m.def(
        "bi_scan_fwd",
        [](const std::string& dtype, const py::tuple& sizes, const py::dict& tensors,
           bool dt_softplus, int directions, bool quasi) {
            const ScanParams P = cpu_params(dtype, sizes, tensors, dt_softplus, directions, quasi);
            check_forward_tensors(P);
            py::gil_scoped_release release;
            cpu::scan_forward(P, max_threads());
        },
        py::arg("dtype"), py::arg("sizes"), py::arg("tensors"), py::arg("dt_softplus"),
        py::arg("directions"), py::arg("quasi"),
        "Fused (bi)directional selective scan forward (see csrc/scan_params.h).");
    m.def(
        "bi_scan_bwd",
        [](const std::string& dtype, const py::tuple& sizes, const py::dict& tensors,
           bool dt_softplus, int directions, bool quasi) {
            const ScanParams P = cpu_params(dtype, sizes, tensors, dt_softplus, directions, quasi);
            check_backward_tensors(P);
            py::gil_scoped_release release;
            cpu::scan_backward(P, max_threads());
        },
        py::arg("dtype"), py::arg("sizes"), py::arg("tensors"), py::arg("dt_softplus"),
        py::arg("directions"), py::arg("quasi"),
        "Gradients of the fused (bi)directional selective scan (see csrc/scan_params.h).");
}

}  // namespace mmhnet
