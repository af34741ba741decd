// Backward of the fused (bi)directional selective scan on CPU (maths: scan_params.h).
//
// Per unit (adjacent heads of one sequence): if z is given, the pre-gate output is recomputed
// into dz (the forward pass), then dz and gyp = dy * silu(z) are formed; without z, gyp is dy.
// Then, per direction, three rank-1 scans recompute what they need from the inputs:
//   F_n (processing order)                             -> dC_k,
//   R_n and R_p (reversed order, sharing their rows)   -> dB_k and du_k,
// and a scalar sweep turns g(log a_k) = sum_{k' >= k} (C.dC - B.dB) into ddt and dA.
//
// That sum telescopes to a_k <lambda_k, h_{k-1}> (the adjoint state at step k against the state
// before it), which is 0 wherever h_{k-1} is. Its terms are not small, so their rounding errors
// accumulate along the sequence, and dA and dt_bias sum g(log a) over every token: summed
// plainly, their relative error would grow with the sequence length (~1e-2 at 65536 steps in
// float32). So the terms leave out each step's own product (C.B)(u.gyhat), which cancels
// between C.dC and B.dB and dwarfs g(log a) under strong decay (the F_n and R_n scans output dC
// and dB without it, and it is added after), and every AnchorGrid::spacing steps (64, fewer
// under strong decay) the sum is made exact from the inner product itself (an "anchor"), taken
// from the states the two passes hold where they split a block there; the drift between
// anchors is taken off linearly (log_decay_sweep.h).
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu_scan.h"
#include "cpu_vec_math.h"
#include "log_decay_sweep.h"

namespace mmhnet {
namespace cpu {
namespace {

// Anchors sit at steps m = spacing, 2 spacing, ... < n of a head's processing order; both
// passes split their blocks there. spacing is kBlockSteps for moderate decays: at 8192 steps
// the float32 error of dA is then ~3e-6 (median; 1.3e-5 with anchors every 256 steps, whose
// tail reached 6e-5), for ~5% of the backward's time. Strong decays make the log-decay terms
// large against g(log a) itself (a pair of steps enters g only where it is crossed, but the
// terms at both of its ends), so the error between two anchors grows with the decay: the
// spacing halves, down to kDenseAnchorSteps, while spacing * (the head's mean |log a| per step)
// > kBlockSteps (issue 20: 64 tokens with |log a| up to 32 had dA errors up to 8.8e-5 with
// anchors every 64 steps, 1.1e-5 every 8). For long sequences it doubles so that the unit's
// saved states stay under kAnchorBytes.
constexpr int64_t kAnchorSteps = kBlockSteps;
constexpr int64_t kDenseAnchorSteps = 8;
constexpr int64_t kAnchorBytes = int64_t(16) << 20;

// The smallest spacing (kDenseAnchorSteps times a power of two) at which nh heads' saved
// states fit kAnchorBytes.
inline int64_t min_anchor_spacing(int64_t n, int64_t nh, int64_t state_bytes) {
    int64_t spacing = kDenseAnchorSteps;
    while ((n - 1) / spacing * nh * state_bytes > kAnchorBytes) spacing *= 2;
    return spacing;
}

struct AnchorGrid {
    int64_t spacing = kAnchorSteps, count = 0;

    AnchorGrid() = default;
    AnchorGrid(int64_t n, int64_t min_spacing, double mean_log_decay) {
        while (spacing > kDenseAnchorSteps && double(spacing) * mean_log_decay > double(kBlockSteps)) spacing /= 2;
        spacing = std::max(spacing, min_spacing);
        count = (n - 1) / spacing;
    }
    // Index of the anchor at step m, or -1.
    int64_t at(int64_t m) const { return m > 0 && m % spacing == 0 && m / spacing <= count ? m / spacing - 1 : -1; }
    // Steps from step k up to the next multiple of spacing (F_n), or down to the one before
    // (R_n, which runs down from step k - 1): where an anchor may sit.
    int64_t to_next(int64_t k) const { return spacing - k % spacing; }
    int64_t to_prev(int64_t k) const { return k % spacing ? k % spacing : spacing; }
};

// Mean |log a_k| = dt'_k |A| over a head's steps in one direction.
inline double mean_log_decay(const double* dt_eff, int64_t n, double A) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += dt_eff[i];
    return sum * std::abs(A) / double(n);
}

template <typename T>
struct BackwardScratch {
    UnitSchedule schedule;
    std::vector<Rescale<T>> rescale;
    PrefetchList prefetch;
    Buffer<T> gyp, bsh, csh, rb, rc, mult, scale, out_n, out_p, states_n, states_p;
    Buffer<T> gyrow, xrow, gate, dgate, drows;
    std::vector<double> dlog, xgu, dD;
    Buffer<T> anchor_states;             // per anchor and head: the state h_{m-1} / alpha
    std::vector<double> anchor_scale;    // per anchor and head: its alpha
    std::vector<double> anchor_glog;     // per head and anchor: g(log a_m)
    std::vector<double> step_scale;      // per step of a block: the pass's alpha or beta
    std::vector<AnchorGrid> anchors;     // per head
};

// Where one direction's gradients for one head go: its own tensors, or the forward ones it
// shares (then accumulated when an earlier direction already wrote them).
template <typename T>
struct GradTargets {
    Rows<T> ddt, dB, dC;
    T* dA;
    bool acc_ddt, acc_dA, acc_dB, acc_dC;

    GradTargets(const ScanParams& P, const Unit& u, int64_t head, bool reverse, bool earlier_direction) {
        const bool own_dt = reverse && P.dt_rev.present(), own_A = reverse && P.A_rev.present();
        const bool own_B = reverse && P.B_rev.present(), own_C = reverse && P.C_rev.present();
        ddt = Rows<T>::of_bl(own_dt ? P.ddt_rev : P.ddt, u.b, head);
        dB = Rows<T>(own_B ? P.dB_rev_heads : P.dB_heads, u.b, head);
        dC = Rows<T>(own_C ? P.dC_rev_heads : P.dC_heads, u.b, head);
        const ScanTensor& a = own_A ? P.dA_rev_part : P.dA_part;
        dA = static_cast<T*>(a.ptr) + u.row * a.stride[0] + head * a.stride[1];
        acc_ddt = earlier_direction && !own_dt;
        acc_dA = earlier_direction && !own_A;
        acc_dB = earlier_direction && !own_B;
        acc_dC = earlier_direction && !own_C;
    }
};

template <typename T>
inline void store_row(const Rows<T>& dst, int64_t t, const T* src, int64_t count, bool accumulate) {
    T* d = dst.row(t);
    const int64_t s = dst.inner_stride;
    if (accumulate) {
        for (int64_t i = 0; i < count; ++i) d[i * s] += src[i];
    } else {
        for (int64_t i = 0; i < count; ++i) d[i * s] = src[i];
    }
}

// out += v (b . c): the step's own term, which the exclusive F_n and R_n scans leave out of
// dC and dB (rows padded: v to nv, b and c to nbc entries).
template <typename T>
inline void add_own_term(T* out, const T* v, const T* b, const T* c, int64_t nv, int64_t nbc) {
    const T own = T(vdot(b, c, nbc));
    for (int64_t i = 0; i < nv; ++i) out[i] += own * v[i];
}

// The output gradient gyp of a unit: kept in scratch (time-major rows) when gated, else read
// from dy.
template <typename T>
class OutputGrad {
  public:
    OutputGrad(const ScanParams& P, const Unit& u, BackwardScratch<T>& ws)
        : P_(P), u_(u), np_(P.headdim), pp_(padded(P.headdim)) {
        if (P.z.present()) {
            store_ = grown(ws.gyp, u.len * u.nh * pp_);
            fill(ws);
        }
    }

    // dst = scale * gyp of head h0 + hl at time index i (i < 0 or >= len: zeros), padded.
    void row(int64_t hl, int64_t i, T* dst, T scale) const {
        if (i < 0 || i >= u_.len) {
            std::fill(dst, dst + pp_, T(0));
        } else if (store_) {
            const T* g = store_ + (i * u_.nh + hl) * pp_;
            for (int64_t p = 0; p < pp_; ++p) dst[p] = scale * g[p];
        } else {
            gather_row(dst, Rows<T>(P_.dy, u_.b, u_.h0 + hl), u_.begin + i, np_, pp_, scale);
        }
    }

  private:
    // dz <- pre-gate output (the forward without the gate), then dz = dy yp silu'(z) and
    // gyp = dy silu(z).
    void fill(BackwardScratch<T>& ws) {
        forward_unit<T>(P_, u_, P_.dz, false);
        T* gate = grown(ws.gate, pp_);
        T* dgate = grown(ws.dgate, pp_);
        for (int64_t i = 0; i < u_.len; ++i) {
            const int64_t t = u_.begin + i;
            for (int64_t hl = 0; hl < u_.nh; ++hl) {
                const int64_t head = u_.h0 + hl;
                const Rows<T> dz(P_.dz, u_.b, head);
                T* g = store_ + (i * u_.nh + hl) * pp_;
                gather_row(g, Rows<T>(P_.dy, u_.b, head), t, np_, pp_, T(1));
                gather_row(gate, Rows<T>(P_.z, u_.b, head), t, np_, pp_, T(1));
                silu_row(gate, gate, dgate, pp_);
                T* dzr = dz.row(t);
                const int64_t s = dz.inner_stride;
                for (int64_t p = 0; p < np_; ++p) {
                    dzr[p * s] = g[p] * dzr[p * s] * dgate[p];
                    g[p] *= gate[p];
                }
            }
        }
    }

    const ScanParams& P_;
    const Unit& u_;
    int64_t np_, pp_;
    T* store_ = nullptr;
};

template <typename T>
void backward_direction(const ScanParams& P, const Unit& u, bool reverse, bool first,
                        const OutputGrad<T>& gyp, BackwardScratch<T>& ws) {
    const Order order{reverse, u.begin, u.len};
    const int64_t n = u.len, np = P.headdim, nn = P.dstate, nh = u.nh;
    const int64_t pp = padded(np), npd = padded(nn), state = pp * npd;
    const int64_t shift = P.quasi ? 1 : 0;

    ws.dlog.assign(nh * n, 0.0);  // C.dC - B.dB per head and step
    // per head: its anchors; the saved states take max_anchors slots per head
    const int64_t min_spacing = min_anchor_spacing(n, nh, state * static_cast<int64_t>(sizeof(T)));
    ws.anchors.resize(nh);
    int64_t max_anchors = 0;
    for (int64_t hl = 0; hl < nh; ++hl) {
        const double A = HeadParams<T>(P, u.b, u.h0 + hl, reverse).A;
        ws.anchors[hl] = AnchorGrid(n, min_spacing, mean_log_decay(ws.schedule.dt_eff(reverse, hl), n, A));
        max_anchors = std::max(max_anchors, ws.anchors[hl].count);
    }
    T* anchor_states = grown(ws.anchor_states, max_anchors * nh * state);
    ws.anchor_scale.resize(max_anchors * nh);
    ws.anchor_glog.resize(nh * max_anchors);
    ws.xgu.resize(nh * n);        // x . du per head and step
    T* rb = grown(ws.rb, kBlockSteps * pp);
    T* rc = grown(ws.rc, kBlockSteps * pp);
    T* mult = grown(ws.mult, kBlockSteps);
    T* scale = grown(ws.scale, kBlockSteps);
    ws.step_scale.resize(kBlockSteps);
    T* out_n = grown(ws.out_n, kBlockSteps * npd);
    T* out_p = grown(ws.out_p, kBlockSteps * pp);
    T* states_n = grown(ws.states_n, nh * state);
    T* states_p = grown(ws.states_p, nh * state);
    T* xrow = grown(ws.xrow, pp);
    T* gyrow = grown(ws.gyrow, pp);
    T* drows = grown(ws.drows, nh * pp);
    const bool with_D = P.D.present();
    if (with_D) {
        for (int64_t hl = 0; hl < nh; ++hl) {
            const T* D = static_cast<const T*>(P.D.ptr) + (u.h0 + hl) * P.D.stride[0];
            for (int64_t p = 0; p < np; ++p) drows[hl * pp + p] = P.d_per_channel ? D[p * P.D.stride[1]] : D[0];
        }
        if (first) ws.dD.assign(nh * np, 0.0);
    }
    SharedRows<T> rows;

    // F_n: state over (j = p, i = n); v = B, b = u / alpha, c = gyhat * alpha -> dC.
    std::fill(states_n, states_n + nh * state, T(0));
    ws.rescale.assign(nh, Rescale<T>());
    for (int64_t k0 = 0; k0 < n; k0 += kBlockSteps) {
        const int64_t nb = std::min(kBlockSteps, n - k0);
        rows.gather(P, u, order, reverse, k0, nb, ws.bsh, ws.csh);
        for (int64_t hl = 0; hl < nh; ++hl) {
            const int64_t head = u.h0 + hl;
            const HeadParams<T> hp(P, u.b, head, reverse);
            const GradTargets<T> out(P, u, head, reverse, !first);
            const double* dt_eff = ws.schedule.dt_eff(reverse, hl);
            const double* decay = ws.schedule.decay(reverse, hl);
            double alpha = 1.0;
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t k = k0 + kk, i = order.index(k);
                mult[kk] = ws.rescale[hl].step(decay[i], alpha);
                ws.step_scale[kk] = alpha;
                gather_row(rb + kk * pp, hp.x, u.begin + i, np, pp, T(dt_eff[i] / alpha));
                gyp.row(hl, k + shift < n ? order.index(k + shift) : -1, rc + kk * pp, T(alpha));
            }
            const NextWork next(hl, k0, nb, nh);
            const int64_t next_head = u.h0 + next.hl;
            ws.prefetch.clear();
            ws.prefetch.rows(Rows<T>(P.x, u.b, next_head), order, next.k0, kBlockSteps, np, false);
            if (!P.z.present()) ws.prefetch.rows(Rows<T>(P.dy, u.b, next_head), order, next.k0 + shift, kBlockSteps, np, false);
            ws.prefetch.rows(GradTargets<T>(P, u, next_head, reverse, !first).dC, order, next.k0, kBlockSteps, nn, true);
            if (next.new_block) prefetch_bc_rows<T>(ws.prefetch, P, u, order, reverse, next.k0);
            const T* brows = rows.b_of(hp.group);
            for (int64_t s0 = 0, s1; s0 < nb; s0 = s1) {  // sub-blocks ending where an anchor may sit
                s1 = std::min(nb, s0 + ws.anchors[hl].to_next(k0 + s0));
                rank1_scan_block<true>(s1 - s0, brows + s0 * npd, rb + s0 * pp, rc + s0 * pp, mult + s0, npd, pp,
                                       states_n + hl * state, out_n + s0 * npd,
                                       s0 == 0 ? ws.prefetch.get() : Prefetches{});
                const int64_t a = ws.anchors[hl].at(k0 + s1);  // states_n holds h_{k0+s1-1} / alpha
                if (a >= 0) {
                    std::copy(states_n + hl * state, states_n + (hl + 1) * state, anchor_states + (a * nh + hl) * state);
                    ws.anchor_scale[a * nh + hl] = ws.step_scale[s1 - 1];
                }
            }
            const T* crows = rows.c_of(hp.group);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t k = k0 + kk;
                T* g = out_n + kk * npd;  // dC_k without its own term B_k (u_k . gyhat_k)
                ws.dlog[hl * n + k] += vdot(crows + kk * npd, g, npd);
                add_own_term(g, brows + kk * npd, rb + kk * pp, rc + kk * pp, npd, pp);
                store_row(out.dC, order.token(k), g, nn, out.acc_dC);
            }
        }
    }

    // R_n and R_p: the adjoint state over the reversed order j = n - 1 - k, whose step j decays
    // by a_{k+1}. Shared rows: B and C; per head: rb = gyhat / beta, rc = u * beta.
    //   R_n: v = C, b = gyhat / beta, c = u * beta   -> dB         (i = n, j = p)
    //   R_p: v = gyhat / beta, b = C, c = B          -> du / beta  (i = p, j = n)
    const Order adjoint{!reverse, u.begin, u.len};
    std::fill(states_n, states_n + nh * state, T(0));
    std::fill(states_p, states_p + nh * state, T(0));
    ws.rescale.assign(nh, Rescale<T>());
    // The first block takes the remainder, so that every block ends (at its smallest k) on a
    // multiple of kBlockSteps, where the F_n pass saved the anchors' states.
    for (int64_t j0 = 0, nb; j0 < n; j0 += nb) {
        nb = (n - j0) % kBlockSteps ? (n - j0) % kBlockSteps : kBlockSteps;
        rows.gather(P, u, adjoint, reverse, j0, nb, ws.bsh, ws.csh);
        for (int64_t hl = 0; hl < nh; ++hl) {
            const int64_t head = u.h0 + hl;
            const HeadParams<T> hp(P, u.b, head, reverse);
            const GradTargets<T> out(P, u, head, reverse, !first);
            const Rows<T> dx(P.dx, u.b, head);
            const double* dt_eff = ws.schedule.dt_eff(reverse, hl);
            const double* decay = ws.schedule.decay(reverse, hl);
            double beta = 1.0;
            for (int64_t jj = 0; jj < nb; ++jj) {
                const int64_t k = n - 1 - (j0 + jj), i = order.index(k);
                mult[jj] = ws.rescale[hl].step(k + 1 < n ? decay[order.index(k + 1)] : 1.0, beta);
                scale[jj] = T(beta);
                ws.step_scale[jj] = beta;
                gyp.row(hl, k + shift < n ? order.index(k + shift) : -1, rb + jj * pp, T(1.0 / beta));
                gather_row(rc + jj * pp, hp.x, u.begin + i, np, pp, T(dt_eff[i] * beta));
            }
            const T* brows = rows.b_of(hp.group);
            const T* crows = rows.c_of(hp.group);
            const NextWork next(hl, j0, nb, nh);
            const int64_t next_head = u.h0 + next.hl;
            ws.prefetch.clear();
            ws.prefetch.rows(Rows<T>(P.x, u.b, next_head), adjoint, next.k0, kBlockSteps, np, false);
            if (!P.z.present()) ws.prefetch.rows(Rows<T>(P.dy, u.b, next_head), adjoint, next.k0 - shift, kBlockSteps, np, false);
            ws.prefetch.rows(GradTargets<T>(P, u, next_head, reverse, !first).dB, adjoint, next.k0, kBlockSteps, nn, true);
            ws.prefetch.rows(Rows<T>(P.dx, u.b, next_head), adjoint, next.k0, kBlockSteps, np, true);
            if (next.new_block) prefetch_bc_rows<T>(ws.prefetch, P, u, adjoint, reverse, next.k0);
            for (int64_t s0 = 0, s1; s0 < nb; s0 = s1) {  // sub-blocks ending where an anchor may sit
                s1 = std::min(nb, s0 + ws.anchors[hl].to_prev(n - j0 - s0));
                rank1_scan_block<true>(s1 - s0, crows + s0 * npd, rb + s0 * pp, rc + s0 * pp, mult + s0, npd, pp,
                                       states_n + hl * state, out_n + s0 * npd,
                                       s0 == 0 ? ws.prefetch.get() : Prefetches{});
                const int64_t m = n - j0 - s1, a = ws.anchors[hl].at(m);  // states_n holds lambda_m / beta
                if (a >= 0) {
                    ws.anchor_glog[hl * max_anchors + a] =
                        decay[order.index(m)] * ws.step_scale[s1 - 1] * ws.anchor_scale[a * nh + hl] *
                        vdot(states_n + hl * state, anchor_states + (a * nh + hl) * state, state);
                }
            }
            rank1_scan_block(nb, rb, crows, brows, mult, pp, npd, states_p + hl * state, out_p);
            for (int64_t jj = 0; jj < nb; ++jj) {
                const int64_t k = n - 1 - (j0 + jj), i = order.index(k), t = u.begin + i;
                T* gB = out_n + jj * npd;  // dB_k without its own term C_k (gyhat_k . u_k)
                ws.dlog[hl * n + k] -= vdot(brows + jj * npd, gB, npd);
                add_own_term(gB, crows + jj * npd, rb + jj * pp, rc + jj * pp, npd, pp);
                store_row(out.dB, t, gB, nn, out.acc_dB);
                T* gu = out_p + jj * pp;
                for (int64_t p = 0; p < pp; ++p) gu[p] *= scale[jj];
                gather_row(xrow, hp.x, t, np, pp, T(1));
                ws.xgu[hl * n + k] = vdot(xrow, gu, pp);
                const T dte = T(dt_eff[i]);
                for (int64_t p = 0; p < np; ++p) gu[p] *= dte;  // gu is now this direction's dx
                if (first && with_D) {
                    gyp.row(hl, i, gyrow, T(1));
                    const T* d = drows + hl * pp;
                    double* dD = ws.dD.data() + hl * np;
                    for (int64_t p = 0; p < np; ++p) {
                        gu[p] += d[p] * gyrow[p];
                        dD[p] += double(gyrow[p] * xrow[p]);
                    }
                }
                store_row(dx, t, gu, np, !first);
            }
        }
    }

    // g(log a_k) = sum_{k' >= k} dlog_k' (log a_k = dt'_k A), then ddt and dA.
    for (int64_t hl = 0; hl < nh; ++hl) {
        const int64_t head = u.h0 + hl;
        const HeadParams<T> hp(P, u.b, head, reverse);
        const GradTargets<T> out(P, u, head, reverse, !first);
        const double* dt_eff = ws.schedule.dt_eff(reverse, hl);
        const double* dlog = ws.dlog.data() + hl * n;
        const double* anchor_glog = ws.anchor_glog.data() + hl * max_anchors;
        double dA = 0.0;
        const auto at_anchor = [&](int64_t k, double& value) {
            const int64_t a = ws.anchors[hl].at(k);
            if (a >= 0) value = anchor_glog[a];
            return a >= 0;
        };
        sweep_log_decay(n, P.quasi, [&](int64_t k) { return dlog[k]; }, at_anchor, [&](int64_t k, double glog) {
            const int64_t i = order.index(k), t = u.begin + i;
            dA += dt_eff[i] * glog;
            const double grad_eff = P.dt_softplus ? softplus_grad(double(hp.dt.at(t)) + hp.dt_bias) : 1.0;
            const double gdt = (hp.A * glog + ws.xgu[hl * n + k]) * grad_eff;
            T& dst = out.ddt.at(t);
            dst = out.acc_ddt ? T(dst + gdt) : T(gdt);
        });
        *out.dA = out.acc_dA ? T(*out.dA + dA) : T(dA);
    }
}

// dD partial sums of a unit (accumulated by the first direction).
template <typename T>
void store_dD(const ScanParams& P, const Unit& u, const BackwardScratch<T>& ws, bool empty) {
    if (!P.D.present()) return;
    for (int64_t hl = 0; hl < u.nh; ++hl) {
        T* out = static_cast<T*>(P.dD_part.ptr) + u.row * P.dD_part.stride[0] +
                 (u.h0 + hl) * P.dD_part.stride[1];
        for (int64_t p = 0; p < P.headdim; ++p) {
            out[p * P.dD_part.stride[2]] = empty ? T(0) : T(ws.dD[hl * P.headdim + p]);
        }
    }
}

// An empty sequence contributes nothing: its rows of the partial sums are zero.
template <typename T>
void zero_partials(const ScanParams& P, const Unit& u) {
    for (const ScanTensor* a : {&P.dA_part, &P.dA_rev_part}) {
        if (!a->present()) continue;
        for (int64_t hl = 0; hl < u.nh; ++hl) {
            static_cast<T*>(a->ptr)[u.row * a->stride[0] + (u.h0 + hl) * a->stride[1]] = T(0);
        }
    }
}

template <typename T>
void backward_unit(const ScanParams& P, const Unit& u) {
    static thread_local BackwardScratch<T> ws;
    if (u.len == 0) {
        zero_partials<T>(P, u);
        store_dD<T>(P, u, ws, true);
        return;
    }
    ws.schedule.template prepare<T>(P, u);
    const OutputGrad<T> gyp(P, u, ws);
    const bool fwd = P.directions & kScanForward, rev = P.directions & kScanReverse;
    if (fwd) backward_direction<T>(P, u, false, true, gyp, ws);
    if (rev) backward_direction<T>(P, u, true, !fwd, gyp, ws);
    store_dD<T>(P, u, ws, false);
}

template <typename T>
void backward_all(const ScanParams& P, int threads) {
    // per head and token: the schedule, dlog and xgu, and gyp when gated
    const int64_t bytes = kScheduleBytes + 2 * sizeof(double) + (P.z.present() ? padded(P.headdim) * sizeof(T) : 0);
    const UnitPlan plan(P, threads, bytes);
    parallel_for(plan.size(), [&](int64_t id) { backward_unit<T>(P, plan.unit(id)); });
}

}  // namespace

void scan_backward(const ScanParams& P, int threads) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: backward_all<float>(P, threads); break;
        case ScanDtype::kFloat64: backward_all<double>(P, threads); break;
        default: throw std::invalid_argument("cpu scan: dtype must be float32 or float64");
    }
}

}  // namespace cpu
}  // namespace mmhnet
