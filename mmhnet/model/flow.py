"""Conditional flow matching: training loss with logit-normal t, Euler sampling with
classifier-free guidance.

Noise x0 ~ N(0, I) at t = 0, data x1 at t = 1:

    x_t = (1 - t) x0 + t x1,      target velocity x1 - x0,      t = sigmoid(n), n ~ N(0, 1)
    loss = mean (v(x_t, t, c) - (x1 - x0))^2 + ratio_loss_weight * ratio loss

During training the video (visual + sync) and the text conditions of each clip are dropped
(replaced by the learned null conditions) with probability 0.1 each, independently.
Sampling integrates dx/dt = v from t = 0 to 1 in ``steps`` Euler steps; with guidance scale s,

    v = v(x, t, null) + s (v(x, t, c) - v(x, t, null))      (s = 1: no guidance, one pass)

where null drops both video and text. The conditional and null passes run as one batch.
"""

from typing import Callable, NamedTuple, Optional

import torch

from .conditioning import EncodedConditions
from .features import Conditions, validate_batch

__all__ = ["DROP_PROB", "DEFAULT_STEPS", "DEFAULT_CFG_SCALE", "TrainingDraws", "LossOutput",
           "draw_training_randomness", "logit_normal", "interpolate", "flow_matching_loss",
           "Guidance", "prepare_guidance", "sampling_step", "euler_sample"]

DROP_PROB = 0.1
DEFAULT_STEPS = 25
DEFAULT_CFG_SCALE = 4.5


class TrainingDraws(NamedTuple):
    """The random draws of one training step: t (B,), noise x0 like the latents, drop_video and
    drop_text (B,) bool. Fixing them makes a step deterministic (tests, DDP checks)."""
    t: torch.Tensor
    noise: torch.Tensor
    drop_video: torch.Tensor
    drop_text: torch.Tensor


class LossOutput(NamedTuple):
    """loss = flow_loss + ratio_loss_weight * ratio_loss (0-dim each); compression: audio frames
    per chunk (1 for models without chunking)."""
    loss: torch.Tensor
    flow_loss: torch.Tensor
    ratio_loss: torch.Tensor
    compression: torch.Tensor


def logit_normal(batch, *, generator=None, device=None):
    """(batch,) flow times t = sigmoid(n), n ~ N(0, 1): most draws near t = 1/2."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device))


def draw_training_randomness(latents, *, drop_prob=DROP_PROB, generator=None):
    """TrainingDraws for latents (B, A, C), drawn on the generator's device (default: the
    latents' device) and moved to the latents' device."""
    b, device = latents.shape[0], latents.device
    gen = dict(generator=generator,
               device=generator.device if generator is not None else device)
    return TrainingDraws(
        t=logit_normal(b, **gen).to(device),
        noise=torch.randn(latents.shape, **gen).to(device, latents.dtype),
        drop_video=(torch.rand(b, **gen) < drop_prob).to(device),
        drop_text=(torch.rand(b, **gen) < drop_prob).to(device))


def interpolate(x0, x1, t):
    """x_t = (1 - t) x0 + t x1, t (B,) broadcast over frames and channels."""
    t = t.to(x0.dtype)[:, None, None]
    return (1 - t) * x0 + t * x1


def flow_matching_loss(model, latents, conditions, draws: Optional[TrainingDraws] = None, *,
                       generator=None):
    """Training loss of ``model`` (MMHNet or AttentionBaseline) on latents (B, A, C) with their
    Conditions. ``draws``: fixed randomness (default: drawn here). ``model`` may be wrapped in
    DistributedDataParallel. Returns LossOutput."""
    config = getattr(model, "module", model).config
    validate_batch(config, conditions, latents)
    if draws is None:
        draws = draw_training_randomness(latents, generator=generator)
    x_t = interpolate(draws.noise, latents, draws.t)
    out = model(x_t, draws.t, conditions, draws.drop_video, draws.drop_text)
    flow = (out.velocity.float() - (latents - draws.noise).float()).square().mean()
    loss = flow + config.ratio_loss_weight * out.ratio_loss
    return LossOutput(loss, flow.detach(), out.ratio_loss.detach(), out.compression.detach())


class Guidance(NamedTuple):
    """Encoded conditions for sampling: the conditional batch, followed by the null batch when
    cfg_scale != 1 (encoded has 2B rows then)."""
    encoded: EncodedConditions
    batch: int
    cfg_scale: float


def prepare_guidance(model, conditions: Conditions, cfg_scale=DEFAULT_CFG_SCALE):
    """Encode the conditions once for all sampling steps (plus the null conditions for CFG)."""
    b, device = conditions.batch, conditions.visual.device
    if cfg_scale == 1:
        return Guidance(model.encode_conditions(conditions), b, 1.0)
    keep = torch.zeros(b, dtype=torch.bool, device=device)
    encoded = model.encode_conditions(Conditions.cat([conditions, conditions]),
                                      torch.cat([keep, ~keep]), torch.cat([keep, ~keep]))
    return Guidance(encoded, b, float(cfg_scale))


@torch.no_grad()
def sampling_step(model, x, t, dt, guidance: Guidance):
    """One Euler step x (B, A, C) at time t (float) -> x + dt * guided velocity."""
    b = guidance.batch
    x_in = x if guidance.cfg_scale == 1 else torch.cat([x, x])
    times = torch.full((x_in.shape[0],), float(t), device=x.device)
    v = model.velocity(x_in, times, guidance.encoded).velocity
    if guidance.cfg_scale != 1:
        v_cond, v_null = v[:b], v[b:]
        v = v_null + guidance.cfg_scale * (v_cond - v_null)
    return x + dt * v.to(x.dtype)


@torch.no_grad()
def euler_sample(model, conditions: Conditions, *, steps=DEFAULT_STEPS,
                 cfg_scale=DEFAULT_CFG_SCALE, noise=None, generator=None,
                 progress: Optional[Callable[[int, int], None]] = None):
    """Generate latents (B, A, latent_dim) for the clips of ``conditions`` (any duration).

    noise: the starting x0 (default drawn with ``generator``); progress(step, steps) is called
    after every step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    counts = validate_batch(model.config, conditions)
    shape = (conditions.batch, counts.audio, model.config.latent_dim)
    device = conditions.visual.device
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=gen_device).to(device)
    x = noise
    if tuple(x.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(x.shape)}")
    guidance = prepare_guidance(model, conditions, cfg_scale)
    times = torch.linspace(0, 1, steps + 1).tolist()
    for i in range(steps):
        x = sampling_step(model, x, times[i], times[i + 1] - times[i], guidance)
        if progress is not None:
            progress(i + 1, steps)
    return x

