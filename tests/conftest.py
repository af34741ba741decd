"""Test set-up.

* TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here, at import,
  when no CUDA device is present: the Triton backend then runs on CPU tensors.
* Under the interpreter, fp32 -> bf16 conversions round to nearest even as on a GPU (the
  interpreter's own truncate; helpers.make_interpreter_round_bf16_to_nearest).
* MMHNET_POISON=1 makes the kernel launchers fill their outputs with NaN before the kernels run,
  so an element a kernel forgets to write fails the comparison.
* Tests marked cpu_streamed run with the CPU routing kernels writing every output with
  streaming (non-temporal) stores, the path they take for outputs larger than the cache.
* Every test draws fresh random inputs: the session seed is random (printed in the header; set
  MMHNET_TEST_SEED to replay a run) and each test mixes it with its own id.
"""

import os
import random
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from helpers import make_interpreter_round_bf16_to_nearest

    make_interpreter_round_bf16_to_nearest()  # bf16 outputs rounded as on a GPU
os.environ.setdefault("MMHNET_POISON", "1")

import pytest  # noqa: E402

SESSION_SEED = int(os.environ.get("MMHNET_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return [f"mmhnet: MMHNET_TEST_SEED={SESSION_SEED} TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET', '0')} cuda={torch.cuda.is_available()}"]


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = (zlib.crc32(request.node.nodeid.encode()) ^ SESSION_SEED) % (2**31)
    torch.manual_seed(seed)
    random.seed(seed)
    yield


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (modules that run many small ops, like the float64
    references and the tiny model, use it): on a busy machine torch's thread pool slows small
    ops down by orders of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cpu_streamed_stores(request):
    if request.node.get_closest_marker("cpu_streamed") is None:
        yield
        return
    from mmhnet.ops._backend import native_module

    native = native_module("_C")
    before = native.set_routing_streaming_bytes(0)
    try:
        yield
    finally:
        native.set_routing_streaming_bytes(before)
