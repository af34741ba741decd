// Entry points of the CPU selective scans (csrc/cpu/scan_fwd.cpp, scan_bwd.cpp).
// Units of work (cpu_scan_units.h) are spread over OpenMP threads; each unit writes its own
// outputs, so results do not depend on the number of threads.
#pragma once

#include "cpu_prefetch.h"
#include "cpu_scan_operands.h"
#include "cpu_scan_schedule.h"
#include "cpu_scan_units.h"
#include "cpu_scratch.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

// y = the scan output (storage dtype float32 or float64). `threads`: the OpenMP thread count,
// which only sets how the work is cut into units.
void scan_forward(const ScanParams& P, int threads);

// All gradients (scan_params.h lists the outputs and their partial sums).
void scan_backward(const ScanParams& P, int threads);

// The forward of one unit into `out` (y, or any (b, l, h, p) tensor). gate = false leaves
// out the z gating, giving the pre-gate output the backward needs for dz.
template <typename T>
void forward_unit(const ScanParams& P, const Unit& u, const ScanTensor& out, bool gate);

}  // namespace cpu
}  // namespace mmhnet
