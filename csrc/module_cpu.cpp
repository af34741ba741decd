// mmhnet._C: the CPU kernels. No torch headers: every entry point takes raw pointers, sizes
// and strides (see params.h), so the module does not depend on torch's version or ABI.
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "registry.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "mmhnet CPU kernels (C++17, OpenMP)";
    m.def("num_threads", []() {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    }, "Number of OpenMP threads the kernels use.");
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
        omp_set_num_threads(n);
#endif
    }, py::arg("n"), "Set the number of OpenMP threads the kernels use.");
    mmhnet::register_cpu_kernels(m);
}
