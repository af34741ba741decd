"""Feature files and model inputs: the exact layout, and clear errors naming the field."""

import pytest
import torch

from mmhnet.model import (Conditions, FeatureError, build_model, get_config, load_feature_file,
                          save_feature_file)
from mmhnet.model.data import FeatureFileSource

TINY = get_config("tiny")


def good_features(seconds=2, latent=True):
    v = 8 * seconds
    feats = {"visual": torch.randn(v, 1024), "sync": torch.randn(3 * v, 768),
             "text": torch.randn(77, 1024)}
    if latent:
        feats["latent"] = torch.randn(-(-v * 16000 // 4096), 20)
    return feats


def write(tmp_path, feats, name="clip.pt"):
    path = tmp_path / name
    torch.save(feats, path)
    return str(path)


def test_good_file_round_trip(tmp_path):
    path = str(tmp_path / "clip.pt")
    feats = good_features()
    save_feature_file(path, feats, TINY)
    loaded, counts = load_feature_file(path, TINY, need_latent=True)
    assert counts == (16, 48, 63, 2.0)
    for k in feats:
        assert torch.equal(loaded[k], feats[k])


BAD = {
    "visual width": (lambda f: f.update(visual=torch.randn(16, 512)), ["'visual'", "(*, 1024)",
                                                                       "(16, 512)"]),
    "sync width": (lambda f: f.update(sync=torch.randn(48, 512)), ["'sync'", "(*, 768)"]),
    "text tokens": (lambda f: f.update(text=torch.randn(50, 1024)), ["'text'", "(77, 1024)"]),
    "latent width": (lambda f: f.update(latent=torch.randn(63, 40)), ["'latent'", "(*, 20)"]),
    "sync duration": (lambda f: f.update(sync=torch.randn(40, 768)),
                      ["'sync' has 40 frames", "needs 48", "durations do not match"]),
    "latent duration": (lambda f: f.update(latent=torch.randn(250, 20)),
                        ["'latent' has 250 frames", "needs 63", "durations do not match"]),
    "batched visual": (lambda f: f.update(visual=torch.randn(1, 16, 1024)), ["'visual'",
                                                                            "(1, 16, 1024)"]),
    "integer sync": (lambda f: f.update(sync=torch.zeros(48, 768, dtype=torch.int64)),
                     ["'sync'", "floating-point"]),
    "nan text": (lambda f: f["text"].__setitem__((0, 0), float("nan")), ["'text'", "NaN"]),
    "missing latent": (lambda f: f.pop("latent"), ["missing ['latent']", "training"]),
    "unknown key": (lambda f: f.update(clip=torch.randn(3)), ["unknown keys ['clip']"]),
    "empty visual": (lambda f: f.update(visual=torch.randn(0, 1024), sync=torch.randn(0, 768)),
                     ["'visual' has no frames"]),
    "not a tensor": (lambda f: f.update(visual=[[0.0] * 1024]), ["'visual'", "torch.Tensor"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_feature_file_names_the_field(tmp_path, case):
    feats = good_features()
    change, expected = BAD[case]
    change(feats)
    path = write(tmp_path, feats)
    with pytest.raises(FeatureError) as info:
        load_feature_file(path, TINY, need_latent=True)
    message = str(info.value)
    assert path in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unreadable_files(tmp_path):
    with pytest.raises(FeatureError, match="no such file"):
        load_feature_file(str(tmp_path / "missing.pt"), TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FeatureError, match="cannot be read"):
        load_feature_file(str(junk), TINY)
    with pytest.raises(FeatureError, match="expected a dict"):
        load_feature_file(write(tmp_path, [torch.randn(3)], "list.pt"), TINY)


def test_44k_format_needs_40_channel_latents(tmp_path):
    config = TINY.replace(audio="44k")
    feats = good_features(8)
    feats["latent"] = torch.randn(345, 40)
    _, counts = load_feature_file(write(tmp_path, feats), config, need_latent=True)
    assert counts.audio == 345


def test_model_input_errors_name_the_field():
    model = build_model("tiny")
    f = good_features()
    cond = Conditions(f["visual"][None], f["sync"][None], f["text"][None])
    x, t = torch.randn(1, 63, 20), torch.rand(1)
    with pytest.raises(FeatureError, match="'sync' has 47 frames"):
        model(x, t, cond._replace(sync=cond.sync[:, :47]))
    with pytest.raises(FeatureError, match=r"'latent' has 62 frames"):
        model(x[:, :62], t, cond)
    with pytest.raises(FeatureError, match=r"'text' must have shape \(1, 77, 1024\)"):
        model(x, t, cond._replace(text=torch.randn(2, 77, 1024)))



def test_flow_time_and_drop_flags_take_one_value_per_clip():
    """t and the drop flags are (B,): one value is refused, not broadcast over the clips."""
    model = build_model("tiny")
    f = good_features()
    cond = Conditions(*(torch.cat([f[k][None]] * 2) for k in ("visual", "sync", "text")))
    x, t = torch.randn(2, 63, 20), torch.rand(2)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\), one value per clip, got \(1,\)"):
        model(x, torch.rand(1), cond)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\), .* got \(2, 1\)"):
        model(x, torch.rand(2, 1), cond)
    with pytest.raises(TypeError, match="t must be a floating-point torch.Tensor of shape"):
        model(x, 0.3, cond)
    with pytest.raises(TypeError, match="t must be a floating-point tensor, got torch.int64"):
        model(x, torch.ones(2, dtype=torch.long), cond)
    with pytest.raises(ValueError, match=r"drop_video must have shape \(2,\)"):
        model(x, t, cond, drop_video=torch.tensor([True]))
    with pytest.raises(TypeError, match="drop_text must be a bool tensor, got torch.float32"):
        model(x, t, cond, drop_text=torch.ones(2))
    out = model(x, t, cond, drop_video=torch.tensor([True, False]))
    assert out.velocity.shape == (2, 63, 20) and torch.isfinite(out.velocity).all()


def test_training_source_crops_windows_and_reports_bad_files(tmp_path):
    long = good_features(12)
    write(tmp_path, long, "long.pt")
    source = FeatureFileSource([str(tmp_path / "long.pt")], TINY, clip_seconds=4)
    latents, cond = source.batch(3, torch.Generator().manual_seed(0))
    assert latents.shape == (3, 125, 20) and cond.visual.shape == (3, 32, 1024)
    assert cond.sync.shape == (3, 96, 768)
    short = FeatureFileSource([write(tmp_path, good_features(2), "short.pt")], TINY,
                              clip_seconds=4)
    with pytest.raises(FeatureError, match="short.pt.*shorter than the training clip"):
        short.batch(1)
