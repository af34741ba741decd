// Backward of the fused (bi)directional selective scan on CPU (maths: scan_params.h).
//
// Per task (one head of one sequence): if z is given, the pre-gate output is recomputed into
// dz (the forward pass) and turned into dz; gyp = dy * silu(z) is kept in scratch. Then, per
// direction, three rank-1 scans recompute what they need from the inputs:
//   F_n (processing order)          -> dC_k,
//   R_n and R_p (reversed order, sharing their rows) -> dB_k and du_k,
// and a scalar sweep turns g(log a_k) = sum_{k' >= k} (C.dC - B.dB) into ddt and dA.
#include <stdexcept>

#include "cpu_scan.h"
#include "cpu_vec_math.h"

namespace mmhnet {
namespace cpu {
namespace {

template <typename T>
struct BackwardScratch {
    Buffer<T> gyp, rows_v, rows_b, rows_c, rows_d, mult, scale, out_n, out_p, state_n, state_p;
    Buffer<T> row, row2, row3;
    std::vector<double> dt_eff, dlog, xgu, dD;
};

// Where one direction's gradients go: its own tensors, or the forward ones it shares (then
// accumulated when an earlier direction already wrote them).
template <typename T>
struct GradTargets {
    Rows<T> ddt, dB, dC;
    T* dA;
    bool acc_ddt, acc_dA, acc_dB, acc_dC;

    GradTargets(const ScanParams& P, const Task& task, bool reverse, bool earlier_direction) {
        const bool own_dt = reverse && P.dt_rev.present(), own_A = reverse && P.A_rev.present();
        const bool own_B = reverse && P.B_rev.present(), own_C = reverse && P.C_rev.present();
        ddt = Rows<T>::of_bl(own_dt ? P.ddt_rev : P.ddt, task.b, task.head);
        dB = Rows<T>(own_B ? P.dB_rev_heads : P.dB_heads, task.b, task.head);
        dC = Rows<T>(own_C ? P.dC_rev_heads : P.dC_heads, task.b, task.head);
        const ScanTensor& a = own_A ? P.dA_rev_part : P.dA_part;
        dA = static_cast<T*>(a.ptr) + task.row * a.stride[0] + task.head * a.stride[1];
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

// gyp_k of a direction: the output gradient its step k feeds (shifted in quasi mode).
template <typename T>
inline const T* step_grad(const T* gyp, int64_t pp, const DirectionView<T>& d, int64_t k, int64_t shift) {
    return k + shift < d.len ? gyp + (d.token(k + shift) - d.begin) * pp : nullptr;
}

template <typename T>
inline void scaled_copy(T* dst, const T* src, int64_t pad, T scale) {
    if (!src) {
        std::fill(dst, dst + pad, T(0));
        return;
    }
    for (int64_t i = 0; i < pad; ++i) dst[i] = src[i] * scale;
}

// gyp (and dz when gated) for the whole task; dD partial sums.
template <typename T>
void output_gradients(const ScanParams& P, const Task& task, T* gyp, BackwardScratch<T>& ws) {
    const int64_t np = P.headdim, pp = padded(np);
    const Rows<T> dy(P.dy, task.b, task.head), z(P.z, task.b, task.head);
    const Rows<T> dz(P.dz, task.b, task.head), x(P.x, task.b, task.head);
    if (z.present()) forward_task<T>(P, task, dz, false);  // dz <- pre-gate output
    T* gate = grown(ws.row, pp);
    T* dgate = grown(ws.row2, pp);
    T* xrow = grown(ws.row3, pp);
    double* dD = nullptr;
    if (P.D.present()) {
        ws.dD.assign(np, 0.0);
        dD = ws.dD.data();
    }
    for (int64_t i = 0; i < task.len; ++i) {
        const int64_t t = task.begin + i;
        T* g = gyp + i * pp;
        gather_row(g, dy, t, np, pp, T(1));
        if (z.present()) {
            gather_row(gate, z, t, np, pp, T(1));
            silu_row(gate, gate, dgate, pp);
            T* dzr = dz.row(t);
            const int64_t s = dz.inner_stride;
            for (int64_t p = 0; p < np; ++p) {
                dzr[p * s] = g[p] * dzr[p * s] * dgate[p];
                g[p] *= gate[p];
            }
        }
        if (dD) {
            gather_row(xrow, x, t, np, pp, T(1));
            for (int64_t p = 0; p < np; ++p) dD[p] += double(g[p] * xrow[p]);
        }
    }
    if (dD) {
        T* out = static_cast<T*>(P.dD_part.ptr) + task.row * P.dD_part.stride[0] +
                 task.head * P.dD_part.stride[1];
        for (int64_t p = 0; p < np; ++p) out[p * P.dD_part.stride[2]] = T(dD[p]);
    }
}

template <typename T>
void backward_direction(const ScanParams& P, const Task& task, bool reverse, bool first,
                        const T* gyp, BackwardScratch<T>& ws) {
    const DirectionView<T> d(P, task, reverse);
    const GradTargets<T> out(P, task, reverse, !first);
    const Rows<T> dx(P.dx, task.b, task.head);
    const int64_t n = task.len, np = P.headdim, nn = P.dstate;
    const int64_t pp = padded(np), npd = padded(nn);
    const int64_t shift = P.quasi ? 1 : 0;

    ws.dt_eff.resize(n);
    ws.dlog.assign(n, 0.0);
    ws.xgu.resize(n);
    double* dt_eff = ws.dt_eff.data();
    double* dlog = ws.dlog.data();  // C.dC - B.dB per step
    double* xgu = ws.xgu.data();    // x . du per step
    for (int64_t k = 0; k < n; ++k) dt_eff[k] = d.dt_eff(k);

    T* rv = grown(ws.rows_v, kBlockSteps * std::max(pp, npd));
    T* rb = grown(ws.rows_b, kBlockSteps * std::max(pp, npd));
    T* rc = grown(ws.rows_c, kBlockSteps * std::max(pp, npd));
    T* rd = grown(ws.rows_d, kBlockSteps * npd);
    T* mult = grown(ws.mult, kBlockSteps);
    T* scale = grown(ws.scale, kBlockSteps);
    T* out_n = grown(ws.out_n, kBlockSteps * npd);
    T* out_p = grown(ws.out_p, kBlockSteps * pp);
    T* state_n = grown(ws.state_n, pp * npd);
    T* state_p = grown(ws.state_p, pp * npd);
    T* crow = grown(ws.row, npd);
    T* xrow = grown(ws.row2, pp);
    T* drow = grown(ws.row3, pp);
    if (P.D.present()) {
        const T* D = static_cast<const T*>(P.D.ptr) + task.head * P.D.stride[0];
        for (int64_t p = 0; p < np; ++p) drow[p] = P.d_per_channel ? D[p * P.D.stride[1]] : D[0];
    }

    // F_n: state over (j = p, i = n); v = B, b = u / alpha, c = gyhat * alpha -> dC.
    {
        std::fill(state_n, state_n + pp * npd, T(0));
        Rescale<T> rescale;
        for (int64_t k0 = 0; k0 < n; k0 += kBlockSteps) {
            const int64_t nb = std::min(kBlockSteps, n - k0);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t k = k0 + kk, t = d.token(k);
                double alpha;
                mult[kk] = rescale.step(dt_eff[k] * d.A, alpha);
                gather_row(rv + kk * npd, d.B, t, nn, npd, T(1));
                gather_row(rb + kk * pp, d.x, t, np, pp, T(dt_eff[k] / alpha));
                scaled_copy(rc + kk * pp, step_grad(gyp, pp, d, k, shift), pp, T(alpha));
            }
            rank1_scan_block(nb, rv, rb, rc, mult, npd, pp, state_n, out_n);
            for (int64_t kk = 0; kk < nb; ++kk) {
                const int64_t k = k0 + kk, t = d.token(k);
                const T* g = out_n + kk * npd;
                gather_row(crow, d.C, t, nn, npd, T(1));
                dlog[k] += vdot(crow, g, npd);
                store_row(out.dC, t, g, nn, out.acc_dC);
            }
        }
    }

    // R_n and R_p: the adjoint state over the reversed order j = n - 1 - k, whose step j decays
    // by a_{k+1}. Rows: rv = C, rb = gyhat / beta, rc = u * beta, rd = B.
    //   R_n: v = C, b = gyhat / beta, c = u * beta   -> dB     (i = n, j = p)
    //   R_p: v = gyhat / beta, b = C, c = B          -> du / beta (i = p, j = n)
    {
        std::fill(state_n, state_n + pp * npd, T(0));
        std::fill(state_p, state_p + pp * npd, T(0));
        Rescale<T> rescale;
        for (int64_t j0 = 0; j0 < n; j0 += kBlockSteps) {
            const int64_t nb = std::min(kBlockSteps, n - j0);
            for (int64_t jj = 0; jj < nb; ++jj) {
                const int64_t k = n - 1 - (j0 + jj), t = d.token(k);
                double beta;
                mult[jj] = rescale.step(k + 1 < n ? dt_eff[k + 1] * d.A : 0.0, beta);
                scale[jj] = T(beta);
                gather_row(rv + jj * npd, d.C, t, nn, npd, T(1));
                scaled_copy(rb + jj * pp, step_grad(gyp, pp, d, k, shift), pp, T(1.0 / beta));
                gather_row(rc + jj * pp, d.x, t, np, pp, T(dt_eff[k] * beta));
                gather_row(rd + jj * npd, d.B, t, nn, npd, T(1));
            }
            rank1_scan_block(nb, rv, rb, rc, mult, npd, pp, state_n, out_n);
            rank1_scan_block(nb, rb, rv, rd, mult, pp, npd, state_p, out_p);
            for (int64_t jj = 0; jj < nb; ++jj) {
                const int64_t k = n - 1 - (j0 + jj), t = d.token(k);
                const T* gB = out_n + jj * npd;
                dlog[k] -= vdot(rd + jj * npd, gB, npd);
                store_row(out.dB, t, gB, nn, out.acc_dB);
                T* gu = out_p + jj * pp;
                for (int64_t p = 0; p < np; ++p) gu[p] *= scale[jj];
                gather_row(xrow, d.x, t, np, pp, T(1));
                xgu[k] = vdot(xrow, gu, pp);
                const T dte = T(dt_eff[k]);
                T* dxr = dx.row(t);
                const int64_t s = dx.inner_stride;
                if (first) {
                    const T* g = gyp + (t - task.begin) * pp;
                    if (P.D.present()) {
                        for (int64_t p = 0; p < np; ++p) dxr[p * s] = drow[p] * g[p] + dte * gu[p];
                    } else {
                        for (int64_t p = 0; p < np; ++p) dxr[p * s] = dte * gu[p];
                    }
                } else {
                    for (int64_t p = 0; p < np; ++p) dxr[p * s] += dte * gu[p];
                }
            }
        }
    }

    // g(log a_k) = sum_{k' >= k} dlog_k'; log a_k = dt'_k A.
    double glog = 0.0, dA = 0.0;
    for (int64_t k = n - 1; k >= 0; --k) {
        glog += dlog[k];
        dA += dt_eff[k] * glog;
        const double gdt = (d.A * glog + xgu[k]) * d.dt_eff_grad(k);
        T& dst = out.ddt.at(d.token(k));
        dst = out.acc_ddt ? T(dst + gdt) : T(gdt);
    }
    *out.dA = out.acc_dA ? T(*out.dA + dA) : T(dA);
}

template <typename T>
void backward_task(const ScanParams& P, const Task& task) {
    static thread_local BackwardScratch<T> ws;
    T* gyp = grown(ws.gyp, task.len * padded(P.headdim));
    output_gradients<T>(P, task, gyp, ws);
    const bool fwd = P.directions & kScanForward, rev = P.directions & kScanReverse;
    if (fwd) backward_direction<T>(P, task, false, true, gyp, ws);
    if (rev) backward_direction<T>(P, task, true, !fwd, gyp, ws);
}

// An empty sequence contributes nothing: its rows of the partial sums are zero.
template <typename T>
void zero_partials(const ScanParams& P, const Task& task) {
    for (const ScanTensor* a : {&P.dA_part, &P.dA_rev_part}) {
        if (a->present()) static_cast<T*>(a->ptr)[task.row * a->stride[0] + task.head * a->stride[1]] = T(0);
    }
    if (P.dD_part.present()) {
        T* out = static_cast<T*>(P.dD_part.ptr) + task.row * P.dD_part.stride[0] +
                 task.head * P.dD_part.stride[1];
        for (int64_t p = 0; p < P.headdim; ++p) out[p * P.dD_part.stride[2]] = T(0);
    }
}

template <typename T>
void backward_all(const ScanParams& P) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t id = 0; id < P.ntasks(); ++id) {
        const Task task(P, id);
        if (task.len > 0) {
            backward_task<T>(P, task);
        } else {
            zero_partials<T>(P, task);
        }
    }
}

}  // namespace

void scan_backward(const ScanParams& P) {
    switch (P.dtype) {
        case ScanDtype::kFloat32: backward_all<float>(P); break;
        case ScanDtype::kFloat64: backward_all<double>(P); break;
        default: throw std::invalid_argument("cpu scan: dtype must be float32 or float64");
    }
}

}  // namespace cpu
}  // namespace mmhnet
