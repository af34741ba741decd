"""Backend selection (DESIGN.md, "Backends").

``backend=None`` takes ``$MMHNET_BACKEND`` when set, else the default for the tensors' device:
CUDA tensors -> ``DEFAULT_GPU_BACKEND``; CPU tensors -> "cpu" when ``mmhnet._C`` provides the op,
else "reference". A backend that cannot serve a call raises ``BackendUnavailableError`` naming
the backend and the reason; nothing falls back silently.
"""

import functools
import importlib
import importlib.util
import os

import torch

from ._checks import check_choice

BACKENDS = ("reference", "triton", "cpu", "cuda")

# Decided by benchmark on GPU (benchmarks/RESULTS.md). Until the CUDA path is measured on a
# GPU against the Triton path, Triton is the GPU default.
DEFAULT_GPU_BACKEND = "triton"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot serve this call (not built, wrong device, ...)."""


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# MMHNET_CPU_ISA value -> the CPU module built for it (setup.py builds both on x86-64)
CPU_ISA_MODULES = {"avx2": "_C", "avx512": "_C_avx512"}


def select_cpu_module(forced, base_isa, avx512_built, cpu_has_avx512):
    """The name of the CPU module to load: "_C" or "_C_avx512".

    forced: $MMHNET_CPU_ISA ("avx2", "avx512") or None (then AVX-512 where built and the CPU has
    it); base_isa: mmhnet._C's ``ISA`` label ("avx2" for the portable build, else a -march
    value such as "native"). Raises ValueError for an unknown ISA and BackendUnavailableError
    when the forced one cannot be loaded here.
    """
    if forced is None:
        return CPU_ISA_MODULES["avx512"] if avx512_built and cpu_has_avx512 else "_C"
    check_choice("MMHNET_CPU_ISA", forced, tuple(CPU_ISA_MODULES))
    if forced == "avx2" and base_isa != "avx2":
        raise BackendUnavailableError(
            f"MMHNET_CPU_ISA=avx2: mmhnet._C was built for ISA {base_isa!r}, not the portable "
            f"x86-64-v3 build (rebuild with MMHNET_CPU_ARCH unset)")
    if forced == "avx512" and not avx512_built:
        raise BackendUnavailableError(
            "MMHNET_CPU_ISA=avx512: mmhnet._C_avx512 is not built (it is built on x86-64 when "
            "MMHNET_CPU_ARCH is unset)")
    if forced == "avx512" and not cpu_has_avx512:
        raise BackendUnavailableError(
            "MMHNET_CPU_ISA=avx512: this CPU lacks AVX-512 (F, BW, DQ and VL are needed)")
    return CPU_ISA_MODULES[forced]


def _import_native(name):
    try:
        return importlib.import_module(f"mmhnet.{name}")
    except ImportError:
        return None


def _native_built(name):
    """Whether mmhnet.<name> exists, without importing it."""
    return importlib.util.find_spec(f"mmhnet.{name}") is not None


@functools.lru_cache(maxsize=None)
def native_module(name):
    """``mmhnet._C`` (CPU kernels) or ``mmhnet._C_cuda`` if built and importable, else None.

    For "_C" this is the ISA build chosen by ``select_cpu_module`` and $MMHNET_CPU_ISA:
    ``mmhnet._C_avx512`` where it is built and the CPU has AVX-512, else ``mmhnet._C``. The
    AVX-512 module is never imported on a CPU without it (its code may use AVX-512 anywhere).
    """
    module = _import_native(name)
    if name != "_C" or module is None:
        return module
    probe = getattr(module, "cpu_supports_avx512", None)  # absent from builds before the pair
    chosen = select_cpu_module(os.environ.get("MMHNET_CPU_ISA") or None,
                               getattr(module, "ISA", "unknown"),
                               _native_built(CPU_ISA_MODULES["avx512"]),
                               probe is not None and probe())
    # a chosen module that fails to import is an error, not a silent "reference" backend
    return module if chosen == "_C" else importlib.import_module(f"mmhnet.{chosen}")


@functools.lru_cache(maxsize=None)
def triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _native_has(module_name, symbol):
    mod = native_module(module_name)
    return mod is not None and hasattr(mod, symbol)


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its import of torch._dynamo, which
    costs seconds at ``import mmhnet``: the decorator only sets this marker, which dynamo reads
    when it traces a call (tests/test_package.py checks that torch's decorator does no more)."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def resolve_backend(backend, device, op, native_symbol=None, backends=BACKENDS):
    """Pick and validate the backend for one call of ``op`` on tensors on ``device``.

    Under torch.compile the choice is made once, at trace time, and baked into the graph.

    native_symbol: the function the op needs in mmhnet._C / mmhnet._C_cuda (None: the op has
    no native implementation). backends: the backends this op implements.
    """
    if backend is None:
        backend = os.environ.get("MMHNET_BACKEND") or None
        source = "MMHNET_BACKEND"
    else:
        source = "backend"
    if backend is None:
        if device.type == "cuda":
            backend = DEFAULT_GPU_BACKEND if DEFAULT_GPU_BACKEND in backends else "reference"
        elif native_symbol is not None and "cpu" in backends and _native_has("_C", native_symbol):
            backend = "cpu"
        else:
            backend = "reference"
        return backend
    check_choice(source, backend, BACKENDS)
    if backend not in backends:
        raise BackendUnavailableError(f"{op}: backend {backend!r} is not implemented for this op "
                                      f"(available: {', '.join(backends)})")
    if backend == "triton":
        if not triton_available():
            raise BackendUnavailableError(f"{op}: backend 'triton' needs the triton package")
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
            raise BackendUnavailableError(
                f"{op}: backend 'triton' needs CUDA tensors (or CPU tensors with "
                f"TRITON_INTERPRET=1); got tensors on {device}")
    elif backend == "cpu":
        if device.type != "cpu":
            raise BackendUnavailableError(f"{op}: backend 'cpu' needs CPU tensors; got {device}")
        if not _native_has("_C", native_symbol or "<none>"):
            raise BackendUnavailableError(f"{op}: backend 'cpu' needs mmhnet._C built with this op "
                                          f"(pip install -e . builds it)")
    elif backend == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(f"{op}: backend 'cuda' needs CUDA tensors; got {device}")
        if not _native_has("_C_cuda", native_symbol or "<none>"):
            raise BackendUnavailableError(f"{op}: backend 'cuda' needs mmhnet._C_cuda built with "
                                          f"this op (needs nvcc at install time)")
    return backend
