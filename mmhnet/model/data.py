"""Training data: batches of (latents, Conditions) of fixed-length clips, from feature files or
from the synthetic task. Each process of a distributed run reads its own share.

Feature files (features.py layout) may be longer than the training clip: a random window of
``clip_seconds`` is cut, aligned to the visual frames; the latent window starts at the audio
frame nearest to the window's start time (at most half an audio frame, 16 ms at 31.25 Hz, off
when the frame rates do not divide).
"""

import glob
import os

import torch

from .features import (Conditions, FeatureError, finish_features, frame_counts,
                       read_feature_file)
from .synthetic import SyntheticTask

__all__ = ["feature_paths", "FeatureFileSource", "SyntheticSource", "crop_clip"]


def feature_paths(items):
    """Expand files, directories (their *.pt files) and glob patterns into a sorted list."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = glob.glob(os.path.join(item, "*.pt"))
        else:
            found = glob.glob(item) or [item]
        paths.extend(found)
    if not paths:
        raise FeatureError(f"no feature files found in {list(items)}")
    return sorted(set(paths))


def crop_clip(features, config, clip_seconds, generator=None):
    """A random clip_seconds window of one clip's features (unbatched dict, with latent)."""
    total = frame_counts(config, visual_frames=features["visual"].shape[0])
    clip = frame_counts(config, clip_seconds)
    if clip.visual > total.visual:
        raise FeatureError(f"clip of {total.seconds:g} s is shorter than the training clip "
                           f"length {clip.seconds:g} s")
    start = int(torch.randint(total.visual - clip.visual + 1, (1,), generator=generator))
    fmt = config.audio_format
    audio_start = min(round(start * fmt.sample_rate / (config.visual_fps * fmt.hop)),
                      total.audio - clip.audio)
    per = config.sync_per_visual
    return {
        "visual": features["visual"][start:start + clip.visual],
        "sync": features["sync"][start * per:(start + clip.visual) * per],
        "text": features["text"],
        "latent": features["latent"][audio_start:audio_start + clip.audio],
    }


class FeatureFileSource:
    """Random batches of clip_seconds windows from feature files; process ``rank`` of
    ``world_size`` reads files rank, rank + world_size, ..."""

    def __init__(self, paths, config, clip_seconds=8.0, rank=0, world_size=1):
        self.paths = list(paths)[rank::world_size]
        if not self.paths:
            raise FeatureError(f"process {rank} of {world_size} has no feature files "
                               f"({len(paths)} files for {world_size} processes)")
        self.config, self.clip_seconds = config, clip_seconds

    def batch(self, batch_size, generator=None):
        """(latents (B, A, C), Conditions)."""
        picks = torch.randint(len(self.paths), (batch_size,), generator=generator).tolist()
        clips = []
        for i in picks:
            features, _ = read_feature_file(self.paths[i], self.config, need_latent=True)
            try:
                clip = crop_clip(features, self.config, self.clip_seconds, generator)
            except FeatureError as exc:
                raise FeatureError(f"feature file {self.paths[i]}: {exc}") from None
            # only the window is checked and converted: a long file is never copied whole
            clips.append(finish_features(clip, self.paths[i]))
        stack = {k: torch.stack([c[k] for c in clips]) for k in clips[0]}
        return stack["latent"], Conditions(stack["visual"], stack["sync"], stack["text"])


class SyntheticSource:
    """Batches of the synthetic task (synthetic.py) at clip_seconds."""

    def __init__(self, config, clip_seconds=8.0, seed=0):
        self.task = SyntheticTask(config, seed=seed)
        self.clip_seconds = clip_seconds

    def batch(self, batch_size, generator=None):
        clips = self.task.sample(self.clip_seconds, batch_size, generator=generator)
        return clips.latents, clips.conditions
