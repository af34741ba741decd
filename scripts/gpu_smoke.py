"""The smoke stage of scripts/gpu_check.sh: does every kernel backend run at all, and right?

    python scripts/gpu_smoke.py                   # every case, each in its own process, in parallel
    python scripts/gpu_smoke.py --list            # the case names
    python scripts/gpu_smoke.py --case routing-cuda --case memcheck
    python scripts/gpu_smoke.py --device cpu      # CPU: Triton under TRITON_INTERPRET=1, tiny sizes

Cases (the device's native backend is "cuda" on a GPU, "cpu" on CPU):
  scan-<backend>-<dtype>  one bi_selective_scan forward + backward with packed cu_seqlens, for
                          backend in (triton, native) and dtype in (float32, bfloat16): the output
                          and every gradient (random upstream gradient) against the float64
                          "reference" backend run on the same rounded inputs, relative error
                          within the per-dtype tolerance of tests/helpers.py;
  routing-<backend>       route_and_gather -> ema_smooth -> chunk_scatter (with the confidence)
                          forward + backward, float32, against the float64 reference;
  memcheck, racecheck     the native backend's scan-float32 and routing cases run again under
                          `compute-sanitizer --tool memcheck|racecheck` (SKIP where it is absent).

Each case runs in a process of its own: an illegal memory access poisons the CUDA context of the
process that made it, and would fail every later case in it. Prints one line per case,
"PASS|FAIL|SKIP|TIMEOUT <case>: <details>", then "smoke: N passed, N failed, N skipped, N timed
out"; exits 1 when a case failed or timed out. A case never aborts the run: its exception is
reported on its line (traceback below it).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16")
SANITIZER_TOOLS = ("memcheck", "racecheck")
# Exit code compute-sanitizer returns when it found an error (any other non-zero code is the
# application's own).
SANITIZER_ERROR_EXIT = 86


class Skip(Exception):
    """The case cannot run here (backend not built, tool absent): reported, not a failure."""


class Sizes:
    """Problem sizes per device: on a GPU the kernels' real tiles (headdim 64, dstate 64) and
    sequences that cross chunk boundaries, packed with a 1-token one; on CPU, where the
    interpreter is slow and only the script is under test, three sequences in one chunk."""

    def __init__(self, device):
        if device == "cuda":
            self.lengths, self.heads, self.groups, self.headdim, self.dstate = (
                [70, 1, 129, 56], 4, 2, 64, 64)
            self.route_lengths, self.route_dim = [97, 1, 158], 64
        else:
            self.lengths, self.heads, self.groups, self.headdim, self.dstate = (
                [5, 1, 12], 2, 1, 8, 8)
            self.route_lengths, self.route_dim = [6, 1, 9], 8


# ----------------------------------------------------------------------------------------------
# cases (run inside a child process)
# ----------------------------------------------------------------------------------------------

def _torch():
    """torch, with the environment the cases need set before mmhnet or triton is imported."""
    os.environ.setdefault("MMHNET_POISON", "1")  # unwritten outputs become NaN and fail
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return torch


def _tolerances():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers import TOL, rel_err  # the test suite's per-dtype tolerances, one source

    return TOL, rel_err


def native_backend(device):
    return "cuda" if device == "cuda" else "cpu"


def _check_backend(backend, device, symbols):
    """Raise Skip naming why ``backend`` cannot run here (symbols: the native functions the
    case needs)."""
    from mmhnet.ops._backend import native_module, triton_available

    if backend == "triton":
        if not triton_available():
            raise Skip("triton is not installed")
        return
    module = "_C_cuda" if backend == "cuda" else "_C"
    missing = [s for s in symbols if not hasattr(native_module(module), s)]
    if missing:
        raise Skip(f"mmhnet.{module} is not built with {', '.join(missing)}")


def _compare(named, ref, tol, rel_err):
    """[(name, error)] for every pair, raising AssertionError on a non-finite value or an error
    above tol. named, ref: {name: tensor}."""
    import torch

    errors = []
    for name, out in named.items():
        if out is None or ref[name] is None:
            raise AssertionError(f"{name}: missing gradient ({'ours' if out is None else 'ref'})")
        if not torch.isfinite(out).all():
            raise AssertionError(f"{name}: non-finite values")
        errors.append((name, rel_err(out.cpu(), ref[name])))
    worst = max(errors, key=lambda e: e[1])
    if worst[1] > tol:
        raise AssertionError(f"{worst[0]}: relative error {worst[1]:.2e} > {tol:.0e}")
    return errors


def _report(errors, tol):
    worst = max(errors, key=lambda e: e[1])
    return f"max rel err {worst[1]:.1e} ({worst[0]}) <= {tol:.0e}, {len(errors)} tensors"


def scan_case(backend, dtype_name, device, seed):
    """bi_selective_scan forward + backward on packed sequences against float64 reference.
    Inputs: x (1, T, heads, headdim), dt (1, T, heads), B, C (1, T, groups, dstate) in dtype;
    A, D, dt_bias (heads,) float32 (layers keep their parameters in float32)."""
    torch = _torch()
    from mmhnet.ops import bi_selective_scan

    _check_backend(backend, device, ["bi_scan_fwd"])
    TOL, rel_err = _tolerances()
    dtype = getattr(torch, dtype_name)
    s = Sizes(device)
    total = sum(s.lengths)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, shift=0.0):
        return torch.randn(*shape, generator=g) + shift

    inputs = dict(x=rnd(1, total, s.heads, s.headdim).to(dtype),
                  dt=rnd(1, total, s.heads, shift=-1.0).to(dtype),
                  A=-(torch.rand(s.heads, generator=g) * 2.0 + 0.1),
                  B=rnd(1, total, s.groups, s.dstate).to(dtype),
                  C=rnd(1, total, s.groups, s.dstate).to(dtype),
                  D=rnd(s.heads), dt_bias=rnd(s.heads) * 0.5)
    dy = rnd(1, total, s.heads, s.headdim).to(dtype)
    cu = torch.tensor([0] + [sum(s.lengths[:i + 1]) for i in range(len(s.lengths))],
                      dtype=torch.int32)

    def run(leaves, cu_seqlens, dy_, be):
        y = bi_selective_scan(**leaves, dt_softplus=True, cu_seqlens=cu_seqlens, backend=be)
        grads = torch.autograd.grad(y, list(leaves.values()), dy_)
        return dict(y=y, **{"d" + k: gr for k, gr in zip(leaves, grads)})

    ours = run({k: v.to(device, copy=True).requires_grad_(True) for k, v in inputs.items()},
               cu.to(device), dy.to(device), backend)
    if device == "cuda":
        torch.cuda.synchronize()
    ref = run({k: v.double().requires_grad_(True) for k, v in inputs.items()}, cu, dy.double(),
              "reference")
    tol = TOL[dtype]
    return _report(_compare(ours, ref, tol, rel_err), tol)


def _routing_inputs(torch, s, g):
    """q, k, x (T, dim) float32 whose boundaries are far from the p = 0.5 tie: q_t = +-k_{t-1}
    plus noise, so float32 and float64 agree on the mask. cu_seqlens int32."""
    total = sum(s.route_lengths)
    k = torch.randn(total, s.route_dim, generator=g)
    sign = torch.randint(0, 2, (total, 1), generator=g) * 2.0 - 1.0
    prev = torch.cat([k[:1], k[:-1]])
    q = sign * prev + 0.3 * torch.randn(total, s.route_dim, generator=g)
    x = torch.randn(total, s.route_dim, generator=g)
    cu = torch.tensor([0] + [sum(s.route_lengths[:i + 1]) for i in range(len(s.route_lengths))],
                      dtype=torch.int32)
    return q, k, x, cu


ROUND_TRIP = ("route_and_gather", "ema_smooth", "chunk_scatter")


def routing_case(backend, device, seed):
    """route_and_gather -> bidirectional ema_smooth -> chunk_scatter with the confidence, float32,
    forward + backward (dq, dk, dx) against the float64 reference backend. An op that
    ``backend`` does not implement runs on the device's default backend (named in the report)."""
    torch = _torch()
    from mmhnet.ops import chunk_scatter, ema_smooth, route_and_gather
    from mmhnet.ops.routing import _OPS

    own = [op for op in ROUND_TRIP if backend in _OPS[op][0]]
    _check_backend(backend, device, [_OPS[op][1] for op in own])
    be = {op: (backend if op in own else None) for op in ROUND_TRIP}
    TOL, rel_err = _tolerances()
    s = Sizes(device)
    g = torch.Generator().manual_seed(seed)
    q, k, x, cu = _routing_inputs(torch, s, g)
    dout = torch.randn(x.shape, generator=g)

    def run(q_, k_, x_, cu_, dout_, be):
        leaves = [t.requires_grad_(True) for t in (q_, k_, x_)]
        p, mask, x_chunks, chunk_cu, chunk_id, p_chunks = route_and_gather(
            *leaves, cu_, backend=be["route_and_gather"])
        smooth = ema_smooth(x_chunks, p_chunks, chunk_cu, bidirectional=True,
                            backend=be["ema_smooth"])
        out = chunk_scatter(smooth, chunk_id, p=p, mask=mask, backend=be["chunk_scatter"])
        grads = torch.autograd.grad(out, leaves, dout_)
        return mask, dict(out=out, p=p, dq=grads[0], dk=grads[1], dx=grads[2])

    mask, ours = run(q.to(device), k.to(device), x.to(device), cu.to(device), dout.to(device), be)
    ref_mask, ref = run(q.double(), k.double(), x.double(), cu, dout.double(),
                        dict.fromkeys(ROUND_TRIP, "reference"))
    if not torch.equal(mask.cpu(), ref_mask):
        raise AssertionError(f"mask differs from the reference at "
                             f"{int((mask.cpu() != ref_mask).sum())} tokens")
    tol = TOL[torch.float32]
    others = [op for op in ROUND_TRIP if op not in own]
    note = f"; {', '.join(others)} on the default backend" if others else ""
    return _report(_compare(ours, ref, tol, rel_err), tol) + note


def kernel_case_names(device):
    """The cases that run in-process (every case but the sanitizer runs)."""
    native = native_backend(device)
    names = [f"scan-{b}-{d}" for b in ("triton", native) for d in DTYPES]
    return names + [f"routing-{b}" for b in ("triton", native)]


def case_names(device):
    return kernel_case_names(device) + list(SANITIZER_TOOLS)


def run_case(name, device, seed):
    """Run one scan or routing case here; returns its detail string (raises on failure)."""
    if name not in kernel_case_names(device):
        raise ValueError(f"unknown in-process smoke case {name!r} (known: "
                         f"{', '.join(kernel_case_names(device))})")
    kind, backend, *rest = name.split("-")
    if kind == "scan":
        return scan_case(backend, rest[0], device, seed)
    return routing_case(backend, device, seed)


def child_main(names, device, seed):
    """Run ``names`` in this process, one line each; 0 if none failed."""
    failed = False
    for name in names:
        start = time.perf_counter()
        try:
            detail = run_case(name, device, seed)
            status = "PASS"
        except Skip as why:
            status, detail = "SKIP", str(why)
        except Exception as err:  # noqa: BLE001 - every failure is this case's report
            status, detail = "FAIL", f"{type(err).__name__}: {err}"
            traceback.print_exc()
            failed = True
        print(f"{status} {name}: {detail}; {time.perf_counter() - start:.1f} s "
              f"(seed {seed})", flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# the parallel runner (parent process)
# ----------------------------------------------------------------------------------------------

class Child:
    """One case's process, in a session of its own so that a timeout ends it and everything it
    started (compute-sanitizer's target process included)."""

    def __init__(self, name, argv, env=None):
        self.name, self.argv, self.env = name, argv, env
        self.proc = None

    def run(self, deadline):
        """(returncode or None on timeout, stdout, stderr), killed at ``deadline``
        (time.monotonic())."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=self.env, start_new_session=True)
        try:
            out, err = self.proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            return self.proc.returncode, out, err
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            return None, out, err

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _indent(text, limit=40):
    lines = text.strip().splitlines()[-limit:]
    return "".join(f"    {line}\n" for line in lines)


def _child_argv(device, seed, names):
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--device", device,
            "--seed", str(seed)]
    for name in names:
        argv += ["--case", name]
    return argv


def sanitizer_child(tool, device, seed):
    """The native backend's float32 scan and routing cases under compute-sanitizer ``tool``;
    raises Skip without compute-sanitizer. No caching allocator in the target: each tensor is
    its own allocation, so an out-of-bounds access hits memory the tool watches."""
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        raise Skip("compute-sanitizer not found on PATH")
    native = native_backend(device)
    _check_backend(native, device, ["bi_scan_fwd"])
    inner = _child_argv(device, seed, [f"scan-{native}-float32", f"routing-{native}"])
    argv = [exe, "--tool", tool, "--error-exitcode", str(SANITIZER_ERROR_EXIT),
            "--print-limit", "20"] + inner
    return Child(tool, argv, env=dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1"))


def _sanitizer_verdict(rc, out, err):
    """(status, detail) of a compute-sanitizer run from its exit code and its error summary."""
    summary = [line for line in (out + err).splitlines() if "ERROR SUMMARY" in line]
    said = summary[-1].split("ERROR SUMMARY:")[-1].strip() if summary else "no error summary"
    inner_failed = [line for line in out.splitlines() if line.startswith(("FAIL", "SKIP"))]
    if rc == 0 and summary and not inner_failed:
        return "PASS", said
    if rc == SANITIZER_ERROR_EXIT:
        return "FAIL", f"sanitizer errors: {said}"
    why = "; ".join(inner_failed) or f"exit code {rc}"
    return "FAIL", f"{said}; {why}"


def _run_one(child, deadline, sanitizer_log):
    start = time.monotonic()
    rc, out, err = child.run(deadline)
    took = time.monotonic() - start
    if child.name in SANITIZER_TOOLS:
        if sanitizer_log:
            with open(sanitizer_log, "a") as f:
                f.write(f"===== {child.name} (exit {rc}, {took:.1f} s)\n{out}{err}\n")
        if rc is None:
            return f"TIMEOUT {child.name}: killed after {took:.0f} s\n" + _indent(out + err, 10)
        status, detail = _sanitizer_verdict(rc, out, err)
        text = f"{status} {child.name}: {detail}; {took:.1f} s\n"
        return text + (_indent(out + err) if status != "PASS" else "")
    if rc is None:
        return f"TIMEOUT {child.name}: killed after {took:.0f} s\n" + _indent(out + err, 10)
    text = out if out.strip() else f"FAIL {child.name}: exit code {rc}, no report\n"
    if rc != 0:
        text += _indent(err)
    return text


def run_parallel(children, budget, jobs, sanitizer_log=None):
    """Run ``children`` (jobs at a time), each killed when ``budget`` seconds have passed since
    the start; yields each one's report text as it finishes. SIGTERM (gpu_check.sh's stage
    deadline) kills every child before this process exits."""
    deadline = time.monotonic() + budget

    def on_term(signum, frame):
        for c in children:
            c.kill()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            pending = {pool.submit(_run_one, c, deadline, sanitizer_log) for c in children}
            while pending:
                for fut in [f for f in pending if f.done()]:
                    pending.discard(fut)
                    yield fut.result()
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)


def parent_main(names, device, seed, budget, jobs, sanitizer_log):
    counts = dict(PASS=0, FAIL=0, SKIP=0, TIMEOUT=0)
    children = []
    for name in names:
        if name in SANITIZER_TOOLS:
            try:
                children.append(sanitizer_child(name, device, seed))
            except Skip as why:
                print(f"SKIP {name}: {why}", flush=True)
                counts["SKIP"] += 1
        else:
            children.append(Child(name, _child_argv(device, seed, [name])))
    for text in run_parallel(children, budget, jobs, sanitizer_log):
        print(text, end="", flush=True)
        for line in text.splitlines():
            word = line.split(" ", 1)[0]
            if word in counts:
                counts[word] += 1
    print(f"smoke: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped, "
          f"{counts['TIMEOUT']} timed out", flush=True)
    return 1 if counts["FAIL"] or counts["TIMEOUT"] else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--case", action="append", default=None, help="a case (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the case names")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget", type=float, default=55.0,
                        help="seconds until every unfinished case is killed")
    parser.add_argument("--sanitizer-log", default=None, help="append compute-sanitizer output")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if _torch().cuda.is_available() else "cpu")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    known = kernel_case_names(device) if args.child else case_names(device)
    names = args.case or known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.list:
        print("\n".join(known))
        return 0
    if args.child:
        return child_main(names, device, seed)
    print(f"smoke on {device}, seed {seed}, {len(names)} cases, {args.jobs} at a time, "
          f"budget {args.budget:.0f} s", flush=True)
    return parent_main(names, device, seed, args.budget, args.jobs, args.sanitizer_log)


if __name__ == "__main__":
    sys.exit(main())
