// Host entry points of the CUDA selective scans (csrc/cuda/scan_*.cu). They enqueue kernels on
// `stream` and return; scratch comes from the caller (ScanParams::ws_*).
#pragma once

#include <cuda_runtime.h>

#include "scan_params.h"

namespace mmhnet {
namespace scan_cuda {

// The four rank-1 scans of scan_params.h.
enum class Rank1Pass : int {
    kForwardOut = 0,  // F_p: yhat of each direction into ws_yhat
    kGradC = 1,       // F_n: dC (and C.dC into ws_dlog)
    kGradB = 2,       // R_n: dB (and -B.dB into ws_dlog)
    kGradInput = 3,   // R_p: dx (and x.du into ws_xgu)
};

// Runs `pass` for direction indices [dir0, dir0 + ndirs) (index 0: the first direction of the
// call, 1: the reverse one of a bidirectional call).
void launch_rank1(const ScanParams& P, Rank1Pass pass, int dir0, int ndirs, cudaStream_t stream);

void scan_forward(const ScanParams& P, cudaStream_t stream);
void scan_backward(const ScanParams& P, cudaStream_t stream);

// Throws std::runtime_error naming `what` if the last launch failed.
void check_launch(const char* what);

// Launch-size limit: one thread per state row, the other dimension in registers.
constexpr int kMaxDim = 256;

}  // namespace scan_cuda
}  // namespace mmhnet
