"""The input feature layout: frame counts per duration, the sync-to-audio index, validation, and
feature files.

For a clip of V visual frames (V / 8 seconds):

    visual  (V, 1024)      CLIP-like features at 8 fps
    sync    (3 V, 768)     Synchformer-like features at 24 fps
    text    (77, 1024)     text token features (one set per clip)
    latent  (A, 20 | 40)   audio latents, A = ceil(V / 8 * sample_rate / hop)  (training only)

so 8 s is 64 / 192 / 77 / 250 (16 kHz) or 345 (44.1 kHz) rows, and 300 s is 2400 / 7200 / 77 /
9375 (16 kHz). A feature file is ``torch.save`` of a dict with exactly these keys (``latent``
optional for generation), unbatched. Batched tensors in the model carry a leading batch axis.
"""

import math
from typing import NamedTuple

import torch

__all__ = ["FeatureError", "Conditions", "FrameCounts", "frame_counts", "sync_index",
           "visual_index",
           "validate_layout", "check_finite", "validate_features", "validate_batch",
           "read_feature_file", "finish_features", "load_feature_file", "save_feature_file",
           "FEATURE_KEYS"]

FEATURE_KEYS = ("visual", "sync", "text", "latent")


class FeatureError(ValueError):
    """A feature tensor or file does not have the layout the model reads; the message names the
    field and what was expected."""


class Conditions(NamedTuple):
    """The conditioning features of a batch.

    visual (B, V, visual_dim); sync (B, sync_per_visual * V, sync_dim); text (B, text_tokens,
    text_dim).
    """
    visual: torch.Tensor
    sync: torch.Tensor
    text: torch.Tensor

    @property
    def batch(self):
        return self.visual.shape[0]

    def to(self, *args, **kwargs):
        return Conditions(*(t.to(*args, **kwargs) for t in self))

    @staticmethod
    def cat(items):
        """Concatenate along the batch axis."""
        return Conditions(*(torch.cat(parts) for parts in zip(*items)))


class FrameCounts(NamedTuple):
    """Rows of each stream for one clip: visual, sync, audio (latent frames)."""
    visual: int
    sync: int
    audio: int
    seconds: float


def frame_counts(config, seconds=None, *, visual_frames=None):
    """FrameCounts of a clip of ``seconds`` (rounded to whole visual frames) or of
    ``visual_frames`` visual frames. Integer arithmetic: 300 s at 16 kHz -> 9375 audio frames."""
    if (seconds is None) == (visual_frames is None):
        raise ValueError("give seconds or visual_frames")
    if visual_frames is None:
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if not math.isfinite(seconds * config.visual_fps):
            raise ValueError(f"seconds must be a finite number of visual frames, got {seconds!r}")
        visual_frames = round(seconds * config.visual_fps)
        if visual_frames < 1:
            raise ValueError(f"{seconds} s is shorter than one visual frame "
                             f"(1 / {config.visual_fps} s)")
    fmt = config.audio_format
    audio = -(-visual_frames * fmt.sample_rate // (config.visual_fps * fmt.hop))
    return FrameCounts(visual_frames, visual_frames * config.sync_per_visual, audio,
                       visual_frames / config.visual_fps)


def _covering_frame(num_audio, num_frames, fps, config, device):
    """For each audio frame, the frame of a ``fps`` stream that covers its centre."""
    fmt = config.audio_format
    i = torch.arange(num_audio, device=device, dtype=torch.int64)
    index = (2 * i + 1) * (fps * fmt.hop) // (2 * fmt.sample_rate)
    return index.clamp_(max=num_frames - 1)


def sync_index(num_audio, num_sync, config, device=None):
    """For each audio frame, the sync frame that covers its centre: (num_audio,) int64.

    Audio frame i is centred at (i + 1/2) hop / sample_rate seconds; at sync_fps frames per
    second that is sync frame floor((2 i + 1) sync_fps hop / (2 sample_rate)), computed exactly
    in integers, and clamped to the last sync frame (the last audio frame may reach past the
    video: 2 s is 62.5 frames at 31.25 Hz, rounded up to 63). Only frame rates are involved,
    no positional information.
    """
    return _covering_frame(num_audio, num_sync, config.sync_fps, config, device)


def visual_index(num_audio, num_visual, config, device=None):
    """For each audio frame, the visual frame that covers its centre: (num_audio,) int64 (as
    sync_index, at visual_fps)."""
    return _covering_frame(num_audio, num_visual, config.visual_fps, config, device)


def _check_tensor(field, t, shape, where):
    """shape: expected sizes, None where any size is allowed."""
    if not isinstance(t, torch.Tensor):
        raise FeatureError(f"{where}'{field}' must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise FeatureError(f"{where}'{field}' must be a floating-point tensor, got {t.dtype}")
    names = ", ".join("*" if s is None else str(s) for s in shape)
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        raise FeatureError(f"{where}'{field}' must have shape ({names}), got {tuple(t.shape)}")


def _check_durations(config, visual, sync, latent, where, batched):
    axis = 1 if batched else 0
    counts = frame_counts(config, visual_frames=visual.shape[axis]) if visual.shape[axis] else None
    if counts is None:
        raise FeatureError(f"{where}'visual' has no frames: a clip needs at least one")
    if sync.shape[axis] != counts.sync:
        raise FeatureError(
            f"{where}'sync' has {sync.shape[axis]} frames but 'visual' has {counts.visual} frames "
            f"({counts.seconds:g} s at {config.visual_fps} fps), which needs {counts.sync} sync "
            f"frames at {config.sync_fps} fps: the durations do not match")
    if latent is not None and latent.shape[axis] != counts.audio:
        raise FeatureError(
            f"{where}'latent' has {latent.shape[axis]} frames but 'visual' has {counts.visual} "
            f"frames ({counts.seconds:g} s), which needs {counts.audio} latent frames at "
            f"{config.audio_format.frame_rate:g} Hz: the durations do not match")
    return counts


def validate_layout(features, config, *, need_latent=False, where="features: "):
    """Check one clip's feature dict (unbatched tensors) against ``config``: keys, dtypes, shapes
    and durations, reading no values (a file's declared length can be checked before anything
    is computed on it). Returns its FrameCounts; raises FeatureError naming the field."""
    if not isinstance(features, dict):
        raise FeatureError(f"{where}expected a dict with keys {FEATURE_KEYS}, got "
                           f"{type(features).__name__}")
    unknown = sorted(set(features) - set(FEATURE_KEYS), key=repr)
    if unknown:
        raise FeatureError(f"{where}unknown keys {unknown}; a feature dict has exactly "
                           f"{FEATURE_KEYS} ('latent' optional for generation)")
    required = FEATURE_KEYS if need_latent else FEATURE_KEYS[:3]
    missing = [k for k in required if k not in features]
    if missing:
        raise FeatureError(f"{where}missing {missing}" + (" (training needs the audio latents)"
                                                          if missing == ["latent"] else ""))
    _check_tensor("visual", features["visual"], (None, config.visual_dim), where)
    _check_tensor("sync", features["sync"], (None, config.sync_dim), where)
    _check_tensor("text", features["text"], (config.text_tokens, config.text_dim), where)
    latent = features.get("latent")
    if latent is not None:
        _check_tensor("latent", latent, (None, config.latent_dim), where)
    return _check_durations(config, features["visual"], features["sync"], latent, where, False)


def _all_finite(t, rows=1 << 16):
    """torch.isfinite(t).all() for a 2-D tensor, reading each stored value once (a stride-0
    axis repeats one row: only that row is read) and ``rows`` rows at a time, so a tensor
    declaring millions of rows never needs a mask of its full size."""
    for dim, stride in enumerate(t.stride()):
        if stride == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return all(bool(torch.isfinite(part).all()) for part in t.split(rows))


def check_finite(features, where="features: "):
    """FeatureError naming the first field with NaN or infinite values."""
    for key in FEATURE_KEYS:
        if key in features and not _all_finite(features[key]):
            raise FeatureError(f"{where}'{key}' has NaN or infinite values")


def validate_features(features, config, *, need_latent=False, where="features: "):
    """Check one clip's feature dict (unbatched tensors) against ``config``: validate_layout,
    then every value finite. Returns its FrameCounts; raises FeatureError naming the field
    otherwise."""
    counts = validate_layout(features, config, need_latent=need_latent, where=where)
    check_finite(features, where)
    return counts


def validate_batch(config, conditions, latent=None):
    """Check batched model inputs: Conditions and optionally latents (B, A, latent_dim).
    Metadata only (no host sync). Returns the FrameCounts of one clip."""
    where = "model input "
    b = conditions.visual.shape[0] if isinstance(conditions.visual, torch.Tensor) else None
    _check_tensor("visual", conditions.visual, (b, None, config.visual_dim), where)
    _check_tensor("sync", conditions.sync, (b, None, config.sync_dim), where)
    _check_tensor("text", conditions.text, (b, config.text_tokens, config.text_dim), where)
    if latent is not None:
        _check_tensor("latent", latent, (b, None, config.latent_dim), where)
    return _check_durations(config, conditions.visual, conditions.sync, latent, where, True)


def read_feature_file(path, config, *, need_latent=False):
    """Read a feature file and check its layout (validate_layout), not its values: (features
    dict as stored, FrameCounts). The caller checks what the declared length costs, then calls
    finish_features. Every error names the file and the field."""
    try:
        features = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeatureError(f"feature file {path}: no such file") from None
    except IsADirectoryError:
        raise FeatureError(f"feature file {path} is a directory, not a file") from None
    except Exception as exc:  # torch.load raises many types for a malformed file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FeatureError(f"feature file {path}: cannot be read by torch.load ({reason})") \
            from None
    counts = validate_layout(features, config, need_latent=need_latent,
                             where=f"feature file {path}: ")
    return features, counts


def finish_features(features, path):
    """Check that every value of a read feature dict is finite; returns it as float32."""
    check_finite(features, where=f"feature file {path}: ")
    return {k: v.float() for k, v in features.items()}


def load_feature_file(path, config, *, need_latent=False):
    """Read and validate a feature file (module docstring). Returns (features dict,
    FrameCounts); every error names the file and the field."""
    features, counts = read_feature_file(path, config, need_latent=need_latent)
    return finish_features(features, path), counts


def save_feature_file(path, features, config):
    """Validate and write one clip's features (unbatched tensors)."""
    validate_features(features, config)
    torch.save({k: v.detach().cpu().contiguous() for k, v in features.items()}, path)
