"""The ``mmhnet`` subcommands of the model: presets, train, generate."""

import pytest
import torch

from mmhnet.cli import main
from mmhnet.model import load_checkpoint

from test_model_features import good_features


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_presets_lists_parameter_counts(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "S", "M", "L"):
        assert f"| {name} |" in out
    assert "| S | 16k | 448 |" in out


def test_generate_300_seconds_synthetic(tmp_path, capsys):
    out = tmp_path / "latents.pt"
    rc = main(["generate", "--config", "tiny", "--seconds", "300", "--synthetic", "--steps", "1",
               "--cfg-scale", "1", "--out", str(out)])
    assert rc == 0
    latents = torch.load(out)
    assert latents.shape == (1, 9375, 20)
    err = capsys.readouterr().err
    assert "sampling [" in err and "1/1" in err
    assert "untrained random weights" in err


def test_train_resume_then_generate_from_features(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        torch.save(good_features(3), data / f"clip{i}.pt")
    ckpt = tmp_path / "run.pt"
    common = ["--steps", "2", "--batch-size", "2", "--clip-seconds", "2", "--log-every", "1",
              "--out", str(ckpt)]
    assert main(["train", "--config", "tiny", "--features", str(data), *common]) == 0
    assert load_checkpoint(ckpt).step == 2
    common[1] = "3"
    assert main(["train", "--resume", str(ckpt), "--features", str(data), *common]) == 0
    assert load_checkpoint(ckpt).step == 3
    assert "step      3" in capsys.readouterr().out

    clip = tmp_path / "clip.pt"
    feats = good_features(2, latent=False)
    torch.save(feats, clip)
    out = tmp_path / "latents.pt"
    assert main(["generate", "--checkpoint", str(ckpt), "--features", str(clip), "--steps", "2",
                 "--out", str(out)]) == 0
    assert torch.load(out).shape == (1, 63, 20)


def test_cli_errors_are_one_line_and_name_the_field(tmp_path, capsys):
    bad = good_features(2, latent=False)
    bad["sync"] = bad["sync"][:40]
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    out = str(tmp_path / "o.pt")
    assert main(["generate", "--config", "tiny", "--features", str(path), "--out", out]) == 2
    assert "'sync' has 40 frames" in capsys.readouterr().err

    good = tmp_path / "good.pt"
    torch.save(good_features(2, latent=False), good)
    assert main(["generate", "--config", "tiny", "--features", str(good), "--seconds", "5",
                 "--out", out]) == 2
    assert "--seconds 5.0 does not match the feature file, which holds 2 s" in \
        capsys.readouterr().err

    assert main(["train", "--config", "tiny", "--features", str(good), "--steps", "1",
                 "--clip-seconds", "2", "--out", out]) == 2
    assert "missing ['latent']" in capsys.readouterr().err


def test_top_level_help_speaks_to_users(capsys):
    """`mmhnet --help` describes the tool, not the module's internals (it used to print a
    developer note about a COMMANDS table that does not exist)."""
    from mmhnet.cli import main

    with pytest.raises(SystemExit) as err:
        main(["--help"])
    out = capsys.readouterr().out
    assert err.value.code == 0
    assert "MMHNet video-to-audio model" in out and "COMMANDS" not in out and "``" not in out
