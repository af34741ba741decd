// Shared by the CUDA routing kernels (csrc/cuda/routing_*.cu): storage dtypes and their
// conversion to the compute type, dtype dispatch, warp reductions, error checks and stream-ordered
// scratch memory. No torch headers.
//
// Storage dtypes (codes as in csrc/cpu/routing_common.h): 0 float32, 1 float64, 2 float16,
// 3 bfloat16. Arithmetic is in double for float64 storage and in float otherwise.
#pragma once

#include "compute_type.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mmhnet {
namespace routing_cuda {

__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void store_as(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_as(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store_as(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, int64_t i, float v) {
    p[i] = __float2bfloat16_rn(v);
}

template <class C>
__device__ __forceinline__ C warp_sum(C v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Calls f(T{}) with T the C++ type of the storage dtype.
template <class F>
void dispatch(int dtype, const char* op, F&& f) {
    switch (dtype) {
        case 0: f(float{}); return;
        case 1: f(double{}); return;
        case 2: f(__half{}); return;
        case 3: f(__nv_bfloat16{}); return;
    }
    throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(dtype));
}

template <class T>
T* ptr(uintptr_t address) {
    return reinterpret_cast<T*>(address);
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

inline void check(cudaError_t err, const char* op) {
    if (err != cudaSuccess)
        throw std::runtime_error(std::string(op) + ": CUDA error: " + cudaGetErrorString(err));
}

inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Scratch memory from the stream-ordered allocator, freed on the same stream.
class StreamScratch {
  public:
    StreamScratch(size_t bytes, cudaStream_t stream, const char* op) : stream_(stream) {
        if (bytes) check(cudaMallocAsync(&ptr_, bytes, stream), op);
    }
    ~StreamScratch() {
        if (ptr_) cudaFreeAsync(ptr_, stream_);
    }
    StreamScratch(const StreamScratch&) = delete;
    StreamScratch& operator=(const StreamScratch&) = delete;
    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }

  private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

// An index tensor is int32 or int64; read it as int64.
__device__ __forceinline__ int64_t load_index(const void* base, bool is64, int64_t i) {
    return is64 ? static_cast<const int64_t*>(base)[i] : static_cast<const int32_t*>(base)[i];
}

}  // namespace routing_cuda
}  // namespace mmhnet
