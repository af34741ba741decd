"""Checkpoints: one file with the model kind, its config, weights, the optimizer state, the step,
the training loop's random-number states (for an exact resume), and a SHA-256 digest of all of
it.

    save_checkpoint("run.pt", model, optimizer=opt, step=1000, train_state=state)
    ckpt = load_checkpoint("run.pt")            # ckpt.model is rebuilt from the stored config

Writing is atomic and safe: a temporary file created exclusively (``mkstemp``) in the target's
directory, fsynced, renamed over the target, the directory fsynced; an exception, SIGINT or
SIGTERM during the write removes the temporary file and leaves the old checkpoint as it was.
Weights with NaN or infinite values are never written.

Reading goes through ``torch.load(weights_only=True)``, which refuses a pickle that would build
arbitrary objects (run code), then checks every key and type, the config (types and bounds,
config.py), the digest, and that the weights have the shapes the config builds (counted on the
meta device, before anything is allocated). Every problem is a CheckpointError (a ValueError)
naming the file. Checkpoints of format 1 (no digest, no random-number states) are still read,
with a warning: their integrity cannot be checked and a resume from them is not exact.
"""

import contextlib
import hashlib
import os
import pickle
import random
import signal
import tempfile
import threading
import warnings
from typing import NamedTuple, Optional

import torch

from .build import MODEL_KINDS
from .config import ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "Checkpoint", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "model_from_checkpoint", "state_digest",
           "write_atomically", "model_kind", "nonfinite_tensors", "as_tuples"]

CHECKPOINT_FORMAT = "mmhnet-checkpoint-2"
OLD_FORMAT = "mmhnet-checkpoint-1"      # no digest and no train_state: read with a warning
KEYS = {CHECKPOINT_FORMAT: {"format", "kind", "config", "model", "optimizer", "step",
                            "train_state", "digest"},
        OLD_FORMAT: {"format", "kind", "config", "model", "optimizer", "step"}}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class Checkpoint(NamedTuple):
    model: torch.nn.Module
    kind: str
    step: int
    optimizer_state: Optional[dict]
    train_state: Optional[dict]      # random-number states of the training loop (train.py)


def model_kind(model):
    """"mmhnet" or "baseline" for a (possibly DDP-wrapped) model."""
    model = getattr(model, "module", model)
    for kind, cls in MODEL_KINDS.items():
        if type(model) is cls:
            return kind
    raise TypeError(f"not an mmhnet model: {type(model).__name__}")


def nonfinite_tensors(tensors):
    """Names of the floating-point tensors of a {name: tensor} dict with NaN or inf values."""
    return [name for name, t in tensors.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


# ---------------------------------------------------------------------------------- digest

def _feed(h, obj):
    """Hash ``obj`` (tensors, dicts, lists/tuples, scalars, strings, None) unambiguously: every
    item carries its type and length."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)}:{text};".encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def state_digest(state):
    """SHA-256 (hex) of every entry of a checkpoint dict but "digest": the tensors' bytes,
    dtypes and shapes, the config, the step and the rest."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


# --------------------------------------------------------------------------------- writing

@contextlib.contextmanager
def _signals_raise():
    """While writing, SIGINT raises KeyboardInterrupt and SIGTERM SystemExit(143), so the
    cleanup below runs; the previous handlers are restored afterwards (an ignored signal stays
    ignored). Signal handlers can only be set from the main thread: elsewhere, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        previous[signum] = handler
        if handler is not signal.SIG_IGN:
            signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fsync_directory(directory):
    """Make the rename durable; a file system without directory fsync is left as it is."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    """The process's umask (os.umask is the only way to read it: set, then restored)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path, write):
    """Call write(file object) on a temporary file created exclusively (mkstemp: O_EXCL, an
    unpredictable name, never a symlink followed) in ``path``'s directory, fsync it, rename it
    over ``path`` and fsync the directory. On any exception, SIGINT or SIGTERM the temporary
    file is removed and ``path`` is untouched. The file gets the usual 0666 & ~umask mode."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with _signals_raise():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_umask())
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    _fsync_directory(directory)


def save_checkpoint(path, model, *, optimizer=None, step=0, train_state=None):
    """Write the checkpoint atomically (write_atomically), with its digest. train_state: the
    training loop's random-number states (train.py), or None. Raises ValueError, writing
    nothing, when a weight has NaN or infinite values."""
    kind = model_kind(model)
    model = getattr(model, "module", model)
    weights = model.state_dict()
    bad = nonfinite_tensors(weights)
    if bad:
        raise ValueError(f"not writing checkpoint {path}: the weights {bad[:3]} have NaN or "
                         f"infinite values")
    state = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": model.config.to_dict(),
        "model": weights,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        "train_state": train_state,
    }
    state["digest"] = state_digest(state)
    write_atomically(path, lambda f: torch.save(state, f))


# --------------------------------------------------------------------------------- reading

def _first_line(exc, limit=200):
    text = str(exc).strip().splitlines()
    return (text[0][:limit] if text else type(exc).__name__)


def _unpickling_reason(exc):
    """The line of torch's weights-only message that says what failed (the rest is advice)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return next((line for line in lines if "nsupported" in line), _first_line(exc))[:200]


def _torch_load(path):
    """torch.load(weights_only=True) with every failure as a CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} refused: it names Python objects other than tensors and "
                "plain containers, which torch.load(weights_only=True) does not build (building "
                "them could run code from the file; it is not an mmhnet checkpoint)") from None
        raise CheckpointError(f"checkpoint {path} cannot be read by torch.load(weights_only="
                              f"True): corrupted or not a torch file ({_unpickling_reason(exc)})"
                              ) from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") \
            from None
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read by torch.load: truncated, "
                              f"corrupted or not a torch file ({_first_line(exc)})") from None


def _check_entries(path, state):
    """Types of every entry; returns the format."""
    where = f"checkpoint {path}"
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} is not an mmhnet checkpoint (a {type(state).__name__}, "
                              "not a dict)")
    fmt = state.get("format")
    if fmt not in KEYS:
        raise CheckpointError(f"{where} is not an mmhnet checkpoint (format {fmt!r}; expected "
                              f"{CHECKPOINT_FORMAT!r})")
    missing, unknown = sorted(KEYS[fmt] - set(state)), sorted(set(state) - KEYS[fmt], key=repr)
    if missing or unknown:
        raise CheckpointError(f"{where} is damaged: missing keys {missing}, unexpected keys "
                              f"{unknown}")
    checks = {"kind": (str, "a str"), "config": (dict, "a dict"), "model": (dict, "a dict"),
              "optimizer": ((dict, type(None)), "a dict or None"),
              "train_state": ((dict, type(None)), "a dict or None"),
              "digest": (str, "a str")}
    for key, (types, expected) in checks.items():
        if key in state and not isinstance(state[key], types):
            raise CheckpointError(f"{where}: '{key}' must be {expected}, got "
                                  f"{type(state[key]).__name__}")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{where}: 'step' must be an integer >= 0, got {step!r}")
    if state["kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{where}: unknown model kind {state['kind']!r}; expected one of "
                              f"{sorted(MODEL_KINDS)}")
    bad = [k for k, v in state["model"].items()
           if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{where}: 'model' must map names to tensors; bad entries "
                              f"{bad[:3]}")
    return fmt


def as_tuples(obj):
    """A serialised Python random state with its lists made tuples again (random.setstate)."""
    return tuple(as_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def _check_train_state(path, train_state):
    """The training state (train.capture_train_state) can be restored: each state is tried on
    a throwaway generator, so a bad one is an error here, not a crash in the middle of train."""
    where = f"checkpoint {path}: bad 'train_state'"
    if set(train_state) != {"generators", "global"}:
        raise CheckpointError(f"{where}: keys {sorted(train_state, key=repr)}, expected "
                              "['generators', 'global']")
    generators, global_state = train_state["generators"], train_state["global"]
    if not isinstance(generators, (list, tuple)) or not generators \
            or not isinstance(global_state, dict) \
            or set(global_state) != {"torch", "python", "cuda"}:
        raise CheckpointError(f"{where}: not the layout train.capture_train_state writes")
    cuda = global_state["cuda"]
    if cuda is not None and not (isinstance(cuda, (list, tuple)) and all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)):
        raise CheckpointError(f"{where}: the CUDA states must be uint8 tensors")
    try:
        for state in [*generators, global_state["torch"]]:
            torch.Generator().set_state(state)
        random.Random().setstate(as_tuples(global_state["python"]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: {_first_line(exc)}") from None


def read_checkpoint(path):
    """Read and check a checkpoint without building its model: (state dict, ModelConfig).
    Raises CheckpointError (FileNotFoundError for a missing file)."""
    path = os.fspath(path)
    state = _torch_load(path)
    fmt = _check_entries(path, state)
    try:
        config = ModelConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config: {exc}") from None
    if fmt == OLD_FORMAT:
        warnings.warn(f"checkpoint {path} has format {OLD_FORMAT!r}: no digest, so its integrity "
                      "is not checked, and no random-number states, so a resume from it does not "
                      "replay the data order exactly", stacklevel=2)
    elif state_digest(state) != state["digest"]:
        raise CheckpointError(f"checkpoint {path} is corrupted (digest mismatch): its contents "
                              "changed after it was written")
    bad = nonfinite_tensors(state["model"])
    if bad:
        raise CheckpointError(f"checkpoint {path}: the weights {bad[:3]} have NaN or infinite "
                              "values")
    if state.get("train_state") is not None:
        _check_train_state(path, state["train_state"])
    return state, config


def _check_shapes(path, kind, config, weights):
    """The stored weights have exactly the names, shapes and dtypes the config builds (checked
    against a model on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        try:
            expected = MODEL_KINDS[kind](config).state_dict()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: bad config: {exc}") from None
    missing = sorted(set(expected) - set(weights))
    unknown = sorted(set(weights) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"checkpoint {path}: the weights do not match the config: missing "
                              f"{missing[:3]}, unexpected {unknown[:3]}")
    for name, t in expected.items():
        got = weights[name]
        if got.shape != t.shape or got.dtype != t.dtype:
            raise CheckpointError(f"checkpoint {path}: weight {name!r} has shape "
                                  f"{tuple(got.shape)} {got.dtype}, the config builds "
                                  f"{tuple(t.shape)} {t.dtype}")


def model_from_checkpoint(path, state, config, map_location="cpu"):
    """Build the model of a checked checkpoint (read_checkpoint) and load its weights.
    Returns a Checkpoint."""
    kind = state["kind"]
    _check_shapes(path, kind, config, state["model"])
    model = MODEL_KINDS[kind](config)
    model.load_state_dict(state["model"])
    return Checkpoint(model.to(map_location), kind, state["step"], state["optimizer"],
                      state.get("train_state"))


def load_checkpoint(path, map_location="cpu"):
    """Read, check and rebuild: read_checkpoint then model_from_checkpoint. Returns a
    Checkpoint."""
    state, config = read_checkpoint(path)
    return model_from_checkpoint(os.fspath(path), state, config, map_location)
