"""Argument checks shared by the public ops.

Every message names the argument, what was expected and what was given. Shape, dtype and
device checks only read metadata, so they also run under torch.compile; checks of tensor
*values* (``check_cu_seqlens_values``) run inside the custom ops, where data may be read.
"""

import collections
import math
import weakref

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class IndexOutOfRangeError(IndexError, ValueError):
    """An index tensor holds a value outside its valid range. Both an IndexError (it is an
    out-of-range index) and a ValueError (it is a bad argument value), so either catches it."""


def check_tensor(name, t, ndim=None, shape=None, dtypes=FLOAT_DTYPES, optional=False):
    """Check type, rank, shape and dtype of one argument. ``shape`` may hold None wildcards."""
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} must be a torch.Tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        kind = "a floating-point" if dtypes is FLOAT_DTYPES else "one of"
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have {kind} dtype ({names}), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions{_describe(shape)}, "
                         f"got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(e is not None and e != a for e, a in zip(shape, t.shape)):
            raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(t.shape)}")


def _fmt(shape):
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _describe(shape):
    return f" {_fmt(shape)}" if shape is not None else ""


def check_same_device(named):
    """``named``: list of (name, tensor or None). All tensors must share the first one's device."""
    ref_name, ref = None, None
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if ref is None:
            ref_name, ref = name, t
        elif t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             f"all tensors must be on the same device")


# Packed offsets, chunk ids and token ids are int32 in every kernel.
MAX_TOKENS = 2**31 - 1


def check_token_count(name, count, what):
    """At most MAX_TOKENS rows where tokens are indexed with int32 (the tensors themselves may
    hold any number of elements: offsets into them are 64-bit)."""
    if torch.compiler.is_compiling():
        # a size known only at run time (chunk_gather's chunk count) is checked then, not
        # guarded on (dynamo takes no message closure here)
        torch._check(count <= MAX_TOKENS)
    elif count > MAX_TOKENS:
        raise ValueError(f"{name} has {count} {what}; offsets and ids are int32, so at most "
                         f"{MAX_TOKENS}")


def check_cu_seqlens_meta(cu_seqlens, batch, name="cu_seqlens"):
    """Metadata checks of packed offsets: 1-D integer tensor, batch == 1."""
    if cu_seqlens is None:
        return
    check_tensor(name, cu_seqlens, ndim=1, dtypes=(torch.int32, torch.int64))
    if cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 offsets (one sequence), "
                         f"got shape {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"{name} packs sequences along the length, so batch must be 1; got batch {batch}")


class _TensorMemo:
    """What was found about a device tensor while it stays unmodified: the last ``size`` entries
    of (weak reference, version counter, key, value). It saves the host sync a value check costs
    on an accelerator. CPU tensors are never remembered: their checks cost no sync, and memory
    shared with numpy (torch.from_numpy, .numpy()) changes without moving the version counter.
    Tensors made under torch.inference_mode have no version counter: never remembered either."""

    def __init__(self, size=8):
        self._entries = collections.deque(maxlen=size)

    @staticmethod
    def _remembers(t):
        return t.device.type != "cpu" and not t.is_inference()

    def get(self, t, key):
        if self._remembers(t):
            for ref, version, k, value in self._entries:
                if ref() is t and version == t._version and k == key:
                    return value
        return None

    def put(self, t, key, value):
        if self._remembers(t):
            self._entries.append((weakref.ref(t), t._version, key, value))


# Tensors whose values passed a check. One packed batch passes the same cu_seqlens (or mask) to
# every layer of a model; only its first use pays the host sync.
_VALIDATED = _TensorMemo()


def already_validated(t, key):
    """True when ``t``, unmodified since, passed the check ``key`` (any hashable)."""
    return _VALIDATED.get(t, key) is not None


def remember_validated(t, key):
    _VALIDATED.put(t, key, True)


def check_cu_seqlens_values(cu_seqlens, total, name="cu_seqlens"):
    """Value checks: starts at 0, never decreases, ends at ``total``. On an accelerator this costs
    one host sync the first time a given (unmodified) offsets tensor is seen."""
    if cu_seqlens is None or already_validated(cu_seqlens, ("cu_seqlens", total)):
        return
    vals = cu_seqlens.to("cpu", torch.int64)
    if vals[0] != 0:
        raise ValueError(f"{name} must start at 0, got {int(vals[0])}")
    decreasing = torch.nonzero(vals[1:] < vals[:-1])
    if decreasing.numel():
        i = int(decreasing[0]) + 1
        raise ValueError(f"{name} must not decrease, but {name}[{i}] = {int(vals[i])} < "
                         f"{name}[{i - 1}] = {int(vals[i - 1])}")
    if vals[-1] != total:
        raise ValueError(f"{name} must end at the total length {total}, got {int(vals[-1])}")
    remember_validated(cu_seqlens, ("cu_seqlens", total))


def check_same_dtype(name, t, ref_name, ref):
    """Kernels read two tensors with one element type: a mismatch is an error, not a cast."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def check_has_values(name, t, op):
    """Ops whose output size depends on a tensor's values cannot run on the meta device
    (torch.compile's fake tensors are fine: they carry a real device)."""
    if t.device.type == "meta":
        raise ValueError(f"{op}: the size of its output depends on the values of {name}, and "
                         f"{name} is a meta tensor (it has none)")


def check_flag(name, value):
    """A Python bool (or int 0/1). Strings, tensors and other objects are refused rather than
    truth-tested: "False" would silently mean True."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_number(name, value, low=None, finite=True):
    """A real Python number (not a bool or a tensor), finite, and > low when low is given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python number, got {type(value).__name__}")
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and not value > low:
        raise ValueError(f"{name} must be > {low}, got {value}")
    return value


# int64 offsets already converted, with their int32 copy, so that every layer of a model gets
# the same validated int32 tensor.
_CONVERTED = _TensorMemo()


def offsets_int32(cu_seqlens, total, name="cu_seqlens"):
    """cu_seqlens as int32. int64 offsets are validated as given, then converted (on an
    accelerator both happen once per unmodified tensor: one host sync); while tracing
    (torch.compile) or on the meta device they are clamped to [-1, total + 1] instead, so that
    an invalid value cannot wrap into a valid one (the ops' own value check then rejects it)."""
    if cu_seqlens is None or cu_seqlens.dtype == torch.int32:
        return cu_seqlens
    if torch.compiler.is_compiling() or cu_seqlens.device.type == "meta":
        return cu_seqlens.clamp(-1, total + 1).to(torch.int32)
    converted = _CONVERTED.get(cu_seqlens, total)
    if converted is None:
        check_cu_seqlens_values(cu_seqlens, total, name)
        converted = cu_seqlens.to(torch.int32)
        remember_validated(converted, ("cu_seqlens", total))
        _CONVERTED.put(cu_seqlens, total, converted)
    return converted


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
