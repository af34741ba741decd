// Bindings of the CUDA kernels into mmhnet._C_cuda, one call per op family.
#include "registry.h"

namespace mmhnet {
void register_cuda_kernels(pybind11::module_& m) {
    register_scan_cuda(m);
    register_routing_cuda_kernels(m);
}
}  // namespace mmhnet
