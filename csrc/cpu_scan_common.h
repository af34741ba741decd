// Pieces shared by the CPU scan forward and backward: views of the operands of one task
// (batch row, sequence, head), the rescaling schedule, activations and per-thread scratch.
//
// Rescaled state. Between two "resets" a pass keeps G_k = S_k / alpha_k, where alpha_k is the
// product of the decays since the reset. Then
//     G_k = G_{k-1} + (v_k / alpha_k) (x) b_k,      out_k = alpha_k * (c_k . G_k),
// which costs two FMAs per state element instead of three; the rounding errors are those of
// the plain recurrence, since every term is scaled by the same alpha as in S. A reset happens
// when alpha would leave [exp(-kRescaleLimit), exp(kRescaleLimit)] (so 1/alpha stays far from
// overflow): the state is multiplied by the accumulated decay once (m_k = alpha_{k-1} a_k) and
// alpha restarts at 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <vector>

#include "cpu_rank1_scan.h"
#include "cpu_vec_math.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

constexpr int64_t kBlockSteps = 64;  // steps per block: one block's rows stay in L2

template <typename T>
constexpr double kRescaleLimit = sizeof(T) == 4 ? 20.0 : 200.0;

// ---------------------------------------------------------------------------------------------
// activations, in double (per token or per element, never in the inner loop)

inline double softplus_grad(double v) { return v > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-v)); }

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

// A unit of work: heads [h0, h0 + nh) of one sequence of one batch row, token range
// [begin, begin + len). The heads of a unit advance block by block together, so each token's
// rows for these heads (adjacent in memory) are read and written together: one page of a
// (b, l, h, p) tensor per token, instead of one per token and head. Each head's arithmetic does
// not depend on the grouping, so results do not depend on the number of threads.
struct Unit {
    int64_t b, seq, row, h0, nh;  // row = b * nseq + seq: index into the per-row partial sums
    int64_t begin, len;
};

// Units: about two per thread (for balance), and few enough heads per unit that its scratch
// (bytes_per_head_token per head and token of the longest sequence) stays under kUnitScratch.
class UnitPlan {
  public:
    static constexpr int64_t kUnitScratch = int64_t(64) << 20;

    UnitPlan(const ScanParams& P, int threads, int64_t bytes_per_head_token) : P_(P) {
        const int64_t rows = P.batch * P.nseq;
        int64_t longest = P.seqlen;
        if (P.cu_seqlens) {
            longest = 0;
            for (int64_t s = 0; s < P.nseq; ++s) longest = std::max<int64_t>(longest, P.cu_seqlens[s + 1] - P.cu_seqlens[s]);
        }
        const int64_t fit = std::max<int64_t>(1, kUnitScratch / std::max<int64_t>(1, longest * bytes_per_head_token));
        const int64_t want = std::max<int64_t>(1, (2 * threads + rows - 1) / rows);  // units per row
        const int64_t per_row = std::max(std::min<int64_t>(P.nheads, want), (P.nheads + fit - 1) / fit);
        heads_ = (P.nheads + per_row - 1) / per_row;
        per_row_ = (P.nheads + heads_ - 1) / heads_;
    }

    int64_t size() const { return P_.batch * P_.nseq * per_row_; }

    Unit unit(int64_t id) const {
        Unit u;
        u.row = id / per_row_;
        u.h0 = (id % per_row_) * heads_;
        u.nh = std::min(heads_, P_.nheads - u.h0);
        u.seq = u.row % P_.nseq;
        u.b = u.row / P_.nseq;
        u.begin = P_.cu_seqlens ? P_.cu_seqlens[u.seq] : 0;
        u.len = P_.cu_seqlens ? P_.cu_seqlens[u.seq + 1] - u.begin : P_.seqlen;
        return u;
    }

  private:
    const ScanParams& P_;
    int64_t heads_, per_row_;
};

// The tensors one direction reads for one head (the reverse ones where given).
template <typename T>
struct HeadParams {
    Rows<T> x, dt, B, C;
    double A, dt_bias;
    int64_t group;

    HeadParams(const ScanParams& P, int64_t b, int64_t head, bool rev) {
        group = P.group_of(head);
        x = Rows<T>(P.x, b, head);
        dt = Rows<T>::of_bl(rev && P.dt_rev.present() ? P.dt_rev : P.dt, b, head);
        B = Rows<T>(rev && P.B_rev.present() ? P.B_rev : P.B, b, group);
        C = Rows<T>(rev && P.C_rev.present() ? P.C_rev : P.C, b, group);
        const ScanTensor& a = rev && P.A_rev.present() ? P.A_rev : P.A;
        A = static_cast<const T*>(a.ptr)[head * a.stride[0]];
        dt_bias = P.dt_bias.present()
                      ? static_cast<const T*>(P.dt_bias.ptr)[head * P.dt_bias.stride[0]]
                      : 0.0;
    }
};

// Processing order of one direction over a unit's tokens: step k <-> time index i <-> token.
struct Order {
    bool reverse;
    int64_t begin, len;

    int64_t index(int64_t k) const { return reverse ? len - 1 - k : k; }
    int64_t token(int64_t k) const { return begin + index(k); }
};

// dt' and the decay exp(dt' A) per head and token (time order), for each direction; computed
// once when both directions share dt and A, with vectorised softplus and exp.
constexpr int64_t kScheduleBytes = 4 * sizeof(double);  // per head and token: dt', decay, 2 slots

class UnitSchedule {
  public:
    template <typename T>
    void prepare(const ScanParams& P, const Unit& u) {
        stride_ = (u.len + kLanes<double> - 1) / kLanes<double> * kLanes<double>;
        shared_ = !P.dt_rev.present() && !P.A_rev.present();
        const bool fwd = P.directions & kScanForward, rev = P.directions & kScanReverse;
        if (fwd || shared_) fill<T>(P, u, false, 0);
        if (rev && !shared_) fill<T>(P, u, true, 1);
    }

    const double* dt_eff(bool rev, int64_t hl) const { return dt_eff_[slot(rev)].data() + hl * stride_; }
    const double* decay(bool rev, int64_t hl) const { return decay_[slot(rev)].data() + hl * stride_; }

  private:
    int slot(bool rev) const { return rev && !shared_ ? 1 : 0; }

    template <typename T>
    void fill(const ScanParams& P, const Unit& u, bool rev, int slot) {
        double* eff_all = grown(dt_eff_[slot], u.nh * stride_);
        double* decay_all = grown(decay_[slot], u.nh * stride_);
        for (int64_t hl = 0; hl < u.nh; ++hl) {
            const HeadParams<T> hp(P, u.b, u.h0 + hl, rev);
            double* e = eff_all + hl * stride_;
            double* a = decay_all + hl * stride_;
            for (int64_t i = 0; i < u.len; ++i) e[i] = double(hp.dt.at(u.begin + i)) + hp.dt_bias;
            std::fill(e + u.len, e + stride_, 0.0);
            for (int64_t i = 0; i < stride_; i += kLanes<double>) {
                Vec<double> v = vload(e + i);
                if (P.dt_softplus) v = v > 20.0 ? v : vlog1p(vexp<double>(v));  // as torch's softplus
                vstore(e + i, v);
                vstore(a + i, vexp<double>(v * hp.A));
            }
        }
    }

    int64_t stride_ = 0;
    bool shared_ = true;
    Buffer<double> dt_eff_[2], decay_[2];
};

// Runs body(i) for i in [0, n) over the OpenMP threads, dynamically scheduled. The first
// exception thrown by a body is rethrown here, after the loop (none escapes the parallel region).
template <typename Body>
void parallel_for(int64_t n, Body body) {
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) {
        try {
            body(i);
        } catch (...) {
#pragma omp critical(mmhnet_scan_error)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

// Rows of B and C for one block, gathered once for all heads of a unit that read them.
template <typename T>
struct SharedRows {
    int64_t g0 = 0, npd = 0;
    T *b = nullptr, *c = nullptr;

    void gather(const ScanParams& P, const Unit& u, const Order& o, bool rev, int64_t k0, int64_t nb,
                Buffer<T>& bbuf, Buffer<T>& cbuf) {
        g0 = P.group_of(u.h0);
        const int64_t ng = P.group_of(u.h0 + u.nh - 1) - g0 + 1;
        npd = padded(P.dstate);
        b = grown(bbuf, ng * kBlockSteps * npd);
        c = grown(cbuf, ng * kBlockSteps * npd);
        for (int64_t gl = 0; gl < ng; ++gl) {
            const HeadParams<T> hp(P, u.b, (g0 + gl) * (P.nheads / P.ngroups), rev);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t t = o.token(k0 + kk);
                gather_row(b + (gl * kBlockSteps + kk) * npd, hp.B, t, P.dstate, npd, T(1));
                gather_row(c + (gl * kBlockSteps + kk) * npd, hp.C, t, P.dstate, npd, T(1));
            }
        }
    }

    const T* b_of(int64_t group) const { return b + (group - g0) * kBlockSteps * npd; }
    const T* c_of(int64_t group) const { return c + (group - g0) * kBlockSteps * npd; }
};

// The cache lines a block should prefetch for the next piece of work (Prefetches).
class PrefetchList {
  public:
    void clear() {
        read_.clear();
        write_.clear();
    }

    // The rows of steps [k_first, k_first + count) (clipped to the order) of a tensor.
    template <typename T>
    void rows(const Rows<T>& r, const Order& o, int64_t k_first, int64_t count, int64_t inner, bool write) {
        if (!r.present()) return;
        std::vector<const void*>& dst = write ? write_ : read_;
        const int64_t end = std::min(k_first + count, o.len);
        for (int64_t k = std::max<int64_t>(k_first, 0); k < end; ++k) {
            const T* row = r.row(o.token(k));
            if (r.inner_stride == 1) {
                const auto first = reinterpret_cast<uintptr_t>(row) / 64;
                const auto last = (reinterpret_cast<uintptr_t>(row + inner) - 1) / 64;
                for (uintptr_t line = first; line <= last; ++line) dst.push_back(reinterpret_cast<const void*>(line * 64));
            } else {
                for (int64_t i = 0; i < inner; ++i) dst.push_back(row + i * r.inner_stride);
            }
        }
    }

    Prefetches get() const {
        Prefetches p;
        p.read = read_.data();
        p.nread = static_cast<int64_t>(read_.size());
        p.write = write_.data();
        p.nwrite = static_cast<int64_t>(write_.size());
        return p;
    }

  private:
    std::vector<const void*> read_, write_;
};

// The next piece of work after (head hl, block k0) when a unit's heads advance block by block.
struct NextWork {
    int64_t hl, k0;
    bool new_block;

    NextWork(int64_t hl_now, int64_t k0_now, int64_t nh) {
        new_block = hl_now + 1 == nh;
        hl = new_block ? 0 : hl_now + 1;
        k0 = new_block ? k0_now + kBlockSteps : k0_now;
    }
};

// Prefetch the B and C rows of a block for the groups of a unit.
template <typename T>
inline void prefetch_bc_rows(PrefetchList& pf, const ScanParams& P, const Unit& u, const Order& o, bool rev,
                             int64_t k0) {
    const int64_t g0 = P.group_of(u.h0), g1 = P.group_of(u.h0 + u.nh - 1);
    for (int64_t g = g0; g <= g1; ++g) {
        const HeadParams<T> hp(P, u.b, g * (P.nheads / P.ngroups), rev);
        pf.rows(hp.B, o, k0, kBlockSteps, P.dstate, false);
        pf.rows(hp.C, o, k0, kBlockSteps, P.dstate, false);
    }
}

// The rescaling schedule of one pass: call step() once per step, in the pass's order.
template <typename T>
class Rescale {
  public:
    // decay: a_k of this step. Returns the state multiplier m_k (1: none) and sets alpha, the
    // scale of this step.
    T step(double decay, double& alpha) {
        T mult = T(1);
        if (!started_) {
            started_ = true;  // the state starts at zero: no multiplier needed
        } else {
            const double cand = alpha_ * decay;
            if (!(cand > kMin && cand < kMax)) {
                mult = T(cand);
                alpha_ = 1.0;
            } else {
                alpha_ = cand;
            }
        }
        alpha = alpha_;
        return mult;
    }

  private:
    static inline const double kMin = std::exp(-kRescaleLimit<T>), kMax = std::exp(kRescaleLimit<T>);
    bool started_ = false;
    double alpha_ = 1.0;
};

}  // namespace cpu
}  // namespace mmhnet
