"""mmhnet profile (issue 7): the sweep on the tiny config, its records and JSON, the refusal
of a point that cannot fit, the effect of checkpointing, the CLI. Each point runs in a fresh
process, so these tests take seconds each."""

import json

import pytest

from mmhnet.cli import build_parser, main
from mmhnet.profile import WorkloadSpec, run_point

REQUIRED_KEYS = {"model", "mode", "seconds", "tokens", "peak_bytes", "seconds_per_step"}


def test_cli_parses_profile_options():
    args = build_parser().parse_args(
        ["profile", "--config", "S", "--seconds", "8", "300", "--modes", "sample_step",
         "train_step", "--models", "mmhnet", "--checkpointing", "--memory-limit-gib", "24",
         "--json", "out.json", "--png", "out.png"])
    assert args.command == "profile" and args.config == "S"
    assert args.seconds == [8.0, 300.0] and args.modes == ["sample_step", "train_step"]
    assert args.models == ["mmhnet"] and args.checkpointing and args.memory_limit_gib == 24.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["profile", "--modes", "inference"])


def test_profile_tiny_writes_sane_records(tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert main(["profile", "--config", "tiny", "--seconds", "4", "30", "--models", "mmhnet",
                 "--json", str(path)]) == 0
    assert "| sample_step" in capsys.readouterr().out
    records = json.loads(path.read_text())
    assert [r["seconds"] for r in records] == [4.0, 30.0]
    for r in records:
        assert REQUIRED_KEYS <= set(r)
        assert r["status"] == "measured" and r["model"] == "mmhnet"
        assert r["mode"] == "sample_step" and r["config"] == "tiny"
        assert r["peak_bytes"] > r["weights_bytes"] > 0 and r["seconds_per_step"] > 0
    short, long = records
    assert (short["tokens"], long["tokens"]) == (125, 938)
    assert long["peak_bytes"] >= short["peak_bytes"]
    assert long["activation_bytes"] > short["activation_bytes"]


def test_absurd_duration_is_refused_after_an_estimate():
    record, _ = run_point(WorkloadSpec(config="tiny", mode="sample_step", seconds=1e6))
    assert record.status == "refused" and record.peak_bytes is None
    assert record.estimated_peak_bytes > record.memory_limit_bytes
    assert record.fit_bytes_per_token > 0
    assert "refused" in record.message and "would need about" in record.message
    assert "31250000 audio frames" in record.message


def test_checkpointing_reduces_training_activations():
    records = {}
    for checkpointing in (False, True):
        record, _ = run_point(WorkloadSpec(config="tiny", mode="train_step", seconds=60,
                                           checkpointing=checkpointing))
        assert record.status == "measured", record.message
        # AdamW: two moments per weight (and a step count per tensor)
        assert record.optimizer_bytes == pytest.approx(2 * record.grad_bytes, rel=1e-3)
        records[checkpointing] = record
    assert records[True].activation_bytes < 0.8 * records[False].activation_bytes
