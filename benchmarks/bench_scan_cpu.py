"""CPU scan benchmark (issue 3): bi_selective_scan on the "cpu" backend (mmhnet._C) against the
pure-torch two-pass chunked SSD (reference.bi_selective_scan_chunked: the causal scan twice,
with flips), forward and forward+backward (torch autograd through the chunked reference), at
250, 1875 and 9375 tokens; 16 heads, headdim 64, dstate 64, 1 group, fp32, batch 1, softplus
dt, D of shape (heads,).

Flop count (stated in the table): a rank-1 scan step costs 2 FMAs = 4 flops per state element
(state update and output), so the forward is 4 * P * N flops per token, head and direction. The
backward runs 3 such scans per direction (dC, dB, dx; recomputation included), so fwd+bwd is
counted as 16 * P * N. Achieved GFLOP/s are compared with torch.mm of two 4096 x 4096 fp32
matrices on the same machine, measured in the same run. Times are the best of several runs.
"""

import torch

from mmhnet.ops import bi_selective_scan, reference

from .common import Table, fmt_ms

HEADS, HEADDIM, DSTATE, GROUPS = 16, 64, 64, 1
TOKENS = (250, 1875, 9375)
FWD_FLOPS_PER_TOKEN = 2 * 4 * HEADDIM * DSTATE * HEADS  # both directions
FWD_BWD_FLOPS_PER_TOKEN = 4 * FWD_FLOPS_PER_TOKEN


def make_inputs(L, requires_grad):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, shift=0.0):
        return (torch.randn(*shape, generator=g) + shift).requires_grad_(requires_grad)

    return dict(x=rnd(1, L, HEADS, HEADDIM), dt=rnd(1, L, HEADS, shift=-2.0),
                A=(-torch.rand(HEADS, generator=g) - 0.5).requires_grad_(requires_grad),
                B=rnd(1, L, GROUPS, DSTATE), C=rnd(1, L, GROUPS, DSTATE),
                D=torch.ones(HEADS).requires_grad_(requires_grad))


def best_time(fn, reps):
    import time

    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(reps=3, n=4096):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_time(lambda: torch.mm(a, b), reps) / 1e9


def cpu_backend(**a):
    return bi_selective_scan(**a, dt_softplus=True, backend="cpu")


def torch_two_pass(**a):
    return reference.bi_selective_scan_chunked(**a, dt_softplus=True)


def forward_step(fn, L):
    args = make_inputs(L, requires_grad=False)
    return lambda: fn(**args)


def fwd_bwd_step(fn, L):
    args = make_inputs(L, requires_grad=True)

    def step():
        y = fn(**args)
        y.backward(torch.ones_like(y))
    return step


def run(device, quick):
    if torch.device(device).type != "cpu":
        return []
    reps = 2 if quick else 5
    tokens = TOKENS[:2] if quick else TOKENS
    sgemm_before = sgemm_gflops()
    rows = []
    for L in tokens:
        ours_f = best_time(forward_step(cpu_backend, L), reps)
        ref_f = best_time(forward_step(torch_two_pass, L), reps)
        ours_fb = best_time(fwd_bwd_step(cpu_backend, L), reps)
        ref_fb = best_time(fwd_bwd_step(torch_two_pass, L), max(1, reps // 2))
        rows.append((L, ours_f, ref_f, ours_fb, ref_fb))
    sgemm = max(sgemm_before, sgemm_gflops())  # the machine's best, measured around the table
    table = Table(
        f"bi_selective_scan on the cpu backend vs the two-pass chunked torch SSD "
        f"({torch.get_num_threads()} threads, fp32, {HEADS} heads, headdim {HEADDIM}, dstate {DSTATE})",
        ["tokens", "cpu fwd ms", "torch fwd ms", "fwd speedup", "cpu fwd+bwd ms",
         "torch fwd+bwd ms", "fwd+bwd speedup", "cpu fwd GFLOP/s", "of sgemm",
         "cpu fwd+bwd GFLOP/s"],
        note=(f"sgemm (torch.mm 4096x4096 fp32) on this machine: {sgemm:.0f} GFLOP/s (best of the "
              f"runs before and after the table). Flops: "
              f"4*P*N per token, head and direction for the forward; 16*P*N for fwd+bwd "
              f"(3 recomputing scans per direction in the backward). Best of {reps} runs."))
    for L, ours_f, ref_f, ours_fb, ref_fb in rows:
        gflops_f = FWD_FLOPS_PER_TOKEN * L / ours_f / 1e9
        gflops_fb = FWD_BWD_FLOPS_PER_TOKEN * L / ours_fb / 1e9
        table.add(L, fmt_ms(ours_f), fmt_ms(ref_f), ref_f / ours_f, fmt_ms(ours_fb), fmt_ms(ref_fb),
                  ref_fb / ours_fb, gflops_f, f"{gflops_f / sgemm:.0%}", gflops_fb)
    return [table]
