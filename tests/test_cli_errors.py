"""The command line under bad input (issue 20, part 2): every bad argument, checkpoint, feature
file or output path ends in one ``error:`` line and exit status 2 before any work, never a
traceback; absurd sizes are refused with an estimate; checkpoints are written safely, checked by
digest, resumed exactly; a NaN stops training. The CLI runs in-process (``main(argv)``) except a
few end-to-end cases in a fresh interpreter."""

import importlib
import os
import resource
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from mmhnet.cli import main
from mmhnet.model import build_model, load_checkpoint, save_checkpoint

from test_model_features import good_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--batch-size", "1", "--clip-seconds", "1", "--log-every", "0"]
TRAIN = ["train", "--config", "tiny", "--synthetic", "--steps", "1", *SMALL]
GENERATE = ["generate", "--config", "tiny", "--synthetic", "--seconds", "1", "--steps", "1",
            "--cfg-scale", "1"]
PROFILE = ["profile", "--config", "tiny", "--models", "mmhnet", "--seconds", "4"]
GIB = 2**30


def run(argv, capsys):
    """(exit status, stdout, stderr) of the CLI; argparse's SystemExit gives its code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, *words):
    """Exit status 2, no traceback, exactly one line with 'error:', which holds ``words``."""
    assert rc == 2, f"exit status {rc}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def small_memory(monkeypatch):
    """The machine reports 16 GiB available, so the refusals below do not depend on it."""
    from mmhnet.model import cli_memory

    monkeypatch.setattr(cli_memory, "available_bytes", lambda device: 16 * GIB)


def _max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------- bad arguments

def _with(base, *extra):
    return [*base, *extra]   # argparse: the last occurrence of an option wins


BAD_ARGS = {
    "generate --steps 0": (_with(GENERATE, "--steps", "0"), "--steps"),
    "generate --steps -1": (_with(GENERATE, "--steps", "-1"), "--steps"),
    "generate --steps 1.5": (_with(GENERATE, "--steps", "1.5"), "--steps"),
    "generate --seconds 0": (_with(GENERATE, "--seconds", "0"), "--seconds"),
    "generate --seconds -1": (_with(GENERATE, "--seconds", "-1"), "--seconds"),
    "generate --seconds nan": (_with(GENERATE, "--seconds", "nan"), "--seconds"),
    "generate --seconds inf": (_with(GENERATE, "--seconds", "inf"), "--seconds"),
    "generate --seconds 1e300": (_with(GENERATE, "--seconds", "1e300"), "--seconds"),
    "generate --seconds 0.01": (_with(GENERATE, "--seconds", "0.01"), "--seconds"),
    "generate --cfg-scale nan": (_with(GENERATE, "--cfg-scale", "nan"), "--cfg-scale"),
    "generate --cfg-scale inf": (_with(GENERATE, "--cfg-scale", "inf"), "--cfg-scale"),
    "generate --cfg-scale -1": (_with(GENERATE, "--cfg-scale", "-1"), "--cfg-scale"),
    "generate --seed -1": (_with(GENERATE, "--seed", "-1"), "--seed"),
    "generate --device gpu7": (_with(GENERATE, "--device", "gpu7"), "--device"),
    "generate --memory-limit-gib 0": (_with(GENERATE, "--memory-limit-gib", "0"),
                                      "--memory-limit-gib"),
    "train --steps 0": (_with(TRAIN, "--steps", "0"), "--steps"),
    "train --steps -2": (_with(TRAIN, "--steps", "-2"), "--steps"),
    "train --batch-size 0": (_with(TRAIN, "--batch-size", "0"), "--batch-size"),
    "train --batch-size -1": (_with(TRAIN, "--batch-size", "-1"), "--batch-size"),
    "train --clip-seconds 0": (_with(TRAIN, "--clip-seconds", "0"), "--clip-seconds"),
    "train --clip-seconds -1": (_with(TRAIN, "--clip-seconds", "-1"), "--clip-seconds"),
    "train --clip-seconds nan": (_with(TRAIN, "--clip-seconds", "nan"), "--clip-seconds"),
    "train --clip-seconds inf": (_with(TRAIN, "--clip-seconds", "inf"), "--clip-seconds"),
    "train --clip-seconds 1e300": (_with(TRAIN, "--clip-seconds", "1e300"), "--clip-seconds"),
    "train --clip-seconds 0.01": (_with(TRAIN, "--clip-seconds", "0.01"), "--clip-seconds"),
    "train --lr 0": (_with(TRAIN, "--lr", "0"), "--lr"),
    "train --lr nan": (_with(TRAIN, "--lr", "nan"), "--lr"),
    "train --lr -1": (_with(TRAIN, "--lr", "-1"), "--lr"),
    "train --lr inf": (_with(TRAIN, "--lr", "inf"), "--lr"),
    "train --weight-decay -1": (_with(TRAIN, "--weight-decay", "-1"), "--weight-decay"),
    "train --weight-decay nan": (_with(TRAIN, "--weight-decay", "nan"), "--weight-decay"),
    "train --grad-clip -1": (_with(TRAIN, "--grad-clip", "-1"), "--grad-clip"),
    "train --grad-clip nan": (_with(TRAIN, "--grad-clip", "nan"), "--grad-clip"),
    "train --warmup-steps -1": (_with(TRAIN, "--warmup-steps", "-1"), "--warmup-steps"),
    "train --log-every -1": (_with(TRAIN, "--log-every", "-1"), "--log-every"),
    "train --save-every -1": (_with(TRAIN, "--save-every", "-1"), "--save-every"),
    "train --seed -1": (_with(TRAIN, "--seed", "-1"), "--seed"),
    "train --seed 2**40": (_with(TRAIN, "--seed", str(2**40)), "--seed"),
    "train --device gpu7": (_with(TRAIN, "--device", "gpu7"), "--device"),
    "profile --seconds -1": (_with(PROFILE, "--seconds", "-1"), "--seconds"),
    "profile --seconds 0": (_with(PROFILE, "--seconds", "0"), "--seconds"),
    "profile --seconds nan": (_with(PROFILE, "--seconds", "nan"), "--seconds"),
    "profile --seconds inf": (_with(PROFILE, "--seconds", "inf"), "--seconds"),
    "profile --seconds 1e300": (_with(PROFILE, "--seconds", "1e300"), "--seconds"),
    "profile --batch 0": (_with(PROFILE, "--batch", "0"), "--batch"),
    "profile --steps 0": (_with(PROFILE, "--steps", "0"), "--steps"),
    "profile --memory-limit-gib 0": (_with(PROFILE, "--memory-limit-gib", "0"),
                                     "--memory-limit-gib"),
    "profile --memory-limit-gib nan": (_with(PROFILE, "--memory-limit-gib", "nan"),
                                       "--memory-limit-gib"),
    "profile --time-budget -1": (_with(PROFILE, "--time-budget", "-1"), "--time-budget"),
    "profile --time-budget nan": (_with(PROFILE, "--time-budget", "nan"), "--time-budget"),
    "profile --config XL": (_with(PROFILE, "--config", "XL"), "--config"),
    "profile --device gpu7": (_with(PROFILE, "--device", "gpu7"), "--device"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_argument_is_one_error_line(case, tmp_path, capsys):
    argv, option = BAD_ARGS[case]
    out = tmp_path / "out.pt"
    if argv[0] != "profile":
        argv = [*argv, "--out", out]
    rc, stdout, err = run(argv, capsys)
    assert_clean_error(rc, err, option)
    assert not out.exists() and "wrote" not in stdout


# -------------------------------------------------------------- outputs checked before work

def _bad_outputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "a_dir").mkdir()
    return {"missing directory": (str(tmp_path / "nope" / "x.pt"), "does not exist"),
            "existing directory": (str(tmp_path / "a_dir"), "is a directory"),
            "parent is a file": (str(a_file / "x.pt"), "is not a directory"),
            "unwritable directory": ("/proc/mmhnet-test.pt", "cannot create a file"),
            "empty path": ("", "empty path")}


OUTPUT_COMMANDS = {"train --out": (TRAIN, "--out"), "generate --out": (GENERATE, "--out"),
                   "profile --json": (PROFILE, "--json"), "profile --png": (PROFILE, "--png")}
OUTPUT_CASES = ["missing directory", "existing directory", "parent is a file",
                "unwritable directory", "empty path"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_bad_output_is_refused_before_any_work(command, case, tmp_path, capsys):
    base, option = OUTPUT_COMMANDS[command]
    path, words = _bad_outputs(tmp_path)[case]
    rc, stdout, err = run([*base, option, path], capsys)
    assert_clean_error(rc, err, option, words)
    assert "step" not in stdout and "sampling [" not in err and "|" not in stdout


# ------------------------------------------------------------------------ no false claims

def test_resume_past_the_requested_steps_is_an_error(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    assert run([*_with(TRAIN, "--steps", "2"), "--out", ckpt], capsys)[0] == 0
    before = ckpt.read_bytes()
    for steps in ("2", "1"):
        rc, stdout, err = run(["train", "--resume", ckpt, "--synthetic", "--steps", steps,
                               *SMALL, "--out", ckpt], capsys)
        assert_clean_error(rc, err, "step 2", f"--steps {steps}")
        assert "wrote" not in stdout
    assert ckpt.read_bytes() == before


# ----------------------------------------------------------------------- bad checkpoints

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """A checkpoint written by `mmhnet train` after 3 steps (optimizer and training state)."""
    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    assert main([*_with(TRAIN, "--steps", "3"), "--out", str(path)]) == 0
    return path


def _redigest(state):
    """Recompute the stored digest, so that a check after the digest's is reached."""
    if "digest" in state:
        from mmhnet.model.checkpoint import state_digest

        state["digest"] = state_digest(state)
    return state


def _edit(change, digest=False):
    def make(path, good):
        state = torch.load(good, weights_only=True)
        change(state)
        torch.save(_redigest(state) if digest else state, path)
    return make


def _write(data):
    return lambda path, good: path.write_bytes(data(good) if callable(data) else data)


def _config(**changes):
    return _edit(lambda s: s["config"].update(changes), digest=True)


def _weight(fn):
    def change(state):
        name = next(n for n, t in sorted(state["model"].items()) if t.dim() == 2)
        fn(state["model"], name)
    return _edit(change, digest=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _set_nan(weights, name):
    weights[name] = weights[name].clone().fill_(float("nan"))


BAD_CHECKPOINTS = {
    "empty": (_write(b""), "empty"),
    "truncated half": (_write(lambda g: g.read_bytes()[:len(g.read_bytes()) // 2]),
                       "cannot be read"),
    "truncated tail": (_write(lambda g: g.read_bytes()[:-20]), "cannot be read"),
    "random bytes": (_write(bytes(range(256)) * 8), "cannot be read"),
    "text": (_write(b"not a checkpoint\n"), "cannot be read"),
    "directory": (lambda path, good: path.mkdir(), "is a directory"),
    "missing": (lambda path, good: None, "no such file"),
    "malicious pickle": (lambda path, good: torch.save({"format": 1, "x": _Evil()}, path),
                         "weights_only=True"),
    "a list": (lambda path, good: torch.save([1, 2], path), "not an mmhnet checkpoint"),
    "a feature file": (lambda path, good: torch.save(good_features(1), path),
                       "not an mmhnet checkpoint"),
    "no format": (_edit(lambda s: s.pop("format")), "not an mmhnet checkpoint"),
    "missing kind": (_edit(lambda s: s.pop("kind")), "missing keys ['kind']"),
    "missing config": (_edit(lambda s: s.pop("config")), "missing keys ['config']"),
    "missing model": (_edit(lambda s: s.pop("model")), "missing keys ['model']"),
    "missing step": (_edit(lambda s: s.pop("step")), "missing keys ['step']"),
    "extra key": (_edit(lambda s: s.update(extra=1)), "unexpected keys ['extra']"),
    "kind int": (_edit(lambda s: s.update(kind=3)), "'kind' must be a str"),
    "kind unknown": (_edit(lambda s: s.update(kind="transformer")), "unknown model kind"),
    "config a list": (_edit(lambda s: s.update(config=[64])), "'config' must be a dict"),
    "model a list": (_edit(lambda s: s.update(model=[1])), "'model' must be a dict"),
    "model not tensors": (_edit(lambda s: s["model"].update(x=1)), "'model' must map names"),
    "optimizer a list": (_edit(lambda s: s.update(optimizer=[1])),
                         "'optimizer' must be a dict or None"),
    "step negative": (_edit(lambda s: s.update(step=-1)), "'step' must be an integer >= 0"),
    "step a str": (_edit(lambda s: s.update(step="3")), "'step' must be an integer >= 0"),
    "step a float": (_edit(lambda s: s.update(step=3.0)), "'step' must be an integer >= 0"),
    "config unknown field": (_config(foo=1), "unknown config fields ['foo']"),
    "config d_model a str": (_config(d_model="64"), "d_model must be int"),
    "config d_model a float": (_config(d_model=64.5), "d_model must be int"),
    "config d_model a bool": (_config(d_model=True), "d_model must be int"),
    "config d_model negative": (_config(d_model=-64), "d_model must be positive"),
    "config d_model 65536": (_config(d_model=65536), "d_model must be at most 16384"),
    "config depth huge": (_config(encoder_depth=10**9), "encoder_depth must be at most"),
    "config target_ratio nan": (_config(target_ratio=float("nan")),
                                "target_ratio must be a finite number"),
    "config audio unknown": (_config(audio="8k"), "audio must be one of"),
    "config headdim mismatch": (_config(headdim=48), "multiple of headdim"),
    "config d_state changed": (_config(d_state=16), "the config builds"),
    "weight wrong shape": (_weight(lambda w, n: w.update({n: w[n][:, :1].clone()})),
                           "the config builds"),
    "weight missing": (_weight(lambda w, n: w.pop(n)), "do not match the config"),
    "weight dtype": (_weight(lambda w, n: w.update({n: w[n].double()})), "the config builds"),
    "weight NaN": (_weight(_set_nan), "NaN or infinite"),
    "weight NaN, digest not updated": (_edit(lambda s: _set_nan(s["model"], sorted(s["model"])[0])),
                                       "digest mismatch"),
    "train_state bad generator": (_edit(lambda s: s["train_state"]["generators"].__setitem__(
        0, torch.zeros(3, dtype=torch.uint8)), digest=True), "bad 'train_state'"),
    "train_state bad layout": (_edit(lambda s: s.update(train_state={"x": 1}), digest=True),
                               "bad 'train_state'"),
    "digest wrong": (_edit(lambda s: s.update(digest="0" * 64)), "digest mismatch"),
    "digest an int": (_edit(lambda s: s.update(digest=0)), "'digest' must be a str"),
}


@pytest.mark.parametrize("command", ["generate", "train"])
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_error_line(case, command, tmp_path, good_checkpoint, capsys):
    make, words = BAD_CHECKPOINTS[case]
    path = tmp_path / "bad.pt"
    make(path, good_checkpoint)
    out = tmp_path / "out.pt"
    if command == "generate":
        argv = ["generate", "--checkpoint", path, "--synthetic", "--seconds", "1", "--steps", "1",
                "--out", out]
    else:
        argv = ["train", "--resume", path, "--synthetic", "--steps", "5", *SMALL, "--out", out]
    rc, stdout, err = run(argv, capsys)
    assert_clean_error(rc, err, words)
    assert not out.exists() and "wrote" not in stdout


def _features(change):
    def make(path):
        feats = good_features(2)
        change(feats)
        torch.save(feats, path)
    return make


BAD_FEATURE_FILES = {
    "empty": (lambda path: path.write_bytes(b""), "cannot be read"),
    "truncated": (lambda path: (_features(lambda f: None)(path),
                                path.write_bytes(path.read_bytes()[:500])), "cannot be read"),
    "directory": (lambda path: path.mkdir(), "clip.pt"),   # train: a directory of no .pt files
    "missing": (lambda path: None, "clip.pt"),
    "malicious pickle": (lambda path: torch.save({"visual": _Evil()}, path), "cannot be read"),
    "a list": (lambda path: torch.save([torch.ones(2)], path), "expected a dict"),
    "NaN": (_features(lambda f: f["visual"].__setitem__((3, 5), float("nan"))), "NaN"),
    "wrong width": (_features(lambda f: f.update(sync=torch.randn(48, 700))), "'sync'"),
    "integer tensor": (_features(lambda f: f.update(text=torch.ones(77, 1024, dtype=torch.int64))),
                       "floating-point"),
}


@pytest.mark.parametrize("command", ["generate", "train"])
@pytest.mark.parametrize("case", list(BAD_FEATURE_FILES))
def test_bad_feature_file_is_one_error_line(case, command, tmp_path, capsys):
    make, words = BAD_FEATURE_FILES[case]
    path = tmp_path / "clip.pt"
    make(path)
    out = tmp_path / "out.pt"
    if command == "generate":
        argv = ["generate", "--config", "tiny", "--features", path, "--steps", "1", "--out", out]
    else:
        argv = ["train", "--config", "tiny", "--features", path, "--steps", "1", *SMALL,
                "--out", out]
    rc, stdout, err = run(argv, capsys)
    assert_clean_error(rc, err, words)
    assert not out.exists() and "wrote" not in stdout


def _zip_data_ranges(path):
    """(start, end) byte ranges of each stored entry's data in a torch zip file."""
    ranges = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
            start = info.header_offset + 30 + name_len + extra_len
            ranges.append((start, start + info.compress_size))
    return ranges


def test_flipped_bytes_are_refused_never_loaded(tmp_path, good_checkpoint):
    """One byte flipped at about 60 places (mid-entry of 32 stored tensors and records, spread
    over the file, the zip directory at its end): each file is refused with a CheckpointError,
    or, where the byte is one the reader never uses (zip padding, a CRC), loads bitwise equal
    to the original."""
    data = bytearray(good_checkpoint.read_bytes())
    original = load_checkpoint(good_checkpoint).model.state_dict()
    entries = [r for r in _zip_data_ranges(good_checkpoint) if r[1] > r[0]]
    places = {start + (end - start) // 2 for start, end in entries[::len(entries) // 32 + 1]}
    places |= {len(data) * i // 24 for i in range(24)} | {len(data) - 1 - i * 7 for i in range(8)}
    refused = 0
    for place in sorted(places):
        flipped = bytearray(data)
        flipped[place] ^= 0x40
        path = tmp_path / "flipped.pt"
        path.write_bytes(bytes(flipped))
        try:
            loaded = load_checkpoint(path).model.state_dict()
        except ValueError as exc:
            assert "checkpoint" in str(exc)
            refused += 1
            continue
        for name, t in original.items():
            assert torch.equal(loaded[name], t), f"byte {place}: {name} changed but loaded"
    assert refused >= len(places) // 2, (refused, len(places))


def test_old_checkpoint_format_is_read_with_a_warning(tmp_path, good_checkpoint, capsys):
    state = torch.load(good_checkpoint, weights_only=True)
    for key in ("digest", "train_state"):
        state.pop(key)
    state["format"] = "mmhnet-checkpoint-1"
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.warns(UserWarning, match="no digest"):
        assert load_checkpoint(old).step == 3
    rc, _, err = run(["generate", "--checkpoint", old, "--synthetic", "--seconds", "1",
                      "--steps", "1", "--out", tmp_path / "o.pt"], capsys)
    assert rc == 0 and "warning: checkpoint" in err and "Traceback" not in err


# -------------------------------------------------------------------------- absurd sizes

def _expanded_features(seconds):
    """A small file that declares ``seconds`` of features (stride-0 rows)."""
    v = int(8 * seconds)
    return {"visual": torch.randn(1, 1024).expand(v, 1024),
            "sync": torch.randn(1, 768).expand(3 * v, 768),
            "text": torch.randn(77, 1024)}


ABSURD = {
    "generate --seconds 1e5": _with(GENERATE, "--seconds", "1e5"),
    "generate --seconds 1e9": _with(GENERATE, "--seconds", "1e9"),
    "train --clip-seconds 1e5": _with(TRAIN, "--clip-seconds", "1e5"),
    "train --batch-size 1e6": _with(TRAIN, "--batch-size", "1000000", "--clip-seconds", "8"),
    "generate --config L --memory-limit-gib 1": _with(GENERATE, "--config", "L",
                                                      "--memory-limit-gib", "1"),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_size_is_refused_with_the_estimate(case, tmp_path, capsys, small_memory):
    rss = _max_rss()
    rc, stdout, err = run([*ABSURD[case], "--out", tmp_path / "o.pt"], capsys)
    assert_clean_error(rc, err, "refused", "would need about", "GiB", "allowed")
    assert _max_rss() - rss < GIB and "step" not in stdout


def test_feature_file_declaring_100000_seconds_is_refused(tmp_path, capsys, small_memory):
    path = tmp_path / "long.pt"
    torch.save(_expanded_features(100_000), path)
    rss = _max_rss()
    rc, _, err = run(["generate", "--config", "tiny", "--features", path, "--steps", "1",
                      "--out", tmp_path / "o.pt"], capsys)
    assert_clean_error(rc, err, "refused", "100000 s", "GiB")
    assert _max_rss() - rss < GIB


def test_checkpoint_asking_for_a_huge_model_is_refused(tmp_path, good_checkpoint, capsys,
                                                       small_memory):
    """Within the config bounds, but 8192 wide and 200 blocks deep: refused from the parameter
    count on the meta device, before the model is built."""
    path = tmp_path / "huge.pt"
    _config(d_model=8192, d_intermediate=32768, multimodal_depth=200)(path, good_checkpoint)
    rss = _max_rss()
    rc, _, err = run(["generate", "--checkpoint", path, "--synthetic", "--seconds", "1",
                      "--out", tmp_path / "o.pt"], capsys)
    assert_clean_error(rc, err, "refused", "weights", "GiB")
    assert _max_rss() - rss < GIB


# ------------------------------------------------------------------- checkpoints written safely

def test_checkpoint_write_follows_no_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "run.pt"
    for name in (f"run.pt.tmp{os.getpid()}", ".run.pt.tmp", "run.pt.tmp"):
        (tmp_path / name).symlink_to(victim)
    save_checkpoint(out, build_model("tiny"), step=1)
    assert victim.read_text() == "keep me"
    assert out.is_file() and not out.is_symlink() and load_checkpoint(out).step == 1
    leftovers = {p.name for p in tmp_path.iterdir()} - {"victim.txt", "run.pt"}
    assert all((tmp_path / n).is_symlink() for n in leftovers), leftovers


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch, interrupt):
    out = tmp_path / "run.pt"
    model = build_model("tiny")
    save_checkpoint(out, model, step=1)
    before = out.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")
        f.write(b"partial")
        f.flush()
        raise interrupt("interrupted during the write")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(interrupt):
        save_checkpoint(out, model, step=2)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_sigterm_during_checkpoint_write_removes_the_temporary_file(tmp_path, monkeypatch):
    """SIGTERM arrives while the file is written: the write's own handler turns it into
    SystemExit(143), the temporary file is removed, the old checkpoint stays, and the handler
    in place before (here one that would fail the test) is restored."""
    out = tmp_path / "run.pt"
    model = build_model("tiny")
    save_checkpoint(out, model, step=1)
    real_save = torch.save

    def save_then_sigterm(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    def not_ours(signum, frame):
        raise AssertionError("SIGTERM reached the handler in place before the write")

    previous = signal.signal(signal.SIGTERM, not_ours)
    try:
        monkeypatch.setattr(torch, "save", save_then_sigterm)
        with pytest.raises(SystemExit) as exc:
            save_checkpoint(out, model, step=2)
        assert exc.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is not_ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    monkeypatch.undo()
    assert load_checkpoint(out).step == 1


def test_signal_handlers_are_restored_after_a_write(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    save_checkpoint(tmp_path / "run.pt", build_model("tiny"))
    assert {s: signal.getsignal(s) for s in before} == before


# ------------------------------------------------------------------------------ exact resume

def _trained_state(path):
    state = torch.load(path, weights_only=True)
    return state["model"], state["optimizer"]["state"]


@pytest.mark.parametrize("source", ["synthetic", "features"])
def test_resume_is_bitwise_exact(source, tmp_path, capsys):
    if source == "features":
        data = tmp_path / "data"
        data.mkdir()
        for i in range(3):
            torch.save(good_features(3), data / f"clip{i}.pt")
        src = ["--features", data]
    else:
        src = ["--synthetic"]
    common = [*src, "--batch-size", "2", "--clip-seconds", "1", "--warmup-steps", "3",
              "--log-every", "0"]
    whole, split = tmp_path / "whole.pt", tmp_path / "split.pt"
    assert run(["train", "--config", "tiny", *common, "--steps", "4", "--out", whole],
               capsys)[0] == 0
    assert run(["train", "--config", "tiny", *common, "--steps", "2", "--out", split],
               capsys)[0] == 0
    assert run(["train", "--resume", split, *common, "--steps", "4", "--out", split],
               capsys)[0] == 0
    (w_model, w_opt), (s_model, s_opt) = _trained_state(whole), _trained_state(split)
    for name, t in w_model.items():
        assert torch.equal(t, s_model[name]), name
    for index, moments in w_opt.items():
        for key, t in moments.items():
            assert torch.equal(t, s_opt[index][key]), (index, key)


# ---------------------------------------------------------------------- NaN stops training

class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison_step(monkeypatch, at_call, poison):
    train_module = importlib.import_module("mmhnet.model.train")   # not the train function
    real = train_module.flow_matching_loss
    calls = []

    def loss(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        return out._replace(loss=poison(out.loss)) if len(calls) == at_call else out

    monkeypatch.setattr(train_module, "flow_matching_loss", loss)


POISONS = {"NaN loss": lambda loss: loss * float("nan"),
           "inf loss": lambda loss: loss + float("inf"),
           "NaN gradients": _NanGradient.apply}


@pytest.mark.parametrize("grad_clip", ["1", "0"])
@pytest.mark.parametrize("poison", list(POISONS))
def test_nonfinite_step_stops_training_and_keeps_the_checkpoint(poison, grad_clip, tmp_path,
                                                                monkeypatch, capsys):
    out = tmp_path / "run.pt"
    _poison_step(monkeypatch, 3, POISONS[poison])
    rc, stdout, err = run([*_with(TRAIN, "--steps", "5", "--save-every", "1", "--grad-clip",
                                  grad_clip), "--out", out], capsys)
    assert_clean_error(rc, err, "step 3")
    assert "wrote" not in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.step == 2
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())


# -------------------------------------------------------------- end to end, fresh interpreter

def test_end_to_end_errors_in_a_fresh_interpreter(tmp_path):
    """The installed entry point's path (python -m mmhnet.cli), three processes at once."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    out = str(tmp_path / "o.pt")
    cases = {
        "generate --steps 0": [*GENERATE, "--steps", "0", "--out", out],
        "empty checkpoint": ["generate", "--checkpoint", str(empty), "--synthetic", "--seconds",
                             "1", "--out", out],
        "output directory missing": [*TRAIN, "--out", str(tmp_path / "nope" / "r.pt")],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, "-m", "mmhnet.cli", *argv], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert_clean_error(proc.returncode, err)
    assert not os.path.exists(out)
