"""Launchers of the fused bidirectional chunked scan (no autograd here).

    y = scan_fwd(x, fwd, rev, D, z, dt_bias, seq_idx, dt_softplus, quasi)
    grads = scan_bwd(dy, x, fwd, rev, D, z, dt_bias, seq_idx, dt_softplus, quasi)

``fwd`` / ``rev`` are ``Direction(dt, A, B, C)`` or None (direction absent). A reverse
direction that shares a tensor with the forward one must pass the *same object*: the kernels
then read it once and sum its gradients. ``seq_idx`` (int32, (L,), batch 1) gives each token's
sequence when sequences are packed, else None.

Forward: chunk_state -> state_passing (one launch per direction) -> chunk_scan.
Backward (nothing is stored by the forward): the same two steps recompute the states, the
gate step recomputes y_pre for dz (only with z), chunk_state/state_passing in adjoint mode
give the adjoints entering each chunk, and chunk_scan_bwd produces every gradient.
"""

from typing import NamedTuple, Optional

import torch
import triton

from mmhnet._alloc import empty

from .chunk_scan import chunk_scan_fwd_kernel
from .chunk_scan_bwd import chunk_scan_bwd_kernel
from .chunk_state import chunk_state_kernel
from .state_passing import state_passing_kernel

CHUNK_SIZE = 64
MAX_DIM = 256  # headdim and dstate: one program holds a (headdim, dstate) fp32 state tile
# ... and the tile's padded area (headdim x dstate, powers of two), per element size of the
# inputs: the largest whose every kernel variant fits the 232,448 B of shared memory a block may
# have on sm_90, compiled with Triton 3.6 and 3.9 (scripts/triton_aot_check.py --largest;
# benchmarks/RESULTS.md). 16-bit: 256 x 256 needs 256+ KiB in chunk_state; float32 operands take
# twice the bytes, and 128 x 256 needs ~260 KiB there
MAX_TILE = {2: 128 * 256, 4: 128 * 128}
# dstate columns the backward holds at a time (chunk_scan_bwd.py reads B, C, the states and
# adjoints in slices of this width): 16 spills least (benchmarks/RESULTS.md, compiled for sm_90)
BWD_BLOCK_K = 16
# launch options per kernel (scripts/triton_aot_check.py compiles with the same). The backward's
# dstate loop is not software-pipelined (num_stages 1): prefetching the next slice doubled its
# shared memory and added to its register spill
KERNEL_OPTIONS = {"chunk_state": dict(num_warps=8), "chunk_scan": dict(num_warps=8),
                  "chunk_scan_bwd": dict(num_warps=8, num_stages=1),
                  "state_passing": dict(num_warps=4)}
MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2 (heads, batch)


class Direction(NamedTuple):
    dt: torch.Tensor  # (b, l, h)
    A: torch.Tensor  # (h,)
    B: torch.Tensor  # (b, l, g, n)
    C: torch.Tensor  # (b, l, g, n)


class DirectionGrads(NamedTuple):
    ddt: torch.Tensor
    dA: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor


class ScanGradsRaw(NamedTuple):
    dx: torch.Tensor
    fwd: Optional[DirectionGrads]
    rev: Optional[DirectionGrads]  # fields None where the tensor is shared with fwd
    dD: Optional[torch.Tensor]
    dz: Optional[torch.Tensor]
    ddt_bias: Optional[torch.Tensor]


def _mm_config(x):
    """Operand dtype and fp32 precision of the in-kernel matmuls. The interpreter gets the
    same 16-bit operand dtype as a GPU: common.mm then rounds as a GPU does."""
    if x.dtype in (torch.float32, torch.float64):
        mm_dtype = triton.language.float32
    else:
        mm_dtype = triton.language.bfloat16 if x.dtype == torch.bfloat16 else triton.language.float16
    return mm_dtype, ("tf32" if x.is_cuda and tf32_allowed() else "ieee")


def tf32_allowed():
    """torch's TF32 setting for float32 matmuls, read at every call: the launchers run inside
    the custom op, so under torch.compile too it is read when the op runs, not when it is traced.
    torch >= 2.9 keeps the setting as matmul.fp32_precision ("tf32", else "ieee" or "none"),
    which allow_tf32 and set_float32_matmul_precision also set; reading allow_tf32 raises a
    RuntimeError once the newer API has been used, so it is read only on an older torch."""
    matmul = torch.backends.cuda.matmul
    try:
        return matmul.fp32_precision == "tf32"
    except AttributeError:  # torch < 2.9
        return bool(matmul.allow_tf32)


def _block(n):
    return max(16, triton.next_power_of_2(n))


def max_tile(dtype):
    """Largest padded headdim x dstate served for inputs of ``dtype``."""
    return MAX_TILE[torch.tensor([], dtype=dtype).element_size()]


def check_tile(P, N, dtype):
    """ValueError unless headdim P and dstate N fit the kernels' shared memory for dtype."""
    limit = max_tile(dtype)
    if P > MAX_DIM or N > MAX_DIM or _block(P) * _block(N) > limit:
        name = str(dtype).replace("torch.", "")
        raise ValueError(
            f"backend 'triton' supports headdim and dstate up to {MAX_DIM} with their padded "
            f"product (powers of two) up to {limit} for {name} inputs (e.g. "
            f"{limit // 256} x 256 or {limit // 128} x 128: more needs "
            f"more shared memory than a GPU block has); got headdim {P}, dstate {N} "
            f"(use backend='cuda' or 'reference')")


class _Problem:
    """Sizes, launch geometry and flags common to every kernel of one call."""

    def __init__(self, x, fwd, rev, seq_idx, dt_bias, dt_softplus, chunk_size):
        d = fwd if fwd is not None else rev
        self.batch, self.L, self.H, self.P = x.shape
        self.G, self.N = d.B.shape[2], d.B.shape[3]
        check_tile(self.P, self.N, x.dtype)
        if self.H > MAX_GRID_YZ or self.batch > MAX_GRID_YZ:
            raise ValueError(f"backend 'triton' takes at most {MAX_GRID_YZ} heads and batch "
                             f"rows; got nheads {self.H}, batch {self.batch}")
        self.Q = chunk_size
        self.nchunks = triton.cdiv(self.L, self.Q)
        self.grid = (self.nchunks, self.H, self.batch)
        self.has_f, self.has_r = fwd is not None, rev is not None
        both = self.has_f and self.has_r
        self.share_dt = both and rev.dt is fwd.dt
        self.share_B = both and rev.B is fwd.B
        self.share_C = both and rev.C is fwd.C
        # one slot may be missing: feed its pointers from the other, the kernel ignores them
        self.f = fwd if fwd is not None else rev
        self.r = rev if rev is not None else fwd
        self.seq_idx = seq_idx
        self.dt_bias = dt_bias
        self.softplus = bool(dt_softplus)
        self.BLOCK_P, self.BLOCK_N = _block(self.P), _block(self.N)
        self.mm_dtype, self.prec = _mm_config(x)
        self.device = x.device

    def common_flags(self):
        return dict(HAS_F=self.has_f, HAS_R=self.has_r, SHARE_DT=self.share_dt,
                    HAS_BIAS=self.dt_bias is not None, SOFTPLUS=self.softplus,
                    HAS_SEQ=self.seq_idx is not None, Q=self.Q, BLOCK_P=self.BLOCK_P,
                    BLOCK_N=self.BLOCK_N, MM_DTYPE=self.mm_dtype, PREC=self.prec)

    def new_states(self):
        shape = (self.batch * self.H, self.nchunks, self.P, self.N)
        return (torch.empty(shape, device=self.device, dtype=torch.float32),
                torch.empty(shape, device=self.device, dtype=torch.float32))

    def new_carries(self):
        shape = (self.batch * self.H, self.nchunks)
        return (torch.empty(shape, device=self.device, dtype=torch.float32),
                torch.empty(shape, device=self.device, dtype=torch.float32))

    def opt(self, t):
        """A tensor argument that may be None (the kernel does not read it then)."""
        return t if t is not None else self.f.A


def _states(pb, u, adjoint, shift_f=0, shift_r=0):
    """States entering every chunk from both neighbours: (forward-direction states,
    reverse-direction states), each (BH, nchunks, P, N) fp32."""
    states_f, states_r = pb.new_states()
    carry_f, carry_r = pb.new_carries()
    f, r = pb.f, pb.r
    chunk_state_kernel[pb.grid](
        u, *u.stride(),
        f.C if adjoint else f.B, *(f.C if adjoint else f.B).stride(),
        r.C if adjoint else r.B, *(r.C if adjoint else r.B).stride(),
        f.dt, *f.dt.stride(), r.dt, *r.dt.stride(),
        f.A, r.A, pb.opt(pb.dt_bias), pb.opt(pb.seq_idx),
        states_f, states_r, carry_f, carry_r,
        pb.L, pb.H, pb.H // pb.G, pb.P, pb.N, pb.nchunks,
        ADJOINT=adjoint, SHIFT_F=shift_f, SHIFT_R=shift_r, **pb.common_flags(),
        **KERNEL_OPTIONS["chunk_state"],
    )
    PN = pb.P * pb.N
    if PN == 0:  # dstate 0: no state to pass
        return states_f, states_r
    block = min(1024, triton.next_power_of_2(PN))
    grid = (pb.batch * pb.H, triton.cdiv(PN, block))
    # forward-direction states move right, its adjoints left; the reverse direction mirrors it
    if pb.has_f:
        state_passing_kernel[grid](states_f, carry_f, pb.nchunks, PN, TO_RIGHT=not adjoint,
                                   BLOCK=block, **KERNEL_OPTIONS["state_passing"])
    if pb.has_r:
        state_passing_kernel[grid](states_r, carry_r, pb.nchunks, PN, TO_RIGHT=adjoint,
                                   BLOCK=block, **KERNEL_OPTIONS["state_passing"])
    return states_f, states_r


def _chunk_scan(pb, x, z, D, quasi, states_f, states_r, out, dy=None, dz=None):
    f, r = pb.f, pb.r
    share_cb = pb.has_f and pb.has_r and not quasi and pb.share_B and pb.share_C
    dy_ = dy if dy is not None else x
    dz_ = dz if dz is not None else x
    z_ = z if z is not None else x
    chunk_scan_fwd_kernel[pb.grid](
        x, *x.stride(), z_, *z_.stride(), out, *out.stride(), dy_, *dy_.stride(),
        dz_, *dz_.stride(),
        f.B, *f.B.stride(), f.C, *f.C.stride(), r.B, *r.B.stride(), r.C, *r.C.stride(),
        f.dt, *f.dt.stride(), r.dt, *r.dt.stride(),
        f.A, r.A, pb.opt(pb.dt_bias), pb.opt(D), pb.opt(pb.seq_idx),
        states_f, states_r,
        pb.L, pb.H, pb.H // pb.G, pb.P, pb.N, pb.nchunks,
        QUASI=quasi, C_SHIFT_F=-1 if quasi else 0, C_SHIFT_R=1 if quasi else 0,
        SHARE_CB=share_cb, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_Z=z is not None, GATE_BWD=dy is not None, **pb.common_flags(),
        **KERNEL_OPTIONS["chunk_scan"],
    )


def scan_fwd(x, fwd, rev, D, z, dt_bias, seq_idx, dt_softplus, quasi, chunk_size=CHUNK_SIZE):
    """y (like x) of the scan in the directions given (see module docstring)."""
    pb = _Problem(x, fwd, rev, seq_idx, dt_bias, dt_softplus, chunk_size)
    states_f, states_r = _states(pb, x, adjoint=False)
    y = empty(x.shape, x.dtype, x.device)
    _chunk_scan(pb, x, z, D, quasi, states_f, states_r, y)
    return y


def scan_bwd(dy, x, fwd, rev, D, z, dt_bias, seq_idx, dt_softplus, quasi, chunk_size=CHUNK_SIZE):
    """Every gradient of the scan (see module docstring). Returns ScanGradsRaw; per-direction
    gradients of B and C are summed over the heads of each group, dA over batch and chunks."""
    pb = _Problem(x, fwd, rev, seq_idx, dt_bias, dt_softplus, chunk_size)
    states_f, states_r = _states(pb, x, adjoint=False)
    dz = None
    if z is not None:
        dy_pre = empty(x.shape, dy.dtype, x.device)
        dz = empty(z.shape, z.dtype, z.device)
        _chunk_scan(pb, x, z, D, quasi, states_f, states_r, dy_pre, dy=dy, dz=dz)
    else:
        dy_pre = dy
    shift_f, shift_r = (1, -1) if quasi else (0, 0)
    adj_f, adj_r = _states(pb, dy_pre, adjoint=True, shift_f=shift_f, shift_r=shift_r)

    batch, L, H, P, N, G = pb.batch, pb.L, pb.H, pb.P, pb.N, pb.G
    dx = empty(x.shape, x.dtype, x.device)
    f32 = dict(dtype=torch.float32, device=x.device)

    def direction_buffers(active, shared_dt, shared_B, shared_C):
        if not active:
            return None
        return (None if shared_dt else empty((batch, L, H), **f32),
                empty((batch * H, pb.nchunks), **f32),
                None if shared_B else empty((batch, L, H, N), **f32),
                None if shared_C else empty((batch, L, H, N), **f32))

    buf_f = direction_buffers(pb.has_f, False, False, False)
    buf_r = direction_buffers(pb.has_r, pb.share_dt, pb.share_B, pb.share_C)
    dD_part = empty((batch * H, pb.nchunks, P), **f32) if D is not None else None
    bf = buf_f or buf_r
    br = tuple(r if r is not None else f for r, f in zip(buf_r or bf, bf))
    f, r = pb.f, pb.r
    chunk_scan_bwd_kernel[pb.grid](
        x, *x.stride(), dy_pre, *dy_pre.stride(), dx, *dx.stride(),
        f.B, *f.B.stride(), f.C, *f.C.stride(), r.B, *r.B.stride(), r.C, *r.C.stride(),
        f.dt, *f.dt.stride(), r.dt, *r.dt.stride(),
        f.A, r.A, pb.opt(dt_bias), pb.opt(D), pb.opt(seq_idx),
        states_f, states_r, adj_f, adj_r,
        bf[0], br[0], bf[2], br[2], bf[3], br[3], bf[1], br[1], pb.opt(dD_part),
        L, H, H // G, P, N, pb.nchunks,
        DY_SHIFT_F=shift_f, DY_SHIFT_R=shift_r, SHARE_B=pb.share_B, SHARE_C=pb.share_C,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        BLOCK_K=min(pb.BLOCK_N, BWD_BLOCK_K), **pb.common_flags(),
        **KERNEL_OPTIONS["chunk_scan_bwd"],
    )

    def reduce(buf):
        if buf is None:
            return None
        ddt, dA, dB, dC = buf

        def per_group(t):
            return None if t is None else t.view(batch, L, G, H // G, N).sum(3)

        return DirectionGrads(ddt, dA.view(batch, H, pb.nchunks).sum((0, 2)), per_group(dB),
                              per_group(dC))

    grads_f, grads_r = reduce(buf_f), reduce(buf_r)
    ddt_bias = None
    if dt_bias is not None:
        ddt_bias = sum(g.ddt.sum((0, 1)) for g in (grads_f, grads_r) if g is not None and g.ddt is not None)
    dD = None
    if D is not None:
        dD = dD_part.view(batch, H, pb.nchunks, P).sum((0, 2))
        if D.dim() == 1:
            dD = dD.sum(1)
    return ScanGradsRaw(dx, grads_f, grads_r, dD, dz, ddt_bias)
