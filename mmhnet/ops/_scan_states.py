"""mamba_ssm's keywords of the scans, handled in plain torch around the custom op (whose schema
does not change): ``chunk_size``, ``seq_idx``, ``dt_limit``, ``initial_states`` and
``return_final_states`` (DESIGN.md, Op 1).

State maths for one direction over one sequence of L tokens (left to right; a reverse direction
is the same on the flipped sequence), with lam_t = dt'_t A <= 0:

    the initial state h0 adds        exp(sum_{u<=t} lam_u) C_t . h0       to yf_t
    the final state is        h_T = sum_s exp(sum_{s<u<=T} lam_u) dt'_s B_s (x) x_s
                                    + exp(sum_{u<=T} lam_u) h0

Every exponent is a sum of log-decays taken from the sequence's own start or end (forward and
reverse cumulative sums per sequence, never a difference of two sums), so it is <= 0 and the
decays lose no precision with the length. Arithmetic is float32 (float64 for float64 inputs);
autograd differentiates it, so these terms cost nothing unless the keywords are used.
"""

import math

import torch
import torch.nn.functional as F

from ._checks import check_tensor, check_token_count
from .reference import compute_dtype

NO_DT_LIMIT = (0.0, float("inf"))
INT_DTYPES = (torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def check_chunk_size(chunk_size):
    """None or a positive int. A tuning hint in mamba_ssm; every backend here picks its own
    chunk length, so the value never changes a result."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int, got {type(chunk_size).__name__} "
                        f"{chunk_size!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")


def check_dt_limit(dt_limit):
    """(min, max) with 0 <= min <= max, min finite, max finite or inf. Returns None for the
    default (0, inf), which clamps nothing, else the pair as floats."""
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        raise TypeError(f"dt_limit must be a pair (min, max) of Python numbers, got "
                        f"{type(dt_limit).__name__} {dt_limit!r}")
    for what, v in zip(("min", "max"), dt_limit):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"dt_limit {what} must be a Python number, got {type(v).__name__} "
                            f"{v!r}")
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"dt_limit must not hold NaN, got {tuple(dt_limit)}")
    if not (0.0 <= lo < math.inf):
        raise ValueError(f"dt_limit min must be finite and >= 0 (dt' is a step size), got {lo}")
    if hi < lo:
        raise ValueError(f"dt_limit must have min <= max, got min {lo} > max {hi}")
    return None if (lo, hi) == NO_DT_LIMIT else (lo, hi)


def check_seq_idx(seq_idx, batch, seqlen, cu_seqlens):
    """Metadata checks of seq_idx (batch, seqlen), an int tensor, not together with cu_seqlens."""
    if seq_idx is None:
        return
    if cu_seqlens is not None:
        raise ValueError("seq_idx and cu_seqlens both mark sequence boundaries; pass one of them")
    check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), dtypes=INT_DTYPES)
    check_token_count("x", batch * seqlen, "tokens in all rows (seq_idx packs them)")


def seq_idx_to_cu_seqlens(seq_idx):
    """seq_idx (batch, seqlen), non-decreasing along each row -> int32 offsets (nseq + 1,) of the
    rows packed one after another: a sequence starts at every row start and wherever seq_idx
    changes, so tokens with different seq_idx, or in different rows, never interact. One host
    sync (the number of sequences is data)."""
    b, l = seq_idx.shape
    if l == 0:
        return torch.zeros(b + 1, dtype=torch.int32, device=seq_idx.device)
    step = seq_idx[:, 1:] - seq_idx[:, :-1]
    bad = torch.nonzero(step < 0)
    if bad.numel():
        r, i = int(bad[0, 0]), int(bad[0, 1]) + 1
        raise ValueError(f"seq_idx must not decrease along a row (each sequence one run of "
                         f"tokens), but seq_idx[{r}, {i}] = {int(seq_idx[r, i])} < "
                         f"seq_idx[{r}, {i - 1}] = {int(seq_idx[r, i - 1])}")
    starts = torch.ones(b, l, dtype=torch.bool, device=seq_idx.device)
    starts[:, 1:] = step != 0
    offsets = torch.nonzero(starts.reshape(-1)).reshape(-1)
    end = torch.full((1,), b * l, dtype=offsets.dtype, device=offsets.device)
    return torch.cat([offsets, end]).to(torch.int32)


def check_state(name, state, shape, device):
    """One initial state: None or a floating tensor of ``shape`` on ``device``."""
    check_tensor(name, state, shape=shape, optional=True)
    if state is not None and state.device != device:
        raise ValueError(f"{name} is on {state.device} but x is on {device}; all tensors must be "
                         f"on the same device")


def unpack_pair(initial_states):
    """bi_selective_scan's initial_states: None or a pair (h0_fwd, h0_rev), either None."""
    if initial_states is None:
        return None, None
    if not isinstance(initial_states, (tuple, list)) or len(initial_states) != 2:
        raise TypeError(f"initial_states of bi_selective_scan must be a pair (h0_fwd, h0_rev) "
                        f"(either may be None), got {type(initial_states).__name__}")
    return tuple(initial_states)


# ----------------------------------------------------------------------------------------------
# dt
# ----------------------------------------------------------------------------------------------

def effective_dt(dt, dt_bias, dt_softplus, limit, cd):
    """dt' = clamp(softplus(dt + dt_bias), *limit) in ``cd`` (b, l, h): the kernels then get it
    with no bias and no softplus. Clamping as mamba_ssm: no gradient where dt' is outside
    [min, max]; softplus as torch's (linear above 20, as mamba's)."""
    out = dt.to(cd)
    if dt_bias is not None:
        out = out + dt_bias.to(cd)
    if dt_softplus:
        out = F.softplus(out)
    return out if limit is None else out.clamp(*limit)


# ----------------------------------------------------------------------------------------------
# states
# ----------------------------------------------------------------------------------------------

def _by_group(t, g):
    """(..., h, p) -> (..., g, h // g, p): head h reads group h // (h / g)."""
    return t.reshape(*t.shape[:-2], g, t.shape[-2] // g, t.shape[-1])


def _sequence_terms(x, dt, A, B, C, h0, want_final, reverse, quasi, cd):
    """One direction over a batch of whole sequences: x (b, l, h, p), dt (b, l, h) effective,
    A (h,), B, C (b, l, g, n), h0 None | (b, h, p, n).

    Returns (extra, final): extra (b, l, h, p), the initial state's share of the direction's
    output (shifted one token away from the entering side when ``quasi``: yf_{t-1}, yr_{t+1},
    0 at the entering end), or None without h0; final (b, h, p, n), the state after the last
    token (the first when ``reverse``), or None unless ``want_final``.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if l == 0:
        final = None
        if want_final:
            final = x.new_zeros(b, h, p, n, dtype=cd) if h0 is None else h0.to(cd)
        return (x.new_zeros(b, 0, h, p, dtype=cd) if h0 is not None else None), final
    if reverse:  # the same recurrence on the flipped sequence
        x, dt, B, C = (t.flip(1) for t in (x, dt, B, C))
    lam = dt.to(cd) * A.to(cd)  # (b, l, h) log-decays, <= 0
    extra = final = None
    if h0 is not None:
        h0c = h0.to(cd)
        read = torch.einsum("blgn,bgkpn->blgkp", C.to(cd), h0c.reshape(b, g, h // g, p, n))
        read = read.reshape(b, l, h, p)  # C_t . h0
        extra = torch.exp(lam.cumsum(1))[..., None] * read
        if quasi:
            extra = F.pad(extra[:, :-1], (0, 0, 0, 0, 1, 0))
        if reverse:
            extra = extra.flip(1)
    if want_final:
        # sum_{s<u<=T} lam_u for every s: a reverse cumulative sum, shifted by one token
        after = F.pad(lam.flip(1).cumsum(1).flip(1)[:, 1:], (0, 0, 0, 1))
        weighted = (torch.exp(after) * dt.to(cd))[..., None] * x.to(cd)  # (b, l, h, p)
        final = torch.einsum("blgkp,blgn->bgkpn", _by_group(weighted, g), B.to(cd))
        final = final.reshape(b, h, p, n)
        if h0 is not None:
            final = final + torch.exp(lam.sum(1))[..., None, None] * h0c
    return extra, final


def direction_terms(x, dt, A, B, C, h0, want_final, reverse, quasi, bounds):
    """``_sequence_terms`` per sequence. bounds: None (each batch row is one sequence; h0 and
    the final state are (batch, h, p, n)) or the host list of packed offsets (batch 1; states
    (nseq, h, p, n)). Returns (extra (b, l, h, p) or None, final or None)."""
    cd = compute_dtype(x)
    if bounds is None:
        return _sequence_terms(x, dt, A, B, C, h0, want_final, reverse, quasi, cd)
    extras, finals = [], []
    for j, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        extra, final = _sequence_terms(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e],
                                       None if h0 is None else h0[j:j + 1], want_final,
                                       reverse, quasi, cd)
        extras.append(extra)
        finals.append(final)
    return (None if h0 is None else torch.cat(extras, 1),
            torch.cat(finals, 0) if want_final else None)
