"""A synthetic video-to-audio task whose audio latents follow visual events.

A fixed random "world" (seeded) has K event classes and S scenes. A clip of any duration is cut
into 1 s slots; each slot holds an event with probability 1/2, of a random class, starting at a
random one of the slot's first four visual frames (so events start on the 8 fps grid and two
events are at least 0.5 s apart). Then, with unit-variance random codes:

    visual frame j   = noise + visual_code[k]      for the 4 frames (0.5 s) an event is visible
    sync frame 3j+r  = noise + onset_code          for the 3 sync frames of an event's first frame
    text tokens      = text_code[scene] + noise    (77 x 1024; a scene's code is one vector
                                                    shared by its tokens plus a per-token part)
    latent frame i   = scene_code[scene] + sum over events of
                       audio_code[k] * exp(-(i - i0) / (0.25 s * frame rate))  for i >= i0,
                       + small noise
    where i0 = the first audio frame at or after the event's onset.

So the audio depends on the video locally in time (what and when), and on the text globally
(the scene). Nothing depends on absolute time: a model that learns the task on 8 s clips can do
it at any duration. All tensors follow the feature layout of features.py.
"""

import math
from typing import NamedTuple

import torch

from .features import Conditions, frame_counts

__all__ = ["SyntheticTask", "SyntheticClips"]


class SyntheticClips(NamedTuple):
    """conditions: Conditions of B clips; latents (B, A, latent_dim); scenes (B,) int64;
    events (E, 3) int64 rows (clip, class, first audio frame i0)."""
    conditions: Conditions
    latents: torch.Tensor
    scenes: torch.Tensor
    events: torch.Tensor


class SyntheticTask:
    """The task's world (codes drawn from ``seed``) and its clip sampler ``sample``."""

    VISIBLE_FRAMES = 4        # visual frames an event is visible (0.5 s at 8 fps)
    ONSET_CHOICES = 4         # an event starts in the first 4 visual frames of its slot
    SLOT_FRAMES = 8           # visual frames per slot (1 s)
    EVENT_PROB = 0.5
    DECAY_SECONDS = 0.25
    ENVELOPE_DECAYS = 4       # envelope cut after 4 decay times (e^-4 ~ 0.02)

    def __init__(self, config, *, num_classes=4, num_scenes=4, feature_noise=0.3,
                 latent_noise=0.05, seed=0):
        self.config = config
        self.num_classes, self.num_scenes = num_classes, num_scenes
        self.feature_noise, self.latent_noise = feature_noise, latent_noise
        g = torch.Generator().manual_seed(seed)
        c = config
        self.visual_codes = torch.randn(num_classes, c.visual_dim, generator=g)
        self.onset_code = torch.randn(c.sync_dim, generator=g)
        self.text_codes = (torch.randn(num_scenes, 1, c.text_dim, generator=g)
                           + 0.5 * torch.randn(num_scenes, c.text_tokens, c.text_dim, generator=g))
        self.audio_codes = torch.randn(num_classes, c.latent_dim, generator=g)
        self.scene_codes = 0.5 * torch.randn(num_scenes, c.latent_dim, generator=g)
        decay_frames = self.DECAY_SECONDS * c.audio_format.frame_rate
        length = math.ceil(self.ENVELOPE_DECAYS * decay_frames)
        self.envelope = torch.exp(-torch.arange(length, dtype=torch.float32) / decay_frames)

    def _draw_events(self, batch, num_visual, g):
        """(E, 3) rows (clip, class, onset visual frame)."""
        slots = -(-num_visual // self.SLOT_FRAMES)
        active = torch.rand(batch, slots, generator=g) < self.EVENT_PROB
        classes = torch.randint(self.num_classes, (batch, slots), generator=g)
        offsets = torch.randint(self.ONSET_CHOICES, (batch, slots), generator=g)
        onsets = torch.arange(slots)[None] * self.SLOT_FRAMES + offsets
        keep = active & (onsets < num_visual)
        clips = torch.arange(batch)[:, None].expand(batch, slots)
        return torch.stack([clips[keep], classes[keep], onsets[keep]], dim=1)

    @staticmethod
    def _add_spans(target, clips, starts, span_values):
        """target[clip, start + n] += span_values[e, n] for every event e and n inside target."""
        n = span_values.shape[1]
        rows = starts[:, None] + torch.arange(n)[None]
        inside = rows < target.shape[1]
        clip_rows = clips[:, None].expand_as(rows)
        target.index_put_((clip_rows[inside], rows[inside]), span_values[inside], accumulate=True)

    def sample(self, seconds, batch=1, *, generator=None):
        """SyntheticClips of ``batch`` clips of ``seconds`` (rounded to visual frames)."""
        c, g = self.config, generator
        counts = frame_counts(c, seconds)
        fmt = c.audio_format
        events = self._draw_events(batch, counts.visual, g)
        clips, classes, onsets = events.unbind(1)
        noise = self.feature_noise

        visual = noise * torch.randn(batch, counts.visual, c.visual_dim, generator=g)
        vis = self.visual_codes[classes][:, None].expand(-1, self.VISIBLE_FRAMES, -1)
        self._add_spans(visual, clips, onsets, vis)

        sync = noise * torch.randn(batch, counts.sync, c.sync_dim, generator=g)
        per = c.sync_per_visual
        self._add_spans(sync, clips, onsets * per, self.onset_code.expand(len(events), per, -1))

        scenes = torch.randint(self.num_scenes, (batch,), generator=g)
        text = self.text_codes[scenes] + noise * torch.randn(
            batch, c.text_tokens, c.text_dim, generator=g)

        # first audio frame at or after the onset time j / visual_fps
        first = -(-onsets * fmt.sample_rate // (c.visual_fps * fmt.hop))
        latents = self.scene_codes[scenes][:, None].expand(-1, counts.audio, -1).clone()
        sound = self.envelope[None, :, None] * self.audio_codes[classes][:, None]
        self._add_spans(latents, clips, first, sound)
        latents += self.latent_noise * torch.randn(latents.shape, generator=g)
        return SyntheticClips(Conditions(visual, sync, text), latents, scenes,
                              torch.stack([clips, classes, first], dim=1))
