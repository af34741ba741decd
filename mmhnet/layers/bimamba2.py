"""BiMamba2: a non-causal (bidirectional) Mamba-2 mixer, a drop-in for mamba_ssm's Mamba2,
for Hydra, and for an attention block.

    layer = BiMamba2(d_model=512)                  # Mamba2(d_model=512) made bidirectional
    y = layer(x)                                   # x (batch, seqlen, 512) -> (batch, seqlen, 512)
    y = layer(x, cu_seqlens=cu)                    # x (1, total, 512): packed sequences
    y = layer(x, mask=mask)                        # padded batch, mask (batch, seqlen) True = real

Per token t (shapes: d_inner = expand * d_model, nheads = d_ssm / headdim):

    z, x, B, C, dt = in_proj(u_t)                   split in Mamba-2's order [z, x, B, C, dt]
    x, B, C = silu(centred depthwise conv(x, B, C))  (see conv.py for the window)
    y = bi_selective_scan(x, dt, A, B, C, D, mode)  mode "sum": forward + reverse + D x
                                                    mode "quasiseparable": Hydra's shifted form
    out = out_proj(gated_rmsnorm(y, z))

Options beyond Mamba2's (keyword-only):

* ``mode``: "sum" (Vim-style) or "quasiseparable" (Hydra).
* ``reverse_params``: names among "dt", "dt_bias", "B", "C", "A" that get their own reverse-
  direction copy. The extra projections are appended in Hydra's in_proj order
  [z, x, B, C, B_rev, C_rev, dt, dt_rev]; ``A_log_rev`` and ``dt_bias_rev`` are parameters.
* ``conv_per_direction``: Vim v2's two one-sided convs instead of one centred conv: the forward
  scan reads a causal conv of (x, B, C), the reverse scan a causal conv run right to left,
  ``conv1d_rev``, of (x, B_rev, C_rev), and each direction has its own D (``D_rev``). The directions then run as two
  ``selective_scan`` calls (mode "sum" only).
* ``D_from_input``: Hydra's input-dependent skip, D_t = D + fc_D(x_t) per head.
* ``norm_per_group``: normalise each of the ngroups channel groups on its own (Mamba-2, the
  default) or all d_ssm channels together (Hydra).
* ``conv_impl``: "auto" | "torch" | "causal_conv1d" (see conv.py). ``backend``: the scan
  backend (None: mmhnet's default for the device).

``BiMamba2.hydra(d_model)`` and ``BiMamba2.vim(d_model)`` build the Hydra and Vim v2 settings
(docs/layers.md). ``chunk_size`` is accepted for Mamba2 compatibility and recorded; the scan
backends choose their own chunking. ``dt_limit`` clamps softplus(dt + dt_bias) as in Mamba2.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmhnet.ops import bi_selective_scan, selective_scan
from mmhnet.ops._scan_states import check_seq_idx
from mmhnet.ops.scan import seq_idx_to_cu_seqlens
from mmhnet.ops.reference import compute_dtype

from ._checks import (check_backend, check_mask_contiguous, check_param_dtype, check_positive_int,
                      check_tokens)
from .conv import DepthwiseConv1d
from .norms import RMSNormGated, gated_rms_norm_linear

__all__ = ["BiMamba2", "REVERSE_PARAMS", "HYDRA_OPTIONS", "VIM_OPTIONS"]

REVERSE_PARAMS = ("dt", "dt_bias", "B", "C", "A")
MODES = ("sum", "quasiseparable")
_NO_DT_LIMIT = (0.0, float("inf"))

# Hydra's mixer (goombalab/hydra, Hydra(...) defaults) in BiMamba2 options.
HYDRA_OPTIONS = dict(d_state=64, d_conv=7, A_init_range=(1, 1), mode="quasiseparable",
                     reverse_params=("dt", "B", "C"), D_from_input=True, norm_before_gate=True,
                     norm_per_group=False)
# Vim's bidirectional v2 block, with Mamba-2's SSM inside.
VIM_OPTIONS = dict(mode="sum", reverse_params=("dt", "dt_bias", "B", "C", "A"),
                   conv_per_direction=True, rmsnorm=False)


def _d_inner(expand, d_model):
    """expand * d_model, which must be a whole number of channels (expand may be a float)."""
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not expand > 0:
        raise ValueError(f"expand must be a positive number, got {expand!r}")
    d_inner = expand * d_model
    if d_inner != int(d_inner):
        raise ValueError(f"expand * d_model must be a whole number of channels, got "
                         f"{expand} * {d_model} = {d_inner}")
    return int(d_inner)


def _unflatten(x, seqlen, d_model):
    """Mamba2's flattened input: x (batch * seqlen, d_model) -> (batch, seqlen, d_model)."""
    check_positive_int("seqlen", seqlen)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] % seqlen != 0:
        raise ValueError(f"with seqlen={seqlen}, x must have shape (batch * seqlen, {d_model}) "
                         f"(Mamba2's flattened input), got {tuple(x.shape)}")
    return x.reshape(x.shape[0] // seqlen, seqlen, x.shape[1])


def _init_dt_bias(nheads, dt_min, dt_max, dt_init_floor, factory):
    """softplus^-1 of dt drawn log-uniformly in [dt_min, dt_max], floored at dt_init_floor."""
    dt = torch.exp(torch.rand(nheads, **factory) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _init_A_log(nheads, A_init_range, device, dtype):
    A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
    return torch.log(A).to(dtype=dtype)


def _no_weight_decay(p):
    p._no_weight_decay = True
    return p


class BiMamba2(nn.Module):
    """Bidirectional Mamba-2 mixer: (batch, seqlen, d_model) -> (batch, seqlen, d_model), or
    packed (1, total, d_model) with ``cu_seqlens``. See the module docstring for the maths and
    the options; constructor names and defaults follow mamba_ssm's Mamba2."""

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64,
                 d_ssm=None, ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True,
                 norm_before_gate=False, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                 dt_limit=_NO_DT_LIMIT, bias=False, conv_bias=True, chunk_size=256,
                 layer_idx=None, device=None, dtype=None, *, mode="sum", reverse_params=(),
                 conv_per_direction=False, D_from_input=False, norm_per_group=True,
                 conv_impl="auto", backend=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv),
                            ("headdim", headdim), ("ngroups", ngroups)):
            check_positive_int(name, value)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = _d_inner(expand, d_model)
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.headdim, self.ngroups = headdim, ngroups
        self.reverse_params = tuple(p for p in REVERSE_PARAMS if p in set(reverse_params))
        self._check_config(A_init_range, mode, reverse_params, conv_per_direction,
                           D_from_input, dt_min, dt_max, backend)
        self.nheads = self.d_ssm // headdim
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size, self.layer_idx = chunk_size, layer_idx
        self.mode, self.conv_per_direction, self.D_from_input = mode, conv_per_direction, D_from_input
        self.backend = backend

        gn, rev = ngroups * d_state, self.reverse_params
        self.d_mlp = self.d_inner - self.d_ssm
        # channels through the conv: x, B, C, then the reverse B, C
        self._conv_split = [self.d_ssm, gn, gn, gn if "B" in rev else 0, gn if "C" in rev else 0]
        n_dt = self.nheads * (2 if "dt" in rev else 1)
        self._in_split = [self.d_mlp, self.d_mlp, self.d_ssm, sum(self._conv_split), n_dt]
        self.in_proj = nn.Linear(d_model, sum(self._in_split), bias=bias, **factory)

        if conv_per_direction:
            # a causal conv for the forward scan, the same run right to left for the reverse one
            self.conv1d = DepthwiseConv1d(self.d_ssm + 2 * gn, d_conv, conv_bias, d_conv - 1,
                                          False, conv_impl, **factory)
            self.conv1d_rev = DepthwiseConv1d(self.d_ssm + 2 * gn, d_conv, conv_bias, d_conv - 1,
                                              True, conv_impl, **factory)
            convs = (self.conv1d, self.conv1d_rev)
        else:
            self.conv1d = DepthwiseConv1d(sum(self._conv_split), d_conv, conv_bias, None, False,
                                          conv_impl, **factory)
            convs = (self.conv1d,)
        if conv_init is not None:
            for conv in convs:
                nn.init.uniform_(conv.weight, -conv_init, conv_init)

        dt_args = (self.nheads, dt_min, dt_max, dt_init_floor, factory)
        self.dt_bias = _no_weight_decay(nn.Parameter(_init_dt_bias(*dt_args)))
        self.A_log = _no_weight_decay(nn.Parameter(_init_A_log(self.nheads, A_init_range, device, dtype)))
        d_size = self.d_ssm if D_has_hdim else self.nheads
        d_dtype = compute_dtype(dtype)  # as Mamba2: not 16-bit
        self.D = _no_weight_decay(nn.Parameter(torch.ones(d_size, device=device, dtype=d_dtype)))
        if "dt_bias" in rev:
            self.dt_bias_rev = _no_weight_decay(nn.Parameter(_init_dt_bias(*dt_args)))
        if "A" in rev:
            self.A_log_rev = _no_weight_decay(
                nn.Parameter(_init_A_log(self.nheads, A_init_range, device, dtype)))
        if conv_per_direction:
            self.D_rev = _no_weight_decay(nn.Parameter(torch.ones(d_size, device=device,
                                                                   dtype=d_dtype)))
        if D_from_input:
            self.fc_D = nn.Linear(self.d_ssm, self.nheads, bias=False, **factory)
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups if norm_per_group else None,
                                     **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _check_config(self, A_init_range, mode, reverse_params, conv_per_direction,
                      D_from_input, dt_min, dt_max, backend):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
        check_backend(backend)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max; got "
                             f"dt_min={dt_min}, dt_max={dt_max}")
        unknown = set(reverse_params) - set(REVERSE_PARAMS)
        if unknown:
            raise ValueError(f"reverse_params must be names among {REVERSE_PARAMS}; got "
                             f"{sorted(unknown)}")
        if not 0 < self.d_ssm <= self.d_inner:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be in 1 .. expand * d_model ({self.d_inner})")
        if self.d_ssm % self.headdim != 0:
            raise ValueError(f"d_ssm ({self.d_ssm}, default expand * d_model) must be a multiple "
                             f"of headdim ({self.headdim})")
        if self.ngroups <= 0 or (self.d_ssm // self.headdim) % self.ngroups != 0:
            raise ValueError(f"nheads ({self.d_ssm // self.headdim}) must be divisible by "
                             f"ngroups ({self.ngroups})")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high; got "
                             f"{A_init_range}")
        if conv_per_direction and mode != "sum":
            raise ValueError("conv_per_direction (Vim v2) needs mode='sum'")
        if conv_per_direction and D_from_input:
            raise ValueError("D_from_input (Hydra) and conv_per_direction (Vim v2) do not combine: "
                             "the two directions read different x")

    @classmethod
    def hydra(cls, d_model, **options):
        """The Hydra mixer's settings (HYDRA_OPTIONS), overridable by ``options``."""
        return cls(d_model, **{**HYDRA_OPTIONS, **options})

    @classmethod
    def vim(cls, d_model, **options):
        """Vim v2's bidirectional settings (VIM_OPTIONS), overridable by ``options``."""
        return cls(d_model, **{**VIM_OPTIONS, **options})

    # ------------------------------------------------------------------------------------------

    def _effective_dt(self, dt, dt_rev):
        """Keyword arguments dt, dt_rev, dt_bias, dt_softplus for the scans. The op adds the
        shared bias and applies softplus itself unless dt_limit or a reverse bias needs the
        effective dt here."""
        separate_bias = "dt_bias" in self.reverse_params
        if self.dt_limit == _NO_DT_LIMIT and not separate_bias:
            return dict(dt=dt, dt_rev=dt_rev, dt_bias=self.dt_bias, dt_softplus=True)

        def effective(raw, b):
            cd = compute_dtype(raw)  # float32, or float64 for a float64 layer
            out = F.softplus(raw.to(cd) + b.to(cd))
            return out if self.dt_limit == _NO_DT_LIMIT else out.clamp(*self.dt_limit)

        dt_f = effective(dt, self.dt_bias)
        dt_r = None
        if dt_rev is not None or separate_bias:
            dt_r = effective(dt if dt_rev is None else dt_rev,
                             self.dt_bias_rev if separate_bias else self.dt_bias)
        return dict(dt=dt_f, dt_rev=dt_r, dt_bias=None, dt_softplus=False)

    def _heads(self, t):
        return t.reshape(*t.shape[:-1], self.nheads, self.headdim)

    def _groups(self, t):
        return None if t.shape[-1] == 0 else t.reshape(*t.shape[:-1], self.ngroups, self.d_state)

    def _D(self, D):
        return D.reshape(self.nheads, self.headdim) if self.D_has_hdim else D

    def forward(self, x, cu_seqlens=None, mask=None, *, seqlen=None, seq_idx=None,
                inference_params=None):
        """x (batch, seqlen, d_model) -> same. cu_seqlens: int (nseq + 1,) offsets of packed
        sequences (batch 1). mask: (batch, seqlen) bool, True for real tokens, which must be
        contiguous in each row; padded rows come out zero.

        Mamba2.forward's keywords, with its meanings: ``seqlen``: x is (batch * seqlen,
        d_model), flattened, and so is the output. ``seq_idx`` (batch, seqlen) int,
        non-decreasing along each row: tokens with different values (or in different rows) never
        interact, conv included (one host sync). ``inference_params`` must be None: a non-causal
        layer has no token-by-token step mode."""
        if inference_params is not None:
            raise ValueError(f"inference_params must be None: BiMamba2 is non-causal (each token "
                             f"reads the whole sequence), so it has no step / decoding mode; got "
                             f"{type(inference_params).__name__}")
        if seqlen is not None:
            return self.forward(_unflatten(x, seqlen, self.d_model), cu_seqlens, mask,
                                seq_idx=seq_idx).reshape(x.shape)
        if seq_idx is not None:
            if cu_seqlens is not None or mask is not None:
                raise ValueError("seq_idx marks the sequences itself; pass it without cu_seqlens "
                                 "or mask")
            check_tokens(x, self.d_model)
            batch, length = x.shape[:2]
            check_seq_idx(seq_idx, batch, length, None)
            packed = self._forward(x.reshape(1, batch * length, x.shape[2]),
                                   seq_idx_to_cu_seqlens(seq_idx), None)
            return packed.reshape(x.shape)
        return self._forward(x, cu_seqlens, mask)

    def _forward(self, x, cu_seqlens, mask):
        check_tokens(x, self.d_model, cu_seqlens, mask)
        check_param_dtype(x, self.in_proj.weight)
        if mask is not None:
            check_mask_contiguous(mask)
        z0, x0, z, xBC, dt = torch.split(self.in_proj(x), self._in_split, dim=-1)
        dt_rev = None
        if "dt" in self.reverse_params:
            dt, dt_rev = dt[..., :self.nheads], dt[..., self.nheads:]
        A = -torch.exp(self.A_log.to(compute_dtype(self.A_log)))
        A_rev = (-torch.exp(self.A_log_rev.to(compute_dtype(self.A_log_rev)))
                 if "A" in self.reverse_params else None)
        gate_in_scan = not self.rmsnorm and not self.D_from_input
        zs = self._heads(z) if gate_in_scan else None
        common = dict(cu_seqlens=cu_seqlens, backend=self.backend, **self._effective_dt(dt, dt_rev))

        if self.conv_per_direction:
            xs = None  # each direction has its own x
            y = self._scan_per_direction(xBC, A, A_rev, zs, cu_seqlens, mask, common)
        else:
            xs, B, C, B_rev, C_rev = torch.split(self.conv1d(xBC, cu_seqlens, mask),
                                                 self._conv_split, dim=-1)
            y = bi_selective_scan(self._heads(xs), A=A, B=self._groups(B), C=self._groups(C),
                                  D=self._D(self.D), z=zs, A_rev=A_rev, B_rev=self._groups(B_rev),
                                  C_rev=self._groups(C_rev), mode=self.mode, **common)
        y = y.reshape(*y.shape[:-2], self.d_ssm)
        if self.D_from_input:
            y = y + (self._heads(xs) * self.fc_D(xs)[..., None]).reshape(y.shape)
        if not self.rmsnorm and not gate_in_scan:
            y = y * F.silu(z)
        out = self._project_out(y, z, z0, x0)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out

    def _scan_per_direction(self, xBC, A, A_rev, zs, cu_seqlens, mask, common):
        """Vim v2: each direction convolves (x, B, C) on its own side and scans it alone."""
        d, gn = self.d_ssm, self.ngroups * self.d_state
        x, B, C, B_rev, C_rev = torch.split(xBC, self._conv_split, dim=-1)
        fwd_in = xBC[..., :d + 2 * gn]
        rev_in = fwd_in if B_rev.shape[-1] == 0 and C_rev.shape[-1] == 0 else torch.cat(
            [x, B_rev if B_rev.shape[-1] else B, C_rev if C_rev.shape[-1] else C], dim=-1)
        xf, Bf, Cf = torch.split(self.conv1d(fwd_in, cu_seqlens, mask), [d, gn, gn], dim=-1)
        xr, Br, Cr = torch.split(self.conv1d_rev(rev_in, cu_seqlens, mask), [d, gn, gn], dim=-1)
        dt_r = common["dt"] if common["dt_rev"] is None else common["dt_rev"]
        args = dict(cu_seqlens=cu_seqlens, backend=self.backend, dt_bias=common["dt_bias"],
                    dt_softplus=common["dt_softplus"], z=zs)
        yf = selective_scan(self._heads(xf), common["dt"], A, self._groups(Bf), self._groups(Cf),
                            D=self._D(self.D), **args)
        yr = selective_scan(self._heads(xr), dt_r, A if A_rev is None else A_rev, self._groups(Br),
                            self._groups(Cr), D=self._D(self.D_rev), reverse=True, **args)
        return yf + yr

    def _project_out(self, y, z, z0, x0):
        """out_proj of [silu(z0) * x0, gated_norm(y, z)] (the first part only when d_ssm < d_inner)."""
        w_mlp, w_ssm = self.out_proj.weight[:, :self.d_mlp], self.out_proj.weight[:, self.d_mlp:]
        if self.rmsnorm:
            out = gated_rms_norm_linear(y, z, self.norm, w_ssm, self.out_proj.bias)
        else:
            out = F.linear(y, w_ssm, self.out_proj.bias)
        if self.d_mlp > 0:
            out = out + F.linear(F.silu(z0) * x0, w_mlp)
        return out

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, headdim={self.headdim}, ngroups={self.ngroups}, "
                f"mode={self.mode!r}, reverse_params={self.reverse_params}, "
                f"conv_per_direction={self.conv_per_direction}, D_from_input={self.D_from_input}")
