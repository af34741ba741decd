// Each op family adds its bindings here; module_cpu.cpp / module_cuda.cu call these.
#pragma once
#include <pybind11/pybind11.h>

namespace mmhnet {
void register_cpu_kernels(pybind11::module_& m);   // csrc/cpu/registry.cpp
void register_cuda_kernels(pybind11::module_& m);  // csrc/cuda/registry.cu
void register_scan_cpu(pybind11::module_& m);      // csrc/cpu/scan_bind.cpp
void register_scan_cuda(pybind11::module_& m);     // csrc/cuda/scan_bind.cu
void register_routing_cpu_kernels(pybind11::module_& m);   // csrc/cpu/routing_bindings.cpp
void register_routing_cuda_kernels(pybind11::module_& m);  // csrc/cuda/routing_bindings.cu
}  // namespace mmhnet
