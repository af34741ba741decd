"""Compile every Triton kernel of mmhnet ahead of time for NVIDIA targets, without a GPU.

The interpreter (TRITON_INTERPRET=1) that CI runs the kernels under accepts code the real
compiler rejects; this compiles each kernel variant to a cubin for sm_80 and sm_90 and prints
its resource usage (registers, spills as STACK bytes, shared memory), so GPU compile errors and
register spills are seen on any machine.

* scan kernels: the variants below, with the GPU's matmul operand dtypes;
* routing kernels: the launches the routing ops really make, recorded by running them under the
  interpreter in a child process (fp32 and fp16 inputs), then compiled here.

    python scripts/triton_aot_check.py [--arch 90 80] [--dtypes bf16 fp16 fp32] [--no-routing]
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile

if __name__ == "__main__" and "--record" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mmhnet.kernels.scan.chunk_scan import chunk_scan_fwd_kernel  # noqa: E402
from mmhnet.kernels.scan.chunk_scan_bwd import chunk_scan_bwd_kernel  # noqa: E402
from mmhnet.kernels.scan.chunk_state import chunk_state_kernel  # noqa: E402
from mmhnet.kernels.scan.state_passing import state_passing_kernel  # noqa: E402

# pointer arguments that are always fp32 / int32 whatever the input dtype
_FP32 = ("state", "carry", "adj", "ddt", "dB", "dC", "dA", "dD", "A", "bias", "D")
_INPUT_DTYPE = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}


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


def _common(io, **over):
    flags = dict(HAS_F=True, HAS_R=True, SHARE_DT=True, HAS_BIAS=True, SOFTPLUS=True,
                 HAS_SEQ=False, Q=64, BLOCK_P=64, BLOCK_N=64, MM_DTYPE=_INPUT_DTYPE[io],
                 PREC="ieee")  # fp32: torch's default (allow_tf32 False) is what runs
    flags.update(over)
    return flags


def variants(dtypes=("bf16", "fp16", "fp32")):
    """(name, kernel, input dtype, constexprs, num_warps) for the launches scan_fwd/scan_bwd make."""
    out = []
    for io in dtypes:
        quasi = io == "fp16"
        out.append((f"chunk_state {io}", chunk_state_kernel, io,
                    _common(io, ADJOINT=False, SHIFT_F=0, SHIFT_R=0), 8))
        out.append((f"chunk_state adjoint {io}", chunk_state_kernel, io,
                    _common(io, ADJOINT=True, SHIFT_F=1 if quasi else 0,
                            SHIFT_R=-1 if quasi else 0, HAS_SEQ=quasi), 8))
        out.append((f"chunk_scan {io} {'quasi' if quasi else 'sum'}", chunk_scan_fwd_kernel, io,
                    _common(io, QUASI=quasi, C_SHIFT_F=-1 if quasi else 0,
                            C_SHIFT_R=1 if quasi else 0, SHARE_CB=not quasi, HAS_D=True,
                            D_PER_P=quasi, HAS_Z=True, GATE_BWD=False, HAS_SEQ=quasi), 8))
        out.append((f"chunk_scan gate-bwd {io}", chunk_scan_fwd_kernel, io,
                    _common(io, QUASI=False, C_SHIFT_F=0, C_SHIFT_R=0, SHARE_CB=True, HAS_D=True,
                            D_PER_P=False, HAS_Z=True, GATE_BWD=True), 8))
        out.append((f"chunk_scan_bwd {io} {'quasi, separate' if quasi else 'sum, shared'}",
                    chunk_scan_bwd_kernel, io,
                    _common(io, DY_SHIFT_F=1 if quasi else 0, DY_SHIFT_R=-1 if quasi else 0,
                            SHARE_DT=not quasi, SHARE_B=not quasi, SHARE_C=not quasi, HAS_D=True,
                            D_PER_P=quasi, HAS_SEQ=quasi), 8))
    out.append(("chunk_scan_bwd bf16 one direction", chunk_scan_bwd_kernel, "bf16",
                _common("bf16", HAS_R=False, SHARE_DT=False, DY_SHIFT_F=0, DY_SHIFT_R=0,
                        SHARE_B=False, SHARE_C=False, HAS_D=False, D_PER_P=False), 8))
    for to_right in (True, False):
        out.append((f"state_passing to_right={to_right}", state_passing_kernel, "fp32",
                    dict(TO_RIGHT=to_right, BLOCK=1024), 4))
    return out


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
    """Unique recorded routing launches as (name, kernel, signature, constexprs, num_warps)."""
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
            out.append((f"{spec['name'].strip('_')} {io}", kernel, sig, consts, warps))
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", nargs="+", type=int, default=[90, 80])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"],
                        choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--no-routing", action="store_true", help="scan kernels only")
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        record_routing_launches(args.record)
        return 0
    jobs = [(name, kernel, signature(kernel, io), consts, warps)
            for name, kernel, io, consts, warps in variants(args.dtypes)]
    if not args.no_routing:
        jobs += routing_variants()
    print("| kernel | sm | warps | registers | spill (STACK bytes) | shared bytes |")
    print("|---|---|---|---|---|---|")
    failures = 0
    for arch in args.arch:
        for name, kernel, sig, constexprs, warps in jobs:
            try:
                k = triton.compile(ASTSource(kernel, sig, constexprs),
                                   target=GPUTarget("cuda", arch, 32),
                                   options={"num_warps": warps})
            except Exception as err:  # noqa: BLE001 - report every failing variant
                failures += 1
                print(f"| {name} | {arch} | {warps} | FAILED: {type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]} | | |")
                continue
            use = resource_usage(k.asm["cubin"])
            print(f"| {name} | {arch} | {warps} | {use.get('REG', '?')} | {use.get('STACK', '?')} "
                  f"| {k.metadata.shared} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
