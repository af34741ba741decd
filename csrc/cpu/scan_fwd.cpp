// Forward of the fused (bi)directional selective scan on CPU (maths: scan_params.h).
//
// One task = one head of one sequence. Both directions run inside the task, one after the
// other (their recurrences go opposite ways), over the same cache-resident inputs; the first
// writes y = its contribution + D x, the last adds its own and applies the z gate, so y is
// written once per direction and never read back from DRAM.
#include <stdexcept>

#include "cpu_scan.h"
#include "cpu_vec_math.h"

namespace mmhnet {
namespace cpu {
namespace {

template <typename T>
struct ForwardScratch {
    Buffer<T> v, b, c, mult, scale, out, state, xrow, zrow, drow, acc;
};

// Combines the directions' contributions into the output rows of one task.
template <typename T>
class OutputWriter {
  public:
    OutputWriter(const ScanParams& P, const Task& task, const Rows<T>& out, bool gate,
                 ForwardScratch<T>& ws)
        : x_(P.x, task.b, task.head), z_(gate ? Rows<T>(P.z, task.b, task.head) : Rows<T>()),
          out_(out), np_(P.headdim), pp_(padded(P.headdim)) {
        xrow_ = grown(ws.xrow, pp_);
        zrow_ = grown(ws.zrow, pp_);
        acc_ = grown(ws.acc, pp_);
        if (P.D.present()) {
            drow_ = grown(ws.drow, pp_);
            const T* D = static_cast<const T*>(P.D.ptr) + task.head * P.D.stride[0];
            for (int64_t p = 0; p < np_; ++p) drow_[p] = P.d_per_channel ? D[p * P.D.stride[1]] : D[0];
        }
    }

    // Token t receives `contrib` (nullptr: nothing) from a direction. The first direction adds
    // D x; the last applies the gate.
    void emit(int64_t t, const T* contrib, bool first, bool last) {
        T* o = out_.row(t);
        const int64_t os = out_.inner_stride;
        for (int64_t p = 0; p < np_; ++p) acc_[p] = contrib ? contrib[p] : T(0);
        if (first) {
            if (drow_) {
                gather_row(xrow_, x_, t, np_, pp_, T(1));
                for (int64_t p = 0; p < np_; ++p) acc_[p] += drow_[p] * xrow_[p];
            }
        } else {
            for (int64_t p = 0; p < np_; ++p) acc_[p] += o[p * os];
        }
        if (last && z_.present()) {
            gather_row(zrow_, z_, t, np_, pp_, T(1));
            silu_row(zrow_, zrow_, static_cast<T*>(nullptr), pp_);
            for (int64_t p = 0; p < np_; ++p) acc_[p] *= zrow_[p];
        }
        for (int64_t p = 0; p < np_; ++p) o[p * os] = acc_[p];
    }

  private:
    Rows<T> x_, z_, out_;
    int64_t np_, pp_;
    T *xrow_, *zrow_, *acc_, *drow_ = nullptr;
};

template <typename T>
void forward_direction(const ScanParams& P, const Task& task, bool reverse, bool first, bool last,
                       OutputWriter<T>& writer, ForwardScratch<T>& ws) {
    const DirectionView<T> d(P, task, reverse);
    const int64_t n = task.len, np = P.headdim, nn = P.dstate;
    const int64_t pp = padded(np), npd = padded(nn);
    const int64_t shift = P.quasi ? 1 : 0;
    T* state = grown(ws.state, npd * pp);
    std::fill(state, state + npd * pp, T(0));
    T* v = grown(ws.v, kBlockSteps * pp);
    T* b = grown(ws.b, kBlockSteps * npd);
    T* c = grown(ws.c, kBlockSteps * npd);
    T* out = grown(ws.out, kBlockSteps * pp);
    T* mult = grown(ws.mult, kBlockSteps);
    T* scale = grown(ws.scale, kBlockSteps);
    Rescale<T> rescale;
    if (shift) writer.emit(d.token(0), nullptr, first, last);  // quasi: yhat_{-1} = 0
    for (int64_t k0 = 0; k0 < n; k0 += kBlockSteps) {
        const int64_t nb = std::min(kBlockSteps, n - k0);
        for (int64_t kk = 0; kk < nb; ++kk) {
            const int64_t t = d.token(k0 + kk);
            const double dt_eff = d.dt_eff(k0 + kk);
            double alpha;
            mult[kk] = rescale.step(dt_eff * d.A, alpha);
            scale[kk] = T(alpha);
            gather_row(v + kk * pp, d.x, t, np, pp, T(dt_eff / alpha));
            gather_row(b + kk * npd, d.B, t, nn, npd, T(1));
            gather_row(c + kk * npd, d.C, t, nn, npd, T(1));
        }
        rank1_scan_block(nb, v, b, c, mult, pp, npd, state, out);
        for (int64_t kk = 0; kk < nb; ++kk) {
            const int64_t k = k0 + kk;
            if (k + shift >= n) continue;
            T* o = out + kk * pp;
            for (int64_t p = 0; p < np; ++p) o[p] *= scale[kk];
            writer.emit(d.token(k + shift), o, first, last);
        }
    }
}

template <typename T>
void forward_all(const ScanParams& P) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t id = 0; id < P.ntasks(); ++id) {
        const Task task(P, id);
        if (task.len == 0) continue;
        forward_task<T>(P, task, Rows<T>(P.y, task.b, task.head), true);
    }
}

}  // namespace

template <typename T>
void forward_task(const ScanParams& P, const Task& task, const Rows<T>& out, bool gate) {
    static thread_local ForwardScratch<T> ws;
    OutputWriter<T> writer(P, task, out, gate, ws);
    const bool fwd = P.directions & kScanForward, rev = P.directions & kScanReverse;
    if (fwd) forward_direction<T>(P, task, false, true, !rev, writer, ws);
    if (rev) forward_direction<T>(P, task, true, !fwd, true, writer, ws);
}

template void forward_task<float>(const ScanParams&, const Task&, const Rows<float>&, bool);
template void forward_task<double>(const ScanParams&, const Task&, const Rows<double>&, bool);

void scan_forward(const ScanParams& P) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: forward_all<float>(P); break;
        case ScanDtype::kFloat64: forward_all<double>(P); break;
        default: throw std::invalid_argument("cpu scan: dtype must be float32 or float64");
    }
}

}  // namespace cpu
}  // namespace mmhnet
