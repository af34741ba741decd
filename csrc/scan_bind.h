// Python -> ScanParams, shared by the CPU and CUDA bindings. No torch: the Python side passes
//     dtype:   "float32" | "float64" | "float16" | "bfloat16"  (storage dtype of x)
//     sizes:   (batch, seqlen, nheads, headdim, ngroups, dstate, nseq)
//     tensors: {name: (data_ptr, (stride, ...))}  one entry per present tensor, strides in
//              elements, one per dimension (so D's rank tells (h,) from (h, p))
// and the flags. Names and ranks are checked here; shapes and dtypes were checked in Python.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

#include "scan_params.h"

namespace mmhnet {

struct ScanOperand {
    ScanTensor ScanParams::*field;
    int rank;  // 0: rank 1 or 2 (D)
};

inline const std::map<std::string, ScanOperand>& scan_operands() {
    static const std::map<std::string, ScanOperand> table = {
        {"x", {&ScanParams::x, 4}},           {"dt", {&ScanParams::dt, 3}},
        {"A", {&ScanParams::A, 1}},           {"B", {&ScanParams::B, 4}},
        {"C", {&ScanParams::C, 4}},           {"D", {&ScanParams::D, 0}},
        {"z", {&ScanParams::z, 4}},           {"dt_bias", {&ScanParams::dt_bias, 1}},
        {"dt_rev", {&ScanParams::dt_rev, 3}}, {"A_rev", {&ScanParams::A_rev, 1}},
        {"B_rev", {&ScanParams::B_rev, 4}},   {"C_rev", {&ScanParams::C_rev, 4}},
        {"y", {&ScanParams::y, 4}},           {"dy", {&ScanParams::dy, 4}},
        {"dx", {&ScanParams::dx, 4}},         {"dz", {&ScanParams::dz, 4}},
        {"ddt", {&ScanParams::ddt, 3}},       {"ddt_rev", {&ScanParams::ddt_rev, 3}},
        {"dA_part", {&ScanParams::dA_part, 2}},
        {"dA_rev_part", {&ScanParams::dA_rev_part, 2}},
        {"dD_part", {&ScanParams::dD_part, 3}},
        {"dB_heads", {&ScanParams::dB_heads, 4}},
        {"dC_heads", {&ScanParams::dC_heads, 4}},
        {"dB_rev_heads", {&ScanParams::dB_rev_heads, 4}},
        {"dC_rev_heads", {&ScanParams::dC_rev_heads, 4}},
        {"ws_yhat", {&ScanParams::ws_yhat, 1}},   {"ws_gyp", {&ScanParams::ws_gyp, 1}},
        {"ws_dx", {&ScanParams::ws_dx, 1}},       {"ws_dlog", {&ScanParams::ws_dlog, 1}},
        {"ws_xgu", {&ScanParams::ws_xgu, 1}},
        {"ws_anchor_state", {&ScanParams::ws_anchor_state, 1}},
        {"ws_anchor_glog", {&ScanParams::ws_anchor_glog, 1}},
    };
    return table;
}

inline ScanDtype parse_scan_dtype(const std::string& name) {
    if (name == "float32") return ScanDtype::kFloat32;
    if (name == "float64") return ScanDtype::kFloat64;
    if (name == "float16") return ScanDtype::kFloat16;
    if (name == "bfloat16") return ScanDtype::kBFloat16;
    throw std::invalid_argument("scan: unknown dtype '" + name + "'");
}

inline ScanParams scan_params_from_python(const std::string& dtype, const pybind11::tuple& sizes,
                                          const pybind11::dict& tensors, bool dt_softplus,
                                          int directions, bool quasi) {
    namespace py = pybind11;
    ScanParams P;
    P.dtype = parse_scan_dtype(dtype);
    if (sizes.size() != 7) throw std::invalid_argument("scan: sizes must hold 7 integers");
    P.batch = sizes[0].cast<int64_t>();
    P.seqlen = sizes[1].cast<int64_t>();
    P.nheads = sizes[2].cast<int64_t>();
    P.headdim = sizes[3].cast<int64_t>();
    P.ngroups = sizes[4].cast<int64_t>();
    P.dstate = sizes[5].cast<int64_t>();
    P.nseq = sizes[6].cast<int64_t>();
    if (P.batch < 1 || P.seqlen < 1 || P.nheads < 1 || P.headdim < 1 || P.ngroups < 1 ||
        P.dstate < 0 || P.nseq < 1 || P.nheads % P.ngroups != 0) {
        throw std::invalid_argument("scan: invalid sizes");
    }
    if (directions < kScanForward || directions > kScanBoth) {
        throw std::invalid_argument("scan: directions must be 1, 2 or 3");
    }
    P.dt_softplus = dt_softplus;
    P.directions = directions;
    P.quasi = quasi;
    for (auto item : tensors) {
        const std::string name = py::str(item.first);
        const auto entry = item.second.cast<py::tuple>();
        const auto ptr = entry[0].cast<uintptr_t>();
        const auto strides = entry[1].cast<py::tuple>();
        if (name == "cu_seqlens") {
            if (strides.size() != 1 || strides[0].cast<int64_t>() != 1) {
                throw std::invalid_argument("scan: cu_seqlens must be a contiguous 1-D tensor");
            }
            P.cu_seqlens = reinterpret_cast<const int32_t*>(ptr);
            continue;
        }
        const auto found = scan_operands().find(name);
        if (found == scan_operands().end()) throw std::invalid_argument("scan: unknown tensor '" + name + "'");
        const int rank = static_cast<int>(strides.size());
        const int want = found->second.rank;
        if (want ? rank != want : (rank != 1 && rank != 2)) {
            throw std::invalid_argument("scan: tensor '" + name + "' has the wrong rank");
        }
        ScanTensor& t = P.*(found->second.field);
        t.ptr = reinterpret_cast<void*>(ptr);
        for (int i = 0; i < rank; ++i) t.stride[i] = strides[i].cast<int64_t>();
        if (name == "D") P.d_per_channel = rank == 2;
    }
    if (!P.cu_seqlens && P.nseq != 1) throw std::invalid_argument("scan: nseq > 1 needs cu_seqlens");
    if (P.cu_seqlens && P.batch != 1) throw std::invalid_argument("scan: cu_seqlens needs batch 1");
    return P;
}

inline void require_tensors(const ScanParams& P, std::initializer_list<std::pair<const char*, const ScanTensor*>> list) {
    for (const auto& item : list) {
        if (!item.second->present()) throw std::invalid_argument(std::string("scan: missing tensor '") + item.first + "'");
    }
}

// The tensors every forward / backward call needs, and the outputs its options call for.
inline void check_forward_tensors(const ScanParams& P) {
    require_tensors(P, {{"x", &P.x}, {"dt", &P.dt}, {"A", &P.A}, {"B", &P.B}, {"C", &P.C}, {"y", &P.y}});
}

inline void check_backward_tensors(const ScanParams& P) {
    require_tensors(P, {{"x", &P.x}, {"dt", &P.dt}, {"A", &P.A}, {"B", &P.B}, {"C", &P.C},
                        {"dy", &P.dy}, {"dx", &P.dx}, {"ddt", &P.ddt}, {"dA_part", &P.dA_part},
                        {"dB_heads", &P.dB_heads}, {"dC_heads", &P.dC_heads}});
    const bool rev = P.directions & kScanReverse;
    if (P.D.present()) require_tensors(P, {{"dD_part", &P.dD_part}});
    if (P.z.present()) require_tensors(P, {{"dz", &P.dz}});
    if (rev && P.dt_rev.present()) require_tensors(P, {{"ddt_rev", &P.ddt_rev}});
    if (rev && P.A_rev.present()) require_tensors(P, {{"dA_rev_part", &P.dA_rev_part}});
    if (rev && P.B_rev.present()) require_tensors(P, {{"dB_rev_heads", &P.dB_rev_heads}});
    if (rev && P.C_rev.present()) require_tensors(P, {{"dC_rev_heads", &P.dC_rev_heads}});
}

}  // namespace mmhnet
