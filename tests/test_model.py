"""The thin MMHNet: learning, long generation, guidance, checkpoints, the pieces of its path."""

import pytest
import torch

from mmhnet.model import (MODEL_KINDS, SyntheticTask, build_model,
                          draw_training_randomness, euler_sample, flow_matching_loss,
                          frame_counts, get_config, load_checkpoint, make_optimizer,
                          preset_parameter_counts, save_checkpoint, training_step)
from mmhnet.model.features import sync_index, visual_index
from mmhnet.model.interleave import interleave_order

TINY = get_config("tiny")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fixed_batch(seconds=4.0, batch=2, seed=0):
    clips = SyntheticTask(TINY).sample(seconds, batch, generator=torch.Generator().manual_seed(seed))
    draws = draw_training_randomness(clips.latents, generator=torch.Generator().manual_seed(seed))
    return clips, draws


@pytest.fixture(scope="module")
def trained_tiny():
    """The tiny MMHNet after 40 steps on one fixed batch, with its loss curve."""
    torch.manual_seed(0)
    model = build_model("tiny")
    optimizer = make_optimizer(model, lr=3e-3)
    clips, draws = _fixed_batch()
    losses = [training_step(model, optimizer, clips.latents, clips.conditions, draws).loss.item()
              for _ in range(40)]
    return model.eval(), losses


def test_frame_counts_and_sync_index():
    assert frame_counts(TINY, 8) == (64, 192, 250, 8.0)
    assert frame_counts(TINY, 300) == (2400, 7200, 9375, 300.0)
    assert frame_counts(TINY.replace(audio="44k"), 8).audio == 345
    idx = sync_index(9375, 7200, TINY)
    centres = (torch.arange(9375, dtype=torch.float64) + 0.5) / 31.25
    assert torch.equal(idx, torch.floor(centres * 24).long())
    assert idx[-1] == 7199 and bool((idx[1:] >= idx[:-1]).all())
    assert sync_index(63, 48, TINY)[-1] == 47        # 2 s: the 63rd frame reaches past 2 s
    assert torch.equal(visual_index(9375, 2400, TINY), torch.floor(centres * 8).long())
    assert visual_index(63, 16, TINY)[-1] == 15


def test_mmhnet_reads_each_visual_frame_at_the_audio_frames_it_covers():
    """The original-space input of MMHNet carries the visual features frame-aligned: changing
    visual frame j changes exactly the audio frames whose centre it covers."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    clips, _ = _fixed_batch(seconds=2.0, batch=1)
    changed = clips.conditions.visual.clone()
    changed[0, 5] += 1.0
    with torch.no_grad():
        before = model.encode_conditions(clips.conditions).frame_features
        after = model.encode_conditions(clips.conditions._replace(visual=changed)).frame_features
    moved = (after - before).abs().amax(-1)[0] > 0
    assert moved.nonzero().squeeze(1).tolist() == (visual_index(63, 16, TINY) == 5).nonzero(
        ).squeeze(1).tolist()


def test_interleaving_orders_by_time_video_first():
    # clip 0: chunks at audio frames 0, 5, 9; clip 1: chunk at 0 (31.25 Hz vs 8 fps video)
    frames = torch.tensor([0, 5, 9, 0])
    mix = interleave_order(frames, torch.tensor([0, 3, 4], dtype=torch.int32), 3, TINY)
    # pool rows: chunks 0..3, then video (clip 0: 4, 5, 6; clip 1: 7, 8, 9)
    # times (s): chunks 0, 0.16, 0.288 | 0; video 0, 0.125, 0.25 per clip
    assert mix.order.tolist() == [4, 0, 5, 1, 6, 2, 7, 3, 8, 9]
    assert mix.cu_seqlens.tolist() == [0, 6, 10]
    assert mix.token_sequence.tolist() == [0] * 6 + [1] * 4
    chunks, video = torch.randn(4, 8), torch.randn(6, 8)
    assert torch.equal(mix.chunks_of(mix.gather(chunks, video)), chunks)


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_every_parameter_gets_a_finite_gradient(kind):
    """Also with video and text dropped for some clips: DDP needs every parameter used."""
    model = build_model("tiny", kind)
    clips, draws = _fixed_batch(seconds=2.0, batch=3)
    draws = draws._replace(drop_video=torch.tensor([True, False, False]),
                           drop_text=torch.tensor([False, True, False]))
    # the zero-initialised head blocks every other gradient at the first step: give it weights
    torch.nn.init.normal_(model.head.out.weight, std=0.1)
    flow_matching_loss(model, clips.latents, clips.conditions, draws).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{kind}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{kind}: non-finite gradient for {name}"


def test_loss_drops_on_a_fixed_batch(trained_tiny):
    _, losses = trained_tiny
    assert losses[-1] < 0.5 * losses[0], losses


def test_generates_300_seconds_on_cpu(trained_tiny):
    model, _ = trained_tiny
    clips = SyntheticTask(TINY).sample(300, generator=torch.Generator().manual_seed(1))
    out = euler_sample(model, clips.conditions, steps=2, cfg_scale=4.5,
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 9375, 20)
    assert torch.isfinite(out).all()


def test_classifier_free_guidance_changes_the_output(trained_tiny):
    model, _ = trained_tiny
    clips = SyntheticTask(TINY).sample(4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(1, frame_counts(TINY, 4).audio, 20)
    plain = euler_sample(model, clips.conditions, steps=4, cfg_scale=1.0, noise=noise)
    guided = euler_sample(model, clips.conditions, steps=4, cfg_scale=3.0, noise=noise)
    again = euler_sample(model, clips.conditions, steps=4, cfg_scale=3.0, noise=noise)
    assert torch.equal(guided, again)
    assert (guided - plain).abs().mean() > 1e-3 * plain.abs().mean()


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_checkpoint_round_trip(tmp_path, kind, trained_tiny):
    model = trained_tiny[0] if kind == "mmhnet" else build_model("tiny", kind).eval()
    optimizer = make_optimizer(model)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer=optimizer, step=7)
    ckpt = load_checkpoint(path)
    assert ckpt.kind == kind and ckpt.step == 7 and ckpt.optimizer_state is not None
    assert ckpt.model.config == model.config
    state, restored = model.state_dict(), ckpt.model.state_dict()
    assert state.keys() == restored.keys()
    for k in state:
        assert torch.equal(state[k], restored[k]), k
    clips, _ = _fixed_batch(seconds=2.0, batch=1)
    x, t = torch.randn_like(clips.latents), torch.tensor([0.3])
    with torch.no_grad():
        assert torch.equal(model(x, t, clips.conditions).velocity,
                           ckpt.model.eval()(x, t, clips.conditions).velocity)


def test_presets_have_the_documented_sizes():
    counts = preset_parameter_counts(get_config("S"))
    assert get_config("S").d_model == 448
    assert 150e6 < counts["mmhnet"] < 165e6           # MMAudio-S: ~157M
    for config in (get_config("S"), TINY):            # the baseline is about the same size
        counts = preset_parameter_counts(config)
        assert abs(counts["baseline"] - counts["mmhnet"]) < 0.1 * counts["mmhnet"], config.name

