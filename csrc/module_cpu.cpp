// mmhnet._C: the CPU kernels. No torch headers: every entry point takes raw pointers, sizes
// and strides (see params.h), so the module does not depend on torch's version or ABI.
//
// setup.py builds these sources once per ISA (mmhnet._C for x86-64-v3, mmhnet._C_avx512 for
// x86-64-v4) and passes the module's name and ISA label; mmhnet/ops/_backend.py picks one.
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "registry.h"

#ifndef MMHNET_MODULE_NAME
#define MMHNET_MODULE_NAME _C
#endif
#ifndef MMHNET_ISA
#define MMHNET_ISA "default"
#endif

namespace py = pybind11;

namespace {
// Whether the CPU (and the OS, which must save the zmm and mask registers) supports the
// AVX-512 subsets that -march=x86-64-v4 may use. Compiled into every module, so the AVX2 one
// can tell whether loading the AVX-512 one is safe.
bool cpu_supports_avx512() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}
}  // namespace

PYBIND11_MODULE(MMHNET_MODULE_NAME, m) {
    m.doc() = "mmhnet CPU kernels (C++17, OpenMP)";
    m.attr("ISA") = MMHNET_ISA;
    m.def("cpu_supports_avx512", &cpu_supports_avx512,
          "Whether this CPU supports AVX-512 F/BW/DQ/VL (what the mmhnet._C_avx512 build needs).");
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
