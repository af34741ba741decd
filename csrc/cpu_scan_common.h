// Pieces shared by the CPU scan forward and backward: views of the operands of one task
// (batch row, sequence, head), the rescaling schedule, activations and per-thread scratch.
//
// Rescaled state. Between two "resets" a pass keeps G_k = S_k / alpha_k, where alpha_k is the
// product of the decays since the reset. Then
//     G_k = G_{k-1} + (v_k / alpha_k) (x) b_k,      out_k = alpha_k * (c_k . G_k),
// which costs two FMAs per state element instead of three; the rounding errors are those of
// the plain recurrence, since every term is scaled by the same alpha as in S. A reset happens
// when |log alpha| would pass kRescaleLimit (so 1/alpha stays far from overflow): the state is
// multiplied by the accumulated decay once (m_k = alpha_{k-1} a_k) and alpha restarts at 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "cpu_rank1_scan.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

constexpr int64_t kBlockSteps = 64;  // steps per block: one block's rows stay in L2

template <typename T>
constexpr double kRescaleLimit = sizeof(T) == 4 ? 20.0 : 200.0;

// ---------------------------------------------------------------------------------------------
// activations, in double (per token or per element, never in the inner loop)

inline double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }  // as torch
inline double softplus_grad(double v) { return v > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-v)); }
inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// ---------------------------------------------------------------------------------------------
// operand views

// Rows of a (b, l, heads|groups, inner) tensor at one batch row and head (or group): one row
// per token. For a (b, l, h) tensor `inner_stride` is 0 and a row is one element.
template <typename T>
struct Rows {
    T* base = nullptr;
    int64_t token_stride = 0, inner_stride = 0;

    Rows() = default;
    Rows(const ScanTensor& t, int64_t b, int64_t head)
        : base(t.ptr ? static_cast<T*>(t.ptr) + b * t.stride[0] + head * t.stride[2] : nullptr),
          token_stride(t.stride[1]), inner_stride(t.stride[3]) {}
    static Rows of_bl(const ScanTensor& t, int64_t b, int64_t head) {  // (b, l, h) tensors
        Rows r;
        if (t.ptr) {
            r.base = static_cast<T*>(t.ptr) + b * t.stride[0] + head * t.stride[2];
            r.token_stride = t.stride[1];
        }
        return r;
    }

    bool present() const { return base != nullptr; }
    T* row(int64_t t) const { return base + t * token_stride; }
    T& at(int64_t t, int64_t i) const { return base[t * token_stride + i * inner_stride]; }
    T& at(int64_t t) const { return base[t * token_stride]; }
};

// dst[i] = scale * src(t, i) for i < count, zeros up to `pad`.
template <typename T>
inline void gather_row(T* dst, const Rows<T>& src, int64_t t, int64_t count, int64_t pad, T scale) {
    const T* s = src.row(t);
    if (src.inner_stride == 1) {
        for (int64_t i = 0; i < count; ++i) dst[i] = scale * s[i];
    } else {
        for (int64_t i = 0; i < count; ++i) dst[i] = scale * s[i * src.inner_stride];
    }
    for (int64_t i = count; i < pad; ++i) dst[i] = T(0);
}

// One task: a (batch row, sequence, head) triple and its token range [begin, begin + len).
struct Task {
    int64_t b, seq, head, row;  // row = b * nseq + seq: index into the per-task partial sums
    int64_t begin, len;

    Task(const ScanParams& P, int64_t id) {
        head = id % P.nheads;
        row = id / P.nheads;
        seq = row % P.nseq;
        b = row / P.nseq;
        begin = P.cu_seqlens ? P.cu_seqlens[seq] : 0;
        len = P.cu_seqlens ? P.cu_seqlens[seq + 1] - begin : P.seqlen;
    }
};

// The inputs of one direction of one task, indexed by processing step k.
template <typename T>
struct DirectionView {
    bool reverse;
    int64_t begin, len;
    Rows<T> x, dt, B, C;
    double A, dt_bias;
    bool softplus_dt;

    DirectionView(const ScanParams& P, const Task& task, bool rev) : reverse(rev) {
        begin = task.begin;
        len = task.len;
        const int64_t g = P.group_of(task.head);
        x = Rows<T>(P.x, task.b, task.head);
        dt = Rows<T>::of_bl(rev && P.dt_rev.present() ? P.dt_rev : P.dt, task.b, task.head);
        B = Rows<T>(rev && P.B_rev.present() ? P.B_rev : P.B, task.b, g);
        C = Rows<T>(rev && P.C_rev.present() ? P.C_rev : P.C, task.b, g);
        const ScanTensor& a = rev && P.A_rev.present() ? P.A_rev : P.A;
        A = static_cast<const T*>(a.ptr)[task.head * a.stride[0]];
        dt_bias = P.dt_bias.present()
                      ? static_cast<const T*>(P.dt_bias.ptr)[task.head * P.dt_bias.stride[0]]
                      : 0.0;
        softplus_dt = P.dt_softplus;
    }

    // token of processing step k
    int64_t token(int64_t k) const { return reverse ? begin + len - 1 - k : begin + k; }
    double dt_raw(int64_t k) const { return double(dt.at(token(k))) + dt_bias; }
    double dt_eff(int64_t k) const { return softplus_dt ? softplus(dt_raw(k)) : dt_raw(k); }
    double dt_eff_grad(int64_t k) const { return softplus_dt ? softplus_grad(dt_raw(k)) : 1.0; }
};

// The rescaling schedule of one pass: call step() once per step, in the pass's order.
template <typename T>
class Rescale {
  public:
    // log_decay: log a_k of this step. Returns the state multiplier m_k (1: none) and sets
    // alpha, the scale of this step.
    T step(double log_decay, double& alpha) {
        T mult = T(1);
        if (!started_) {
            started_ = true;  // the state starts at zero: no multiplier needed
        } else {
            const double cand = log_alpha_ + log_decay;
            if (std::fabs(cand) > kRescaleLimit<T> || std::isnan(cand)) {
                mult = T(std::exp(cand));
                log_alpha_ = 0.0;
            } else {
                log_alpha_ = cand;
            }
        }
        alpha = std::exp(log_alpha_);
        return mult;
    }

  private:
    bool started_ = false;
    double log_alpha_ = 0.0;
};

// ---------------------------------------------------------------------------------------------
// per-thread scratch (reused across calls, so large calls do not page-fault on every block)

template <typename T>
struct AlignedAllocator {
    using value_type = T;
    AlignedAllocator() = default;
    template <typename U>
    AlignedAllocator(const AlignedAllocator<U>&) {}
    T* allocate(std::size_t n) {
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
    }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <typename U>
    bool operator==(const AlignedAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

template <typename T>
using Buffer = std::vector<T, AlignedAllocator<T>>;

template <typename T>
inline T* grown(Buffer<T>& buf, int64_t n) {
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    return buf.data();
}

}  // namespace cpu
}  // namespace mmhnet
