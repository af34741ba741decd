// Entry points of the CPU selective scans (csrc/cpu/scan_fwd.cpp, scan_bwd.cpp).
// Tasks are (batch row, sequence, head) triples spread over OpenMP threads; each task writes
// its own outputs, so results do not depend on the number of threads.
#pragma once

#include "cpu_scan_common.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

// y = the scan output (storage dtype float32 or float64).
void scan_forward(const ScanParams& P);

// All gradients (scan_params.h lists the outputs and their partial sums).
void scan_backward(const ScanParams& P);

// The forward of one task into `out` (rows of y, or of any (b, l, h, p) buffer). gate = false
// leaves out the z gating, giving the pre-gate output the backward needs for dz.
template <typename T>
void forward_task(const ScanParams& P, const Task& task, const Rows<T>& out, bool gate);

}  // namespace cpu
}  // namespace mmhnet
