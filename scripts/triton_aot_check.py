"""Compile every Triton kernel of mmhnet ahead of time for NVIDIA targets, without a GPU.

The interpreter (TRITON_INTERPRET=1) that CI runs the kernels under accepts code the real
compiler rejects; this compiles each kernel variant to a cubin for sm_80 and sm_90 and prints
its resource usage (registers, spills as STACK bytes, shared memory), so GPU compile errors and
register spills are seen on any machine.

* scan kernels: the variants below, with the GPU's matmul operand dtypes;
* routing kernels: the launches the routing ops really make, recorded by running them under the
  interpreter in a child process (fp32 and fp16 inputs), then compiled here.

    python scripts/triton_aot_check.py [--arch 90 80] [--dtypes bf16 fp16 fp32] [--no-routing]
        [--dims 64x64 ...] [--largest] [--chunks 32 64 128] [--only NAME ...] [--precs ieee tf32]

A variant whose shared memory exceeds what one block may have (232,448 B on sm_90, 166,912 B on
sm_80) is a FAILED row (exit status 1), as is one that does not compile. Each row also gives
the H100 blocks per SM (occupancy) its registers, shared memory and warps allow.
"""

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile

if __name__ == "__main__" and "--record" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mmhnet.kernels.scan import launch  # noqa: E402
from mmhnet.kernels.scan.chunk_scan import chunk_scan_fwd_kernel  # noqa: E402
from mmhnet.kernels.scan.chunk_scan_bwd import chunk_scan_bwd_kernel  # noqa: E402
from mmhnet.kernels.scan.chunk_state import chunk_state_kernel  # noqa: E402
from mmhnet.kernels.scan.state_passing import state_passing_kernel  # noqa: E402

# pointer arguments that are always fp32 / int32 whatever the input dtype
_FP32 = ("state", "carry", "adj", "ddt", "dB", "dC", "dA", "dD", "A", "bias", "D")
_INPUT_DTYPE = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
_TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def signature(kernel, io):
    sig = {}
    for p in kernel.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            base = p.name[:-4]
            if base == "seq":
                sig[p.name] = "*i32"
            elif base.startswith(_FP32):
                sig[p.name] = "*fp32"
            else:
                sig[p.name] = "*" + io
        else:
            sig[p.name] = "i32"
    return sig


# the most shared memory one block may have: 227 KiB on sm_90, 163 KiB on sm_80
SMEM_LIMIT = 232448
_SMEM_LIMIT_BY_ARCH = {90: SMEM_LIMIT, 80: 166912}
# H100 SM: registers, shared memory (228 KiB, 1 KiB of it reserved per block), warps, blocks
_SM = dict(regs=65536, smem=233472, smem_per_block_reserved=1024, warps=64, blocks=32)
DEFAULT_DIMS = ((64, 64), (64, 128))  # bench_scan's headdim x dstate; BiMamba2's defaults


def largest_dims(io):
    """(headdim, dstate) pairs at the largest padded tile the launcher accepts for ``io``."""
    limit = launch.max_tile(_TORCH_DTYPE[io])
    return tuple((p, limit // p) for p in (64, 128, 256)
                 if limit // p <= launch.MAX_DIM and limit % p == 0 and limit // p >= 16)


def _common(io, P, N, Q, prec, **over):
    flags = dict(HAS_F=True, HAS_R=True, SHARE_DT=True, HAS_BIAS=True, SOFTPLUS=True,
                 HAS_SEQ=False, Q=Q, BLOCK_P=launch._block(P), BLOCK_N=launch._block(N),
                 MM_DTYPE=_INPUT_DTYPE[io], PREC=prec)
    flags.update(over)
    return flags


def _launch(kernel_name):
    return dict(launch.KERNEL_OPTIONS[kernel_name])


def scan_variants(io, P, N, Q=launch.CHUNK_SIZE, prec="ieee", only=None):
    """(name, kernel, input dtype, constexprs, launch options) of the launches scan_fwd and
    scan_bwd make at headdim P, dstate N, chunk Q: both directions sharing their parameters
    (bi_selective_scan's default; z and D, the gate step of the backward), quasiseparable with
    separate parameters, packed sequences and per-channel D, and one direction
    (selective_scan). ``only``: kernel or variant names (e.g. "chunk_scan_bwd sum shared") to
    keep."""
    tag = f"{io} {P}x{N} Q{Q}" + (f" {prec}" if io == "fp32" else "")
    bk = min(launch._block(N), launch.BWD_BLOCK_K)
    c = functools.partial(_common, io, P, N, Q, prec)
    out = [
        ("chunk_state forward", chunk_state_kernel, c(ADJOINT=False, SHIFT_F=0, SHIFT_R=0)),
        ("chunk_state adjoint quasi", chunk_state_kernel,
         c(ADJOINT=True, SHIFT_F=1, SHIFT_R=-1, HAS_SEQ=True, SHARE_DT=False)),
        ("chunk_scan sum shared", chunk_scan_fwd_kernel,
         c(QUASI=False, C_SHIFT_F=0, C_SHIFT_R=0, SHARE_CB=True, HAS_D=True, D_PER_P=False,
           HAS_Z=True, GATE_BWD=False)),
        ("chunk_scan quasi separate", chunk_scan_fwd_kernel,
         c(QUASI=True, C_SHIFT_F=-1, C_SHIFT_R=1, SHARE_CB=False, HAS_D=True, D_PER_P=True,
           HAS_Z=True, GATE_BWD=False, HAS_SEQ=True, SHARE_DT=False)),
        ("chunk_scan gate-bwd", chunk_scan_fwd_kernel,
         c(QUASI=False, C_SHIFT_F=0, C_SHIFT_R=0, SHARE_CB=True, HAS_D=True, D_PER_P=False,
           HAS_Z=True, GATE_BWD=True)),
        ("chunk_scan_bwd sum shared", chunk_scan_bwd_kernel,
         c(DY_SHIFT_F=0, DY_SHIFT_R=0, SHARE_B=True, SHARE_C=True, HAS_D=True, D_PER_P=False,
           BLOCK_K=bk)),
        ("chunk_scan_bwd quasi separate", chunk_scan_bwd_kernel,
         c(DY_SHIFT_F=1, DY_SHIFT_R=-1, SHARE_DT=False, SHARE_B=False, SHARE_C=False,
           HAS_D=True, D_PER_P=True, HAS_SEQ=True, BLOCK_K=bk)),
        ("chunk_scan_bwd one direction", chunk_scan_bwd_kernel,
         c(HAS_R=False, SHARE_DT=False, DY_SHIFT_F=0, DY_SHIFT_R=0, SHARE_B=False,
           SHARE_C=False, HAS_D=False, D_PER_P=False, BLOCK_K=bk)),
    ]
    return [(f"{name} {tag}", kernel, io, consts, _launch(kernel_name(kernel)))
            for name, kernel, consts in out
            if only is None or name in only or kernel_name(kernel) in only]


def kernel_name(kernel):
    return {chunk_state_kernel: "chunk_state", chunk_scan_fwd_kernel: "chunk_scan",
            chunk_scan_bwd_kernel: "chunk_scan_bwd", state_passing_kernel: "state_passing"}[kernel]


def variants(dtypes=("bf16", "fp16", "fp32"), dims=None, chunks=(launch.CHUNK_SIZE,),
             only=None, precs=("ieee", "tf32")):
    """Every scan launch the tests, benchmarks and layers make, per input dtype: the default
    dims and the largest accepted tiles (``dims`` replaces both), fp32 with torch's default
    matmul precision (ieee) and with TF32 allowed (``precs``), at each chunk length in
    ``chunks``."""
    out = []
    for io in dtypes:
        for P, N in dims or DEFAULT_DIMS + largest_dims(io):
            for prec in precs if io == "fp32" else ("ieee",):
                for Q in chunks:
                    out += scan_variants(io, P, N, Q, prec, only)
    if only is None or "state_passing" in only:
        for to_right in (True, False):
            out.append((f"state_passing to_right={to_right}", state_passing_kernel, "fp32",
                        dict(TO_RIGHT=to_right, BLOCK=1024), _launch("state_passing")))
    return out


def blocks_per_sm(regs, smem, warps):
    """Resident blocks per H100 SM from a kernel's registers per thread, shared memory per
    block and warps (registers are allocated per warp in units of 256, i.e. 8 per thread)."""
    regs = -(-max(regs, 1) // 8) * 8
    by_regs = _SM["regs"] // (regs * 32 * warps)
    by_smem = _SM["smem"] // (smem + _SM["smem_per_block_reserved"])
    return min(by_regs, by_smem, _SM["warps"] // warps, _SM["blocks"])


_TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
                    "int32": "i32", "int64": "i64", "bool": "i1", "int8": "i8", "uint8": "u8"}


def record_routing_launches(path):
    """Child process, under TRITON_INTERPRET=1: run every routing op forward and backward on
    small inputs, with the triton backend, and write each kernel launch (kernel, argument types,
    constexpr values) to ``path`` as JSON."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    import mmhnet.ops as ops

    launches = []
    original_run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        spec = {"module": self.fn.__module__, "name": self.fn.__name__, "args": {}}
        for name, value in list(zip(names, args)) + list(kwargs.items()):
            if isinstance(value, torch.Tensor):
                type_name = str(value.dtype).replace("torch.", "")
                spec["args"][name] = ["tensor", _TORCH_TO_TRITON[type_name]]
            elif isinstance(value, bool):
                spec["args"][name] = ["bool", value]
            elif isinstance(value, int):
                spec["args"][name] = ["int", value]
            elif isinstance(value, float):
                spec["args"][name] = ["float", value]
            elif value is None or isinstance(value, str):
                spec["args"][name] = ["const", value]
            else:
                spec["args"][name] = ["dtype", str(value)]
        launches.append(spec)
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    for dtype in (torch.float32, torch.float16):
        T, D = 37, 24
        q = torch.randn(T, D, dtype=dtype, requires_grad=True)
        k = torch.randn(T, D, dtype=dtype, requires_grad=True)
        x = torch.randn(T, D, dtype=dtype, requires_grad=True)
        cu = torch.tensor([0, 1, 20, T], dtype=torch.int32)
        p, mask = ops.route_boundaries(q, k, cu, backend="triton")
        xc, chunk_cu, chunk_id, pc = ops.chunk_gather(x, mask, cu, p=p, backend="triton")
        e = ops.ema_smooth(xc, pc.clamp(1e-4, 1 - 1e-4).to(dtype), chunk_cu, bidirectional=True,
                           backend="triton")
        y = ops.chunk_scatter(e, chunk_id, p=p, mask=mask, backend="triton")
        loss = y.float().square().sum() + ops.ratio_loss(mask, p, 4.0, backend="triton")
        index = torch.randint(0, T, (50,))
        g = ops.token_gather(x, index, backend="triton")
        s = ops.token_scatter(g, index, T, backend="triton")
        (loss + s.float().square().sum()).backward()
    with open(path, "w") as f:
        json.dump(launches, f)


def routing_variants():
    """Unique recorded routing launches as (name, kernel, signature, constexprs, options)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--record", path], check=True,
                       env=env)
        with open(path) as f:
            launches = json.load(f)
    out, seen = [], set()
    for spec in launches:
        kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
        constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
        sig, consts, warps = {}, {}, 4
        for name, (kind, value) in spec["args"].items():
            if name == "num_warps":
                warps = value
            elif name in constexpr_names:
                sig[name] = "constexpr"
                consts[name] = getattr(tl, value) if kind == "dtype" else value
            elif kind == "tensor":
                sig[name] = "*" + value
            elif kind == "int":
                sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            elif kind == "float":
                sig[name] = "fp32"
            elif kind == "bool":
                sig[name] = "i1"
            else:
                sig[name] = "constexpr"
                consts[name] = value
        key = json.dumps([spec["module"], spec["name"], sig,
                          {k: str(v) for k, v in consts.items()}, warps], sort_keys=True)
        if key not in seen:
            seen.add(key)
            io = next((v[1:] for k, v in sig.items() if v.startswith("*f")), "-")
            out.append((f"{spec['name'].strip('_')} {io}", kernel, sig, consts,
                        dict(num_warps=warps)))
    return out


def resource_usage(cubin):
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                              text=True).stdout
    fields = {}
    for line in text.splitlines():
        if "REG:" in line:
            for item in line.split():
                if ":" in item:
                    k, v = item.split(":", 1)
                    fields[k] = v
    return fields


def compile_row(name, kernel, sig, constexprs, options, arch):
    """One table row: the variant compiled for sm_<arch>, its resources, and whether it fails
    (compile error, or more shared memory than a block may have)."""
    warps, stages = options["num_warps"], options.get("num_stages", "-")
    head = f"| {name} | {arch} | {warps} | {stages} |"
    try:
        k = triton.compile(ASTSource(kernel, sig, constexprs), target=GPUTarget("cuda", arch, 32),
                           options=options)
    except Exception as err:  # noqa: BLE001 - report every failing variant
        return f"{head} FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]} ||||", True
    use = resource_usage(k.asm["cubin"])
    smem = k.metadata.shared
    regs = int(use.get("REG", 0))
    blocks = blocks_per_sm(regs, smem, warps)
    limit = _SMEM_LIMIT_BY_ARCH.get(arch, SMEM_LIMIT)
    over = smem > limit
    verdict = f" FAILED: over {limit}" if over else ""
    return (f"{head} {regs} | {use.get('STACK', '?')} | {smem}{verdict} | {blocks} | "
            f"{blocks * warps / _SM['warps']:.0%} |", over)


def _dims(text):
    p, n = text.lower().split("x")
    return int(p), int(n)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", nargs="+", type=int, default=[90, 80])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"],
                        choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--dims", nargs="+", type=_dims, metavar="PxN",
                        help="headdim x dstate (default: 64x64, 64x128 and the largest accepted)")
    parser.add_argument("--largest", action="store_true",
                        help="only the largest accepted tiles (the shared-memory limit check)")
    parser.add_argument("--chunks", nargs="+", type=int, default=[launch.CHUNK_SIZE])
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="kernel names (chunk_state, chunk_scan, chunk_scan_bwd, "
                             "state_passing) or variant names (e.g. 'chunk_scan_bwd sum shared')")
    parser.add_argument("--precs", nargs="+", default=["ieee", "tf32"], choices=["ieee", "tf32"],
                        help="float32 matmul precisions (ieee: torch's default; tf32: allowed)")
    parser.add_argument("--no-routing", action="store_true", help="scan kernels only")
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        record_routing_launches(args.record)
        return 0
    specs = []
    for io in args.dtypes:
        dims = largest_dims(io) if args.largest else args.dims
        specs += variants((io,), dims, args.chunks, args.only, args.precs)
    seen, jobs = set(), []
    for name, kernel, io, consts, options in specs:  # state_passing comes once per dtype
        if name not in seen:
            seen.add(name)
            jobs.append((name, kernel, signature(kernel, io), consts, options))
    if not args.no_routing:
        jobs += routing_variants()
    print(f"triton {triton.__version__}; shared memory limit per block {SMEM_LIMIT} B on sm_90, "
          f"{_SMEM_LIMIT_BY_ARCH[80]} B on sm_80; blocks/SM and occupancy for an H100 SM")
    print("| kernel | sm | warps | stages | registers | spill (STACK bytes) | shared bytes "
          "| blocks/SM | occupancy |")
    print("|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for arch in args.arch:
        for job in jobs:
            row, failed = compile_row(*job, arch)
            failures += failed
            print(row, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
