// Forward of the fused (bi)directional selective scan on CPU (maths: scan_params.h).
//
// One unit = some adjacent heads of one sequence (cpu_scan_units.h). Both directions run
// inside the unit, one after the other (their recurrences go opposite ways), with dt' and the
// decays computed once for both and the B/C rows of a block gathered once for all heads. The
// first of two directions writes its raw output into y; the last adds its own, D x and the
// gate in the same pass over y.
#include <stdexcept>

#include "cpu_scan.h"
#include "cpu_vec_math.h"

namespace mmhnet {
namespace cpu {
namespace {

template <typename T>
struct ForwardScratch {
    UnitSchedule schedule;
    std::vector<Rescale<T>> rescale;
    PrefetchList prefetch;
    Buffer<T> v, bsh, csh, out, state, mult, scale, xrow, zrow, acc, drows;
};

// Combines the directions' contributions into the output rows of one unit.
template <typename T>
class OutputWriter {
  public:
    OutputWriter(const ScanParams& P, const Unit& u, const ScanTensor& out, bool gate, ForwardScratch<T>& ws)
        : P_(P), u_(u), out_(out), gate_(gate && P.z.present()), np_(P.headdim), pp_(padded(P.headdim)) {
        xrow_ = grown(ws.xrow, pp_);
        zrow_ = grown(ws.zrow, pp_);
        acc_ = grown(ws.acc, pp_);
        if (P.D.present()) {
            drows_ = grown(ws.drows, u.nh * pp_);
            for (int64_t hl = 0; hl < u.nh; ++hl) {
                const T* D = static_cast<const T*>(P.D.ptr) + (u.h0 + hl) * P.D.stride[0];
                for (int64_t p = 0; p < np_; ++p) {
                    drows_[hl * pp_ + p] = P.d_per_channel ? D[p * P.D.stride[1]] : D[0];
                }
            }
        }
    }

    // Head h0 + hl, time index i receives `contrib` (nullptr: nothing) from a direction.
    void emit(int64_t hl, int64_t i, const T* contrib, bool first, bool last) {
        const int64_t head = u_.h0 + hl, t = u_.begin + i;
        const Rows<T> out(out_, u_.b, head);
        T* o = out.row(t);
        const int64_t os = out.inner_stride;
        for (int64_t p = 0; p < np_; ++p) acc_[p] = contrib ? contrib[p] : T(0);
        if (last) {
            if (!first) {
                for (int64_t p = 0; p < np_; ++p) acc_[p] += o[p * os];
            }
            if (drows_) {
                gather_row(xrow_, Rows<T>(P_.x, u_.b, head), t, np_, pp_, T(1));
                const T* d = drows_ + hl * pp_;
                for (int64_t p = 0; p < np_; ++p) acc_[p] += d[p] * xrow_[p];
            }
            if (gate_) {
                gather_row(zrow_, Rows<T>(P_.z, u_.b, head), t, np_, pp_, T(1));
                silu_row(zrow_, zrow_, static_cast<T*>(nullptr), pp_);
                for (int64_t p = 0; p < np_; ++p) acc_[p] *= zrow_[p];
            }
        }
        if (os == 1) {
            for (int64_t p = 0; p < np_; ++p) o[p] = acc_[p];
        } else {
            for (int64_t p = 0; p < np_; ++p) o[p * os] = acc_[p];
        }
    }

  private:
    const ScanParams& P_;
    const Unit& u_;
    const ScanTensor& out_;
    bool gate_;
    int64_t np_, pp_;
    T *xrow_, *zrow_, *acc_, *drows_ = nullptr;
};

template <typename T>
void forward_direction(const ScanParams& P, const Unit& u, const ScanTensor& out_t, bool gate,
                       bool reverse, bool first, bool last, OutputWriter<T>& writer,
                       ForwardScratch<T>& ws) {
    const Order order{reverse, u.begin, u.len};
    const int64_t n = u.len, np = P.headdim, nn = P.dstate;
    const int64_t pp = padded(np), npd = padded(nn);
    const int64_t shift = P.quasi ? 1 : 0;
    T* states = grown(ws.state, u.nh * npd * pp);
    std::fill(states, states + u.nh * npd * pp, T(0));
    T* v = grown(ws.v, kBlockSteps * pp);
    T* out = grown(ws.out, kBlockSteps * pp);
    T* mult = grown(ws.mult, kBlockSteps);
    T* scale = grown(ws.scale, kBlockSteps);
    ws.rescale.assign(u.nh, Rescale<T>());
    SharedRows<T> rows;
    if (shift) {  // quasi: the first token of the direction gets yhat_{-1} = 0
        for (int64_t hl = 0; hl < u.nh; ++hl) writer.emit(hl, order.index(0), nullptr, first, last);
    }
    for (int64_t k0 = 0; k0 < n; k0 += kBlockSteps) {
        const int64_t nb = std::min(kBlockSteps, n - k0);
        rows.gather(P, u, order, reverse, k0, nb, ws.bsh, ws.csh);
        for (int64_t hl = 0; hl < u.nh; ++hl) {
            const HeadParams<T> hp(P, u.b, u.h0 + hl, reverse);
            const double* dt_eff = ws.schedule.dt_eff(reverse, hl);
            const double* decay = ws.schedule.decay(reverse, hl);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t i = order.index(k0 + kk);
                double alpha;
                mult[kk] = ws.rescale[hl].step(decay[i], alpha);
                scale[kk] = T(alpha);
                gather_row(v + kk * pp, hp.x, u.begin + i, np, pp, T(dt_eff[i] / alpha));
            }
            const NextWork next(hl, k0, nb, u.nh);
            ws.prefetch.clear();
            const int64_t head = u.h0 + next.hl;
            ws.prefetch.rows(Rows<T>(P.x, u.b, head), order, next.k0, kBlockSteps, np, false);
            ws.prefetch.rows(Rows<T>(out_t, u.b, head), order, next.k0 + shift, kBlockSteps, np, true);
            if (last && gate) ws.prefetch.rows(Rows<T>(P.z, u.b, head), order, next.k0 + shift, kBlockSteps, np, false);
            if (next.new_block) prefetch_bc_rows<T>(ws.prefetch, P, u, order, reverse, next.k0);
            rank1_scan_block(nb, v, rows.b_of(hp.group), rows.c_of(hp.group), mult, pp, npd,
                             states + hl * npd * pp, out, ws.prefetch.get());
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t k = k0 + kk;
                if (k + shift >= n) continue;
                T* o = out + kk * pp;
                for (int64_t p = 0; p < np; ++p) o[p] *= scale[kk];
                writer.emit(hl, order.index(k + shift), o, first, last);
            }
        }
    }
}

template <typename T>
void forward_all(const ScanParams& P, int threads) {
    const UnitPlan plan(P, threads, kScheduleBytes);
    parallel_for(plan.size(), [&](int64_t id) {
        const Unit u = plan.unit(id);
        if (u.len > 0) forward_unit<T>(P, u, P.y, true);
    });
}

}  // namespace

template <typename T>
void forward_unit(const ScanParams& P, const Unit& u, const ScanTensor& out, bool gate) {
    static thread_local ForwardScratch<T> ws;
    ws.schedule.template prepare<T>(P, u);
    OutputWriter<T> writer(P, u, out, gate, ws);
    const bool fwd = P.directions & kScanForward, rev = P.directions & kScanReverse;
    if (fwd) forward_direction<T>(P, u, out, gate, false, true, !rev, writer, ws);
    if (rev) forward_direction<T>(P, u, out, gate, true, !fwd, true, writer, ws);
}

template void forward_unit<float>(const ScanParams&, const Unit&, const ScanTensor&, bool);
template void forward_unit<double>(const ScanParams&, const Unit&, const ScanTensor&, bool);

void scan_forward(const ScanParams& P, int threads) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: forward_all<float>(P, threads); break;
        case ScanDtype::kFloat64: forward_all<double>(P, threads); break;
        default: throw std::invalid_argument("cpu scan: dtype must be float32 or float64");
    }
}

}  // namespace cpu
}  // namespace mmhnet
