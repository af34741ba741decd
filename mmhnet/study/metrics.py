"""The study's two measures, on the synthetic task (mmhnet.model.synthetic).

per-frame error: mean over frames and channels of (generated - reference)^2.

event alignment: the fraction of the reference events that the generated latents reproduce at
the right time. For an event of class k starting at audio frame i0 in a clip of scene s, the
matched filter

    m_i = (x_i - scene_code[s]) . audio_code[k] / |audio_code[k]|^2      (1 at an exact onset)

is read over i0 - WINDOW .. i0 + WINDOW; the event counts as aligned when m peaks within
TOLERANCE frames of i0 (2 frames = 64 ms at 31.25 Hz) with a peak of at least MIN_PEAK.
"""

import torch

__all__ = ["per_frame_error", "event_alignment", "WINDOW", "TOLERANCE", "MIN_PEAK"]

WINDOW = 8
TOLERANCE = 2
MIN_PEAK = 0.5


def per_frame_error(generated, reference):
    """generated, reference (B, A, C) -> float."""
    return (generated.float() - reference.float()).square().mean().item()


def event_alignment(generated, clips, task):
    """Fraction (float in [0, 1]) of clips.events aligned in ``generated`` (B, A, C)."""
    events = clips.events
    if events.shape[0] == 0:
        return float("nan")
    clip, cls, onset = events.unbind(1)
    offsets = torch.arange(-WINDOW, WINDOW + 1)
    frames = onset[:, None] + offsets[None]
    valid = (frames >= 0) & (frames < generated.shape[1])
    rows = generated.float()[clip[:, None], frames.clamp(0, generated.shape[1] - 1)]
    codes = task.audio_codes[cls]
    centred = rows - task.scene_codes[clips.scenes[clip]][:, None]
    match = (centred * codes[:, None]).sum(-1) / codes.square().sum(-1, keepdim=True)
    match = match.masked_fill(~valid, float("-inf"))
    peak, where = match.max(dim=1)
    aligned = (offsets[where].abs() <= TOLERANCE) & (peak >= MIN_PEAK)
    return aligned.float().mean().item()
