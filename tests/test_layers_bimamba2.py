"""BiMamba2 and its parts: shapes, gradients, packed/padded equivalence, the conv paths, the
fused gated norm, Hydra and Vim v2 compatibility (their formulas written here in plain torch),
state dicts, bad inputs, torch.compile, and train-short / run-long."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from mmhnet.layers import (HYDRA_OPTIONS, BiMamba2, DepthwiseConv1d, RMSNormGated,
                           gated_rms_norm_linear)
from mmhnet.layers import conv as conv_module

from helpers import INTERPRET, TOL, TRITON_DEVICE, assert_close_rel, random_cu_seqlens

TINY = dict(d_state=8, headdim=8)  # d_model 16 -> d_inner 32, 4 heads

CONFIGS = {
    "default": dict(),
    "quasiseparable": dict(mode="quasiseparable"),
    "vim_style_sum": dict(reverse_params=("dt", "dt_bias", "B", "C", "A")),
    "hydra": {**HYDRA_OPTIONS, "d_state": 8},
    "per_direction_conv": dict(conv_per_direction=True, reverse_params=("dt", "B")),
    "D_from_input_no_norm": dict(D_from_input=True, rmsnorm=False),
    "gate_in_scan": dict(rmsnorm=False, D_has_hdim=True),
    # dt initialised inside dt_limit: a head whose dt is clamped everywhere gets no dt_bias
    # gradient (as in Mamba2), which the gradient test below would take for a bug
    "d_ssm_mlp_dt_limit": dict(d_ssm=16, dt_limit=(0.01, 0.3), dt_min=0.02, dt_max=0.2, ngroups=2,
                               bias=True),
    "norm_before_gate_odd_conv": dict(norm_before_gate=True, d_conv=3, norm_per_group=False),
}


def build(d_model=16, **options):
    return BiMamba2(d_model, **{**TINY, **options})


# ----------------------------------------------------------------------------------------------
# plain-torch formulas used as ground truth
# ----------------------------------------------------------------------------------------------

def ssd_matrix(x, dt, A, B, C):
    """Causal SSD in matrix form: y_t = sum_{s<=t} (C_t . B_s) exp(A (S_t - S_s)) dt_s x_s with
    S the cumulative sum of dt. x (b,L,h,p), dt (b,L,h) effective, A (h,), B, C (b,L,g,n)."""
    h, g, L = x.shape[2], B.shape[2], x.shape[1]
    Bh, Ch = B.repeat_interleave(h // g, dim=2), C.repeat_interleave(h // g, dim=2)
    S = dt.cumsum(1)
    seg = (S[:, :, None, :] - S[:, None, :, :]) * A  # (b, t, s, h)
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None, :, :, None]
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
    CB = torch.einsum("bthn,bshn->btsh", Ch, Bh)
    return torch.einsum("btsh,bsh,bshp->bthp", CB * decay, dt, x)


def conv_window(x, weight, bias, left):
    """silu of a depthwise conv over (b, L, C) with `left` zero rows before, the rest after."""
    k = weight.shape[-1]
    xp = F.pad(x.transpose(1, 2), (left, k - 1 - left))
    return F.silu(F.conv1d(xp, weight, bias, groups=x.shape[-1])).transpose(1, 2)


def flip(t):
    return t.flip(1)


def hydra_formula(m, u):
    """Hydra's mixer (Hwang et al. 2024): QS(x) = shift(SS(x)) + flip(shift(SS(flip x))) + D(x) x,
    on the parameters of ``m`` (same names and in_proj layout as Hydra's module)."""
    d, gn, h, p = m.d_inner, m.ngroups * m.d_state, m.nheads, m.headdim
    z, xBC, dt = torch.split(F.linear(u, m.in_proj.weight), [d, d + 4 * gn, 2 * h], dim=-1)
    dt = F.softplus(dt + m.dt_bias.repeat(2))
    xBC = conv_window(xBC, m.conv1d.weight, m.conv1d.bias, m.d_conv // 2)
    x, Bf, Cf, Bb, Cb = torch.split(xBC, [d, gn, gn, gn, gn], dim=-1)
    b, L = u.shape[:2]
    grp = lambda t: t.reshape(b, L, m.ngroups, m.d_state)  # noqa: E731
    xh = x.reshape(b, L, h, p)
    A = -torch.exp(m.A_log)
    yf = ssd_matrix(xh, dt[..., :h], A, grp(Bf), grp(Cf))
    yb = flip(ssd_matrix(flip(xh), flip(dt[..., h:]), A, flip(grp(Bb)), flip(grp(Cb))))
    zero = torch.zeros_like(yf[:, :1])
    y = torch.cat([zero, yf[:, :-1]], 1) + torch.cat([yb[:, 1:], zero], 1)
    y = y + xh * (F.linear(x, m.fc_D.weight) + m.D)[..., None]
    y = y.reshape(b, L, d)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps) * m.norm.weight
    return F.linear(y * F.silu(z), m.out_proj.weight)


def vim_v2_formula(m, u):
    """Vim's bidirectional v2 block (Zhu et al. 2024) with a Mamba-2 SSM: the forward branch is
    causal conv -> SSM -> + D x, the backward branch the same on the flipped sequence with its
    own conv, dt, B, C, A, D; each is gated by silu(z) and the two are summed before out_proj."""
    d, gn, h, p, k = m.d_inner, m.ngroups * m.d_state, m.nheads, m.headdim, m.d_conv
    z, x, B, C, Bb, Cb, dt = torch.split(F.linear(u, m.in_proj.weight),
                                         [d, d, gn, gn, gn, gn, 2 * h], dim=-1)
    b, L = u.shape[:2]
    grp = lambda t: t.reshape(b, L, m.ngroups, m.d_state)  # noqa: E731
    heads = lambda t: t.reshape(b, L, h, p)  # noqa: E731

    def branch(x, B, C, dt, dt_bias, A_log, D, conv):
        xBC = conv_window(torch.cat([x, B, C], -1), conv.weight, conv.bias, k - 1)
        x, B, C = torch.split(xBC, [d, gn, gn], dim=-1)
        y = ssd_matrix(heads(x), F.softplus(dt + dt_bias), -torch.exp(A_log), grp(B), grp(C))
        return (y + heads(x) * D[:, None]).reshape(b, L, d)

    y_f = branch(x, B, C, dt[..., :h], m.dt_bias, m.A_log, m.D, m.conv1d)
    y_b = flip(branch(flip(x), flip(Bb), flip(Cb), flip(dt[..., h:]), m.dt_bias_rev,
                      m.A_log_rev, m.D_rev, m.conv1d_rev))
    return F.linear(y_f * F.silu(z) + y_b * F.silu(z), m.out_proj.weight)


# ----------------------------------------------------------------------------------------------
# BiMamba2
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shape_and_every_parameter_gets_a_finite_gradient(name):
    m = build(**CONFIGS[name])
    x = torch.randn(2, 23, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


# float64: every step of a float64 layer must stay in float64 (dt, A, D, the dt limit), so the
# layouts agree to rounding; float32 checks the default layer
LAYOUT_TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["default", "quasiseparable", "per_direction_conv", "hydra",
                                  "vim_style_sum", "d_ssm_mlp_dt_limit"])
def test_packed_and_padded_batches_match_sequences_run_alone(name, dtype):
    m = build(**{**CONFIGS[name], "d_conv": 4}, dtype=dtype)
    tol = LAYOUT_TOL[dtype][0]
    lengths = [7, 1, 12, 2, 5]
    seqs = [torch.randn(1, n, 16, dtype=dtype) for n in lengths]
    alone = torch.cat([m(s) for s in seqs], dim=1)

    packed = m(torch.cat(seqs, dim=1), cu_seqlens=random_cu_seqlens(lengths))
    assert_close_rel(packed, alone, tol, f"{name}: packed")

    Lmax = max(lengths)
    padded = torch.zeros(len(lengths), Lmax, 16, dtype=dtype)
    mask = torch.zeros(len(lengths), Lmax, dtype=torch.bool)
    for i, s in enumerate(seqs):
        padded[i, :s.shape[1]] = s[0] + 0
        mask[i, :s.shape[1]] = True
    padded[~mask] = torch.randn(int((~mask).sum()), 16, dtype=dtype)  # padding must not matter
    out = m(padded, mask=mask)
    assert_close_rel(out[mask][None], alone, tol, f"{name}: padded")
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["quasiseparable", "vim_style_sum", "d_ssm_mlp_dt_limit"])
def test_gradients_of_packed_match_sequences_run_alone(name, dtype):
    m = build(**CONFIGS[name], dtype=dtype)
    tol_x, tol_p = LAYOUT_TOL[dtype]
    lengths = [5, 9, 3]
    x = torch.randn(1, sum(lengths), 16, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)
    (m(x, cu_seqlens=random_cu_seqlens(lengths)) * dy).sum().backward()
    g_packed = [p.grad.clone() for p in m.parameters()]
    dx_packed = x.grad.clone()
    m.zero_grad()
    x.grad = None
    parts = torch.split(x, lengths, dim=1)
    sum((m(p) * d).sum() for p, d in zip(parts, torch.split(dy, lengths, dim=1))).backward()
    assert_close_rel(dx_packed, x.grad, tol_x, "dx")
    for (pname, p), gp in zip(m.named_parameters(), g_packed):
        assert_close_rel(gp, p.grad, tol_p, f"gradient of {pname}")


def test_hydra_settings_compute_hydras_mixer():
    m = BiMamba2.hydra(16, headdim=8, d_state=8).double()
    assert m.conv1d.kernel_size[0] == 7 and torch.all(m.A_log == 0)  # Hydra's defaults
    with torch.no_grad():  # move off the initial values so every term matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 19, 16, dtype=torch.float64)
    assert_close_rel(m(u), hydra_formula(m, u), 1e-4, "Hydra mixer")


def test_vim_settings_compute_a_vim_v2_block():
    m = BiMamba2.vim(16, headdim=8, d_state=8, d_conv=4).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 17, 16, dtype=torch.float64)
    assert_close_rel(m(u), vim_v2_formula(m, u), 1e-4, "Vim v2 block")


def test_state_dict_layout_matches_mamba2_and_hydra():
    d_model, n, h = 16, 8, 4
    m = build(d_model)
    expected = {"in_proj.weight": (2 * 32 + 2 * n + h, d_model), "conv1d.weight": (32 + 2 * n, 1, 4),
                "conv1d.bias": (32 + 2 * n,), "dt_bias": (h,), "A_log": (h,), "D": (h,),
                "norm.weight": (32,), "out_proj.weight": (d_model, 32)}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    hy = BiMamba2.hydra(d_model, headdim=8, d_state=n)
    expected_hydra = {"in_proj.weight": (2 * 32 + 4 * n + 2 * h, d_model),
                      "conv1d.weight": (32 + 4 * n, 1, 7), "conv1d.bias": (32 + 4 * n,),
                      "dt_bias": (h,), "A_log": (h,), "D": (h,), "fc_D.weight": (h, 32),
                      "norm.weight": (32,), "out_proj.weight": (d_model, 32)}
    assert {k: tuple(v.shape) for k, v in hy.state_dict().items()} == expected_hydra


def test_state_dict_round_trip_restores_the_layer():
    m = build(**CONFIGS["vim_style_sum"])
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    other = build(**CONFIGS["vim_style_sum"])
    x = torch.randn(2, 11, 16)
    assert not torch.equal(m(x), other(x))
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(m(x), other(x))


def test_bad_inputs_get_clear_errors():
    m = build()
    with pytest.raises(ValueError, match="d_model=16"):
        m(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="3 dimensions"):
        m(torch.randn(5, 16))
    with pytest.raises(ValueError, match="cu_seqlens.*batch 1"):
        m(torch.randn(2, 5, 16), cu_seqlens=random_cu_seqlens([2, 3]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        m(torch.randn(1, 5, 16), cu_seqlens=random_cu_seqlens([2, 2]))
    with pytest.raises(ValueError, match="mask must have shape"):
        m(torch.randn(2, 5, 16), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool"):
        m(torch.randn(2, 5, 16), mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        m(torch.ones(2, 5, 16, dtype=torch.long))


@pytest.mark.parametrize("options, match", [
    (dict(mode="causal"), "mode"),
    (dict(reverse_params=("dt", "X")), "reverse_params"),
    (dict(headdim=12), "headdim"),
    (dict(ngroups=3), "ngroups"),
    (dict(conv_per_direction=True, mode="quasiseparable"), "conv_per_direction"),
    (dict(conv_impl="cuda"), "conv impl"),
    (dict(A_init_range=(0, 1)), "A_init_range"),
    (dict(headdim=0), "headdim must be positive, got 0"),
    (dict(headdim=-8), "headdim must be positive, got -8"),
    (dict(d_state=0), "d_state must be positive"),
    (dict(expand=1.3), r"expand \* d_model must be a whole number of channels, got 1.3 \* 16"),
    (dict(expand=-2), "expand must be a positive number"),
    (dict(dt_min=0.0), "0 < dt_min <= dt_max"),
    (dict(dt_min=0.2, dt_max=0.1), "0 < dt_min <= dt_max"),
    (dict(backend="fast"), "backend must be one of"),
])
def test_bad_options_get_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        build(**options)


@pytest.mark.parametrize("options, match", [
    (dict(d_model=16.0), "d_model must be an int, got float"),
    (dict(headdim="8"), "headdim must be an int, got str"),
    (dict(ngroups=True), "ngroups must be an int, got bool"),
])
def test_non_integer_sizes_are_type_errors(options, match):
    with pytest.raises(TypeError, match=match):
        build(**options)


def test_fractional_expand_with_whole_channels_is_accepted():
    assert build(expand=1.5).d_inner == 24


def test_input_dtype_must_match_the_parameters():
    m = build()
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's parameters "
                                        "are torch.float32"):
        m(torch.randn(1, 5, 16, dtype=torch.float64))


def test_mask_with_a_hole_is_refused_and_padding_at_both_ends_is_not():
    m = build()
    x = torch.randn(1, 6, 16)
    hole = torch.tensor([[True, False, True, True, True, True]])
    with pytest.raises(ValueError, match="mask row 0 has 2 separate runs of real tokens"):
        m(x, mask=hole)
    both_ends = torch.tensor([[False, True, True, True, False, False]])
    assert_close_rel(m(x, mask=both_ends)[:, 1:4], m(x[:, 1:4]), 1e-5, "padded at both ends")


def test_torch_compile_matches_eager():
    m = build(mode="quasiseparable")
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(2, 20, 16, requires_grad=True)
    y_eager = m(x)
    g_eager = torch.autograd.grad(y_eager.square().sum(), [x, m.in_proj.weight])
    y = compiled(x)
    g = torch.autograd.grad(y.square().sum(), [x, m.in_proj.weight])
    assert_close_rel(y, y_eager, 1e-5, "compiled output")
    for a, b in zip(g, g_eager):
        assert_close_rel(a, b, 1e-4, "compiled gradient")


def test_trained_on_250_tokens_runs_unchanged_at_9375_and_65536():
    m = build(d_conv=4, mode="quasiseparable")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.randn(2, 250, 16)
    target = torch.roll(x, 3, dims=1)
    losses = []
    for _ in range(4):
        loss = (m(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        for n in (9375, 65536):
            y = m(torch.randn(1, n, 16))
            assert y.shape == (1, n, 16) and torch.isfinite(y).all()
            # same per-token scale as at the training length: nothing grows with the length
            assert y.std() < 10 * m(x).std()


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs Triton")
def test_triton_backend_matches_the_float64_reference_layer():
    """backend="triton" in float32 (on the GPU where there is one, else under the interpreter)
    against the same layer in float64 with the reference scan: output and gradients. (On a GPU
    the default backend is triton itself, so it cannot serve as the reference.)"""
    m = build(mode="quasiseparable")
    x, dy = torch.randn(1, 12, 16), torch.randn(1, 12, 16)

    def run(m, backend, dtype, device):
        m = copy.deepcopy(m).to(dtype=dtype, device=device)
        m.backend = backend
        xl = x.to(dtype=dtype, device=device).requires_grad_(True)
        y = m(xl)
        return (y, *torch.autograd.grad(y, [xl, m.in_proj.weight, m.A_log],
                                        dy.to(dtype=dtype, device=device)))

    ref = run(m, "reference", torch.float64, "cpu")
    got = run(m, "triton", torch.float32, TRITON_DEVICE)
    for name, a, b in zip(("y", "dx", "d in_proj.weight", "dA_log"), got, ref):
        assert_close_rel(a.cpu(), b, TOL[torch.float32], f"triton vs float64 reference: {name}")


# ----------------------------------------------------------------------------------------------
# the conv
# ----------------------------------------------------------------------------------------------

def causal_conv1d_emulated(x, weight, bias=None, seq_idx=None, activation=None):
    """Pure-torch stand-in with causal_conv1d_fn's semantics: x (b, C, L), weight (C, k)."""
    k = weight.shape[-1]
    out = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None], bias, groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out


@pytest.mark.parametrize("d_conv, left, reverse", [(4, None, False), (3, None, False),
                                                   (4, 3, False), (4, 3, True), (2, None, False)])
@pytest.mark.parametrize("layout", ["batch", "packed", "padded"])
def test_conv_paths_agree(monkeypatch, d_conv, left, reverse, layout):
    conv = DepthwiseConv1d(6, d_conv, left=left, reverse=reverse, impl="torch")
    lengths = [4, 1, 9, 3]
    if layout == "batch":
        x, kw = torch.randn(3, 10, 6), {}
    elif layout == "packed":
        x, kw = torch.randn(1, sum(lengths), 6), {"cu_seqlens": random_cu_seqlens(lengths)}
    else:
        x = torch.randn(len(lengths), max(lengths), 6)
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        kw = {"mask": mask}
    x.requires_grad_(True)
    dy = torch.randn(x.shape)

    def run(impl):
        conv.impl = impl
        y = conv(x, **kw)
        grads = torch.autograd.grad((y * dy).sum(), [x, conv.weight, conv.bias])
        return y, grads

    y_torch, g_torch = run("torch")
    monkeypatch.setattr(conv_module, "load_causal_conv1d", lambda: causal_conv1d_emulated)
    y_cc, g_cc = run("causal_conv1d")
    assert_close_rel(y_cc, y_torch, 1e-6, "output")
    for a, b in zip(g_cc, g_torch):
        assert_close_rel(a, b, 1e-5, "gradient")

    # and both equal the plain definition, sequence by sequence
    if layout == "batch":
        k = conv.kernel_size[0]
        weight = conv.weight.flip(-1) if reverse else conv.weight
        ref = conv_window(x, weight, conv.bias, conv.left if left is not None else k // 2)
        assert_close_rel(y_torch, ref, 1e-6, "definition")


def test_conv_impl_causal_conv1d_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(conv_module, "load_causal_conv1d", lambda: None)
    conv = DepthwiseConv1d(4, 4, impl="causal_conv1d")
    with pytest.raises(RuntimeError, match="causal-conv1d package"):
        conv(torch.randn(1, 5, 4))
    conv.impl = "auto"  # auto falls back to the torch path
    assert conv(torch.randn(1, 5, 4)).shape == (1, 5, 4)


# ----------------------------------------------------------------------------------------------
# the fused gated norm + linear
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 4])
@pytest.mark.parametrize("gated", [True, False])
def test_gated_rms_norm_linear_matches_autograd(norm_before_gate, group_size, gated):
    norm = RMSNormGated(12, group_size=group_size, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.add_(torch.randn(12, dtype=torch.float64))
    lin = torch.nn.Linear(12, 5).double()
    y = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 7, 12, dtype=torch.float64, requires_grad=True) if gated else None
    inputs = [y, norm.weight, lin.weight, lin.bias] + ([z] if gated else [])
    dout = torch.randn(2, 7, 5, dtype=torch.float64)
    ref = lin(norm(y, z))
    g_ref = torch.autograd.grad(ref, inputs, dout)
    out = gated_rms_norm_linear(y, z, norm, lin.weight, lin.bias)
    g = torch.autograd.grad(out, inputs, dout)
    assert_close_rel(out, ref, 1e-12, "output")
    for a, b in zip(g, g_ref):
        assert_close_rel(a, b, 1e-10, "gradient")


@pytest.mark.parametrize("name", ["quasiseparable", "per_direction_conv"])
def test_default_and_reference_backends_give_the_same_layer(name):
    m = build(**CONFIGS[name])
    x = torch.randn(1, 21, 16, requires_grad=True)
    cu = random_cu_seqlens([8, 13])
    results = []
    for backend in (None, "reference"):
        m.backend = backend
        y = m(x, cu_seqlens=cu)
        results.append((y, *torch.autograd.grad(y.square().sum(), [x, m.in_proj.weight, m.A_log])))
    for a, b in zip(*results):
        assert_close_rel(a, b, 1e-4, f"{name}: default vs reference")
