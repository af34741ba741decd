// The decay schedule of the CPU scans.
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

#include <cmath>
#include <cstdint>

#include "cpu_rank1_scan.h"
#include "cpu_scan_operands.h"
#include "cpu_scratch.h"
#include "cpu_vec_math.h"
#include "scan_params.h"

namespace mmhnet {
namespace cpu {

template <typename T>
constexpr double kRescaleLimit = sizeof(T) == 4 ? 20.0 : 200.0;

inline double softplus_grad(double v) { return v > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-v)); }  // torch's

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
