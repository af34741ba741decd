// Bindings of the CUDA routing kernels into mmhnet._C_cuda (contracts: csrc/cpu/routing_kernels.h,
// plus the CUDA stream as the last argument).
#include <pybind11/pybind11.h>

#include "cuda/routing_kernels.h"
#include "registry.h"

namespace py = pybind11;

namespace mmhnet {

void register_routing_cuda_kernels(py::module_& m) {
    using namespace routing_cuda;
    auto nogil = py::call_guard<py::gil_scoped_release>();
    m.def("routing_boundaries", &boundaries_forward, nogil, py::arg("q"), py::arg("k"),
          py::arg("cu_seqlens"), py::arg("nseq"), py::arg("total"), py::arg("dim"),
          py::arg("dtype"), py::arg("p"), py::arg("mask"), py::arg("stream"),
          "Fused boundary probabilities p and mask (one warp per token).");
    m.def("routing_boundaries_bwd", &boundaries_backward, nogil, py::arg("dp"), py::arg("q"),
          py::arg("k"), py::arg("cu_seqlens"), py::arg("nseq"), py::arg("total"), py::arg("dim"),
          py::arg("dtype"), py::arg("dq"), py::arg("dk"), py::arg("stream"),
          "Backward of routing_boundaries.");
    m.def("routing_chunk_index", &chunk_index, nogil, py::arg("mask"), py::arg("cu_seqlens"),
          py::arg("nseq"), py::arg("total"), py::arg("chunk_id"), py::arg("chunk_cu_seqlens"),
          py::arg("stream"), "chunk_id (single-pass ballot / prefix-sum scan) and chunk_cu_seqlens.");
    m.def("routing_route_index", &route_index, nogil, py::arg("q"), py::arg("k"),
          py::arg("cu_seqlens"), py::arg("nseq"), py::arg("total"), py::arg("dim"),
          py::arg("dtype"), py::arg("p"), py::arg("mask"), py::arg("chunk_id"),
          py::arg("chunk_cu_seqlens"), py::arg("stream"),
          "routing_boundaries and routing_chunk_index in one pass (p, mask, chunk_id, chunk_cu).");
    m.def("routing_compact_rows", &compact_rows, nogil, py::arg("x"), py::arg("mask"),
          py::arg("chunk_id"), py::arg("total"), py::arg("num_chunks"), py::arg("row_bytes"),
          py::arg("out"), py::arg("stream"), "Copy the boundary rows of x to out[chunk_id].");
    m.def("routing_gather_rows", &gather_rows, nogil, py::arg("src"), py::arg("index"),
          py::arg("index_is64"), py::arg("keep"), py::arg("n"), py::arg("rows"),
          py::arg("row_bytes"), py::arg("out"), py::arg("stream"),
          "out[i] = src[index[i]] (0 where keep is false).");
    m.def("routing_segment_sum", &segment_sum, nogil, py::arg("src"), py::arg("seg_id"),
          py::arg("seg_is64"), py::arg("order"), py::arg("n"), py::arg("num_segments"),
          py::arg("dim"), py::arg("dtype"), py::arg("dense"), py::arg("out"), py::arg("stream"),
          "Deterministic sum of the rows of each segment (seg_id non-decreasing).");
    m.def("routing_confidence_grad", &confidence_grad, nogil, py::arg("dz"), py::arg("z_chunks"),
          py::arg("chunk_id"), py::arg("id_is64"), py::arg("mask"), py::arg("total"),
          py::arg("num_chunks"), py::arg("dim"), py::arg("dtype"), py::arg("dp"),
          py::arg("stream"), "Gradient of chunk_scatter's confidence straight-through estimator.");
}

}  // namespace mmhnet
