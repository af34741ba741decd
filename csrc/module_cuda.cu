// mmhnet._C_cuda: the CUDA kernels. No torch headers: entry points take raw device pointers,
// sizes, strides and the CUDA stream as integers. The CUDA runtime is linked statically.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
    m.doc() = "mmhnet CUDA kernels";
    m.def("runtime_version", []() {
        int v = 0;
        cudaRuntimeGetVersion(&v);
        return v;
    }, "CUDA runtime version the module was built against (e.g. 13000).");
    mmhnet::register_cuda_kernels(m);
}
