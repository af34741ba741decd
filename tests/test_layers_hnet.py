"""DynamicChunking and HNet: the chunk -> dechunk maths (written here in plain torch), the
straight-through confidence, the ratio loss, arch layouts, packed/padded equivalence,
gradients, state dicts, bad inputs, and train-short / run-long."""

import io

import pytest
import torch
import torch.nn.functional as F

from mmhnet.layers import DynamicChunking, HNet, Isotropic, parse_layout

from helpers import assert_close_rel, random_cu_seqlens

MIXER = dict(d_state=8, headdim=8)
LAYOUT = ["m1", ["m1", ["M1"], "m1"], "m1"]
DIMS = [16, 24, 32]


def build_hnet(layout=LAYOUT, dims=DIMS, **kw):
    return HNet(layout, dims, mixer_options=MIXER, **kw)


def chunk_dechunk_formula(x, q_w, k_w, inner):
    """One sequence x (L, d): boundaries from adjacent cosines, the first token of each chunk,
    inner(chunks), the mean of the left-to-right and right-to-left EMAs with rate p, then each
    token takes its chunk's value (the confidence is 1 in the forward pass)."""
    q, k = x @ q_w.t(), x @ k_w.t()
    cos = F.cosine_similarity(q[1:], k[:-1], dim=-1)
    p = torch.cat([torch.ones(1), ((1 - cos) / 2).clamp(0, 1)])
    starts = p > 0.5
    z = inner(x[starts])
    rate = p[starts].clamp(1e-4, 1 - 1e-4)[:, None]

    def ema(z, rate):
        out, e = [], torch.zeros_like(z[0])
        for zc, rc in zip(z, rate):
            e = rc * zc + (1 - rc) * e
            out.append(e)
        return torch.stack(out)

    smooth = (ema(z, rate) + ema(z.flip(0), rate.flip(0)).flip(0)) / 2
    return smooth[torch.cumsum(starts.long(), 0) - 1], p, starts


def test_dynamic_chunking_round_trip_matches_the_formula():
    dc = DynamicChunking(8)
    lengths = [9, 1, 14]
    # segments of 3 near-equal tokens whose sign alternates: boundaries exactly at segment starts
    segment = torch.cat([torch.arange(n) // 3 for n in lengths])
    x = ((-1.0) ** segment)[:, None] * torch.randn(8) + 0.05 * torch.randn(sum(lengths), 8)
    x = x[None]
    chunks, routing = dc(x, cu_seqlens=random_cu_seqlens(lengths))
    assert torch.equal(routing.mask, torch.cat([torch.arange(n) % 3 == 0 for n in lengths]))
    assert chunks.shape == (1, int(routing.mask.sum()), 8)
    inner = lambda c: torch.tanh(c) * 2  # noqa: E731 — stands for the main network
    y = dc.dechunk(inner(chunks), routing)
    assert y.shape == x.shape
    for s, (a, b) in enumerate(zip(routing.packing.cu_seqlens[:-1].tolist(),
                                   routing.packing.cu_seqlens[1:].tolist())):
        ref, p, starts = chunk_dechunk_formula(x[0, a:b], dc.q_proj.weight, dc.k_proj.weight, inner)
        assert torch.equal(routing.mask[a:b], starts), f"sequence {s}: boundaries"
        assert_close_rel(routing.p[a:b], p, 1e-5, f"sequence {s}: p")
        assert_close_rel(y[0, a:b], ref, 1e-5, f"sequence {s}: dechunked")
    assert_close_rel(routing.compression, torch.tensor(24 / 9), 1e-6, "compression")


def test_confidence_gradient_reaches_the_router_and_ratio_loss_matches_hnet():
    dc = DynamicChunking(8, target_ratio=3.0)
    x = torch.randn(2, 12, 8) + 2 * torch.randn(1, 1, 8)
    chunks, routing = dc(x)
    dc.dechunk(chunks * 1.5, routing).square().sum().backward()
    for name, p in dc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    N, F_, G = 3.0, routing.mask.float().mean(), routing.p.mean()
    expected = N / (N - 1) * ((N - 1) * F_ * G + (1 - F_) * (1 - G))
    assert_close_rel(dc.ratio_loss(routing), expected, 1e-6, "ratio loss")


def test_hnet_shapes_and_every_parameter_gets_a_finite_gradient():
    net = build_hnet()
    x = torch.randn(2, 30, 16, requires_grad=True)
    out = net(x)
    assert out.hidden_states.shape == x.shape
    assert len(out.routings) == 2 and out.ratio_loss.dim() == 0
    (out.hidden_states * torch.randn_like(x)).sum().add(out.ratio_loss).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hnet_packed_and_padded_match_sequences_run_alone(dtype):
    net = build_hnet(["m1", ["m1"], "m1"], [16, 24], dtype=dtype)
    torch.nn.init.normal_(net.residual_proj.weight, std=0.3)  # not the zero initialisation
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    lengths = [11, 1, 6, 17]
    seqs = [torch.randn(1, n, 16, dtype=dtype) for n in lengths]
    alone = [net(s) for s in seqs]
    packed = net(torch.cat(seqs, 1), cu_seqlens=random_cu_seqlens(lengths))
    assert_close_rel(packed.hidden_states, torch.cat([a.hidden_states for a in alone], 1), tol,
                     "packed")
    padded = torch.randn(len(lengths), max(lengths), 16, dtype=dtype)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    for i, s in enumerate(seqs):
        padded[i, :s.shape[1]] = s[0]
    out = net(padded, mask=mask)
    assert_close_rel(out.hidden_states[mask][None], packed.hidden_states, tol, "padded")
    assert (out.hidden_states[~mask] == 0).all()
    assert torch.equal(out.routings[0].mask, packed.routings[0].mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_hnet_converted_with_to_runs_in_the_new_dtype(dtype):
    """module.to(dtype) also converts residual_proj (built float32): the forward follows it."""
    net = build_hnet(["m1", ["m1"], "m1"], [16, 24]).to(dtype)
    out = net(torch.randn(2, 9, 16, dtype=dtype))
    assert out.hidden_states.dtype == dtype and torch.isfinite(out.hidden_states).all()


def test_innermost_only_layout_is_an_isotropic_stack():
    net = HNet(["m2M1"], 16, mixer_options=MIXER)
    iso = Isotropic(16, "m2M1", MIXER)
    iso.load_state_dict({k.removeprefix("main_network."): v for k, v in net.state_dict().items()})
    x = torch.randn(2, 9, 16)
    out = net(x)
    assert torch.equal(out.hidden_states, iso(x)) and out.routings == []


def test_state_dict_round_trip_restores_the_hnet():
    net, other = build_hnet(), build_hnet()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(1, 25, 16)
    assert torch.equal(net(x).hidden_states, other(x).hidden_states)


@pytest.mark.parametrize("layout, dims, match", [
    (["m1", ["m1"]], [16, 24], "arch_layout"),
    (["m1", ["m1"], "x2"], [16, 24], "layout string"),
    (["m1", ["t2"], "m1"], [16, 24], "layout string"),
    (["m1", ["m1"], "m1"], [16], "d_model has 1 entries"),
    (["m1", ["m1"], "m1"], [32, 16], "must not shrink"),
])
def test_bad_layouts_get_clear_errors(layout, dims, match):
    with pytest.raises(ValueError, match=match):
        HNet(layout, dims, mixer_options=MIXER)


def test_bad_inputs_get_clear_errors():
    net = build_hnet(["m1", ["m1"], "m1"], [16, 24])
    with pytest.raises(ValueError, match="d_model=16"):
        net(torch.randn(1, 5, 24))
    with pytest.raises(ValueError, match="3 dimensions"):
        net(torch.randn(5, 16))
    with pytest.raises(ValueError, match="cu_seqlens.*batch 1"):
        net(torch.randn(2, 5, 16), cu_seqlens=random_cu_seqlens([3, 2]))
    with pytest.raises(ValueError, match="target_ratio"):
        DynamicChunking(8, target_ratio=1.0)
    with pytest.raises(ValueError, match="target_ratio must be finite"):
        DynamicChunking(8, target_ratio=float("inf"))
    with pytest.raises(TypeError, match="target_ratio must be a Python number, got str"):
        DynamicChunking(8, target_ratio="4")
    with pytest.raises(ValueError, match="d_model must be positive, got 0"):
        DynamicChunking(0)
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        DynamicChunking(8, bidirectional="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        DynamicChunking(8, backend="fast")
    with pytest.raises(ValueError, match="target_ratio must be finite"):
        HNet(["m1", ["m1"], "m1"], [16, 24], target_ratios=float("inf"), mixer_options=MIXER)
    assert parse_layout("m2M1") == ["m", "m", "M"]


def test_hnet_trained_on_250_tokens_runs_unchanged_at_9375_and_65536():
    net = build_hnet(["m1", ["M1"], "m1"], [16, 24])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(2, 250, 16)
    target = torch.roll(x, 2, dims=1)
    losses = []
    for _ in range(3):
        out = net(x)
        loss = (out.hidden_states - target).pow(2).mean() + 0.03 * out.ratio_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        scale = net(x).hidden_states.std()
        for n in (9375, 65536):
            out = net(torch.randn(1, n, 16))
            assert out.hidden_states.shape == (1, n, 16)
            assert torch.isfinite(out.hidden_states).all() and torch.isfinite(out.ratio_loss)
            assert out.hidden_states.std() < 10 * scale


def test_hnet_does_not_depend_on_the_backend():
    net = build_hnet(["m1", ["m1"], "m1"], [16, 24])
    ref = build_hnet(["m1", ["m1"], "m1"], [16, 24], backend="reference")
    ref.load_state_dict(net.state_dict())
    x = torch.randn(2, 19, 16)
    a, b = net(x), ref(x)
    assert_close_rel(a.hidden_states, b.hidden_states, 1e-4, "hidden states")
    assert_close_rel(a.ratio_loss, b.ratio_loss, 1e-5, "ratio loss")
