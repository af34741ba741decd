// The arithmetic type of a storage type, shared by the CPU and CUDA kernels: double for double
// storage, float for every other (float, half, bfloat16).
#pragma once

namespace mmhnet {

template <class T>
struct ComputeOf {
    using type = float;
};
template <>
struct ComputeOf<double> {
    using type = double;
};
template <class T>
using compute_t = typename ComputeOf<T>::type;

}  // namespace mmhnet
