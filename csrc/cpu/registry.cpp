// Bindings of the CPU kernels into mmhnet._C, one call per op family.
#include "registry.h"

namespace mmhnet {
void register_cpu_kernels(pybind11::module_& m) {
    register_scan_cpu(m);
    register_routing_cpu_kernels(m);
}
}  // namespace mmhnet
