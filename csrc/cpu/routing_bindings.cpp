// Bindings of the CPU routing kernels into mmhnet._C (see routing_kernels.h for the contracts).
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/routing_common.h"
#include "cpu/routing_kernels.h"
#include "registry.h"

namespace py = pybind11;

namespace mmhnet {

void register_routing_cpu_kernels(py::module_& m) {
    using namespace routing;
    // the kernels only touch raw buffers: let other Python threads run meanwhile
    auto nogil = py::call_guard<py::gil_scoped_release>();
    m.def("routing_boundaries", &boundaries_forward, nogil, py::arg("q"), py::arg("k"),
          py::arg("cu_seqlens"), py::arg("nseq"), py::arg("total"), py::arg("dim"),
          py::arg("dtype"), py::arg("p"), py::arg("mask"), py::arg("stats"),
          "Boundary probabilities p (compute type) and mask of adjacent tokens, and the "
          "per-token statistics the backward reuses.");
    m.def("routing_boundaries_bwd", &boundaries_backward, nogil, py::arg("dp"), py::arg("q"),
          py::arg("k"), py::arg("cu_seqlens"), py::arg("nseq"), py::arg("total"), py::arg("dim"),
          py::arg("dtype"), py::arg("stats"), py::arg("dq"), py::arg("dk"),
          "Backward of routing_boundaries (with the forward's statistics).");
    m.def("routing_chunk_index", &chunk_index, nogil, py::arg("mask"), py::arg("cu_seqlens"),
          py::arg("nseq"), py::arg("total"), py::arg("chunk_id"), py::arg("chunk_cu_seqlens"),
          "chunk_id and chunk_cu_seqlens from a prefix sum of the boundary mask.");
    m.def("routing_compact_rows", &compact_rows, nogil, py::arg("x"), py::arg("mask"),
          py::arg("chunk_id"), py::arg("total"), py::arg("num_chunks"), py::arg("row_bytes"),
          py::arg("out"), "Copy the boundary rows of x to out[chunk_id].");
    m.def("routing_gather_rows", &gather_rows, nogil, py::arg("src"), py::arg("index"),
          py::arg("index_is64"), py::arg("keep"), py::arg("n"), py::arg("rows"),
          py::arg("row_bytes"), py::arg("out"), "out[i] = src[index[i]] (0 where keep is false).");
    m.def("routing_segment_sum", &segment_sum, nogil, py::arg("src"), py::arg("seg_id"),
          py::arg("seg_is64"), py::arg("order"), py::arg("n"), py::arg("num_segments"),
          py::arg("dim"), py::arg("dtype"), py::arg("dense"), py::arg("out"),
          "Deterministic sum of the rows of each segment (seg_id non-decreasing).");
    m.def("routing_scatter_backward", &scatter_backward, nogil, py::arg("dz"),
          py::arg("chunk_id"), py::arg("id_is64"), py::arg("total"), py::arg("num_chunks"),
          py::arg("dim"), py::arg("dtype"), py::arg("z_chunks"), py::arg("mask"),
          py::arg("dz_chunks"), py::arg("dp"),
          "chunk_scatter's backward: per-chunk sums of dz and the confidence gradient, one pass.");
    m.def("routing_ema", &ema_forward, nogil, py::arg("z"), py::arg("p"), py::arg("cu_seqlens"),
          py::arg("nseq"), py::arg("num_chunks"), py::arg("dim"), py::arg("dtype"),
          py::arg("bidirectional"), py::arg("out"), "EMA over the chunks of each sequence.");
    m.def("routing_ema_bwd", &ema_backward, nogil, py::arg("dout"), py::arg("z"), py::arg("p"),
          py::arg("cu_seqlens"), py::arg("nseq"), py::arg("num_chunks"), py::arg("dim"),
          py::arg("dtype"), py::arg("bidirectional"), py::arg("dz"), py::arg("dp"),
          "Backward of routing_ema.");
    m.def("routing_streaming_bytes", &streaming_bytes,
          "Outputs of at least this many bytes are written with streaming stores.");
    m.def(
        "set_routing_streaming_bytes",
        [](int64_t bytes) {
            if (bytes < 0)
                throw py::value_error("set_routing_streaming_bytes: bytes must be >= 0, got " +
                                      std::to_string(bytes));
            return streaming_threshold().exchange(bytes);
        },
        py::arg("bytes"),
        "Sets the output size from which the routing kernels stream their stores (0: always); "
        "returns the previous value.");
    m.def("routing_mask_p_means", &mask_p_means, nogil, py::arg("mask"), py::arg("p"),
          py::arg("total"), py::arg("dtype"), py::arg("out"), "[mean(mask), mean(p)].");
}

}  // namespace mmhnet
