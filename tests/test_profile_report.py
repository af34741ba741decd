"""The profile's estimators, table, growth ratios and plot, on records made up here (no
subprocess, no model)."""

import pytest

from mmhnet.profile import (LinearMemoryModel, PowerLawTime, ProfileRecord, format_bytes,
                            growth_ratios, read_json, render_report, write_json)


def _record(model, seconds, peak, status="measured", **extra):
    tokens = round(seconds * 31.25)
    values = dict(model=model, mode="sample_step", seconds=float(seconds), tokens=tokens,
                  peak_bytes=peak if status == "measured" else None,
                  seconds_per_step=0.5 if status == "measured" else None, config="tiny",
                  status=status, weights_bytes=1000, activation_bytes=peak // 2,
                  estimated_peak_bytes=peak)
    values.update(extra)
    return ProfileRecord(**values)


def test_linear_memory_model_fits_and_extrapolates():
    fit = LinearMemoryModel.fit([(100, 5_000), (300, 9_000)])
    assert fit.fixed == pytest.approx(3_000) and fit.per_token == pytest.approx(20)
    assert fit.predict(1_000) == pytest.approx(23_000)
    assert LinearMemoryModel.fit([(100, 9_000), (300, 5_000)]).per_token == 0  # never negative
    with pytest.raises(ValueError, match="two distinct"):
        LinearMemoryModel.fit([(100, 1), (100, 2)])


def test_power_law_time_exponent_is_between_one_and_two():
    assert PowerLawTime.fit([(100, 1.0), (200, 4.0)]).exponent == pytest.approx(2.0)
    assert PowerLawTime.fit([(100, 1.0), (200, 2.0)]).predict(800) == pytest.approx(8.0)
    assert PowerLawTime.fit([(100, 1.0), (200, 1.0)]).exponent == 1.0
    assert PowerLawTime.fit([(100, 1.0), (200, 64.0)]).exponent == 2.0
    assert PowerLawTime.fit([(100, 2.0)]).predict(300) == pytest.approx(6.0)


def test_growth_ratios_and_report():
    records = [_record("mmhnet", 30, 100 * 2**20), _record("mmhnet", 300, 900 * 2**20),
               _record("baseline", 30, 120 * 2**20),
               _record("baseline", 300, 0, status="refused", estimated_peak_bytes=50 * 2**30,
                       message="refused: would need about 50.0 GiB")]
    ratios = growth_ratios(records)
    assert set(ratios) == {("mmhnet", "sample_step", False)}
    assert ratios[("mmhnet", "sample_step", False)][0] == pytest.approx(9.0)
    text = render_report(records)
    assert "~50.0 GiB" in text and "peak x9.00" in text and "refused: would need" in text
    assert text.count("\n| sample_step") == 4


def test_json_round_trip(tmp_path):
    records = [_record("mmhnet", 8, 2**20), _record("baseline", 8, 2**21)]
    write_json(records, tmp_path / "r.json")
    assert read_json(tmp_path / "r.json") == records


def test_format_bytes():
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(2**50) == "1024.0 TiB"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from mmhnet.profile import plot_memory

    records = [_record("mmhnet", s, int(s * 2**20)) for s in (8, 30, 300)]
    records.append(_record("baseline", 8, 2**23))
    records.append(_record("baseline", 300, 0, status="refused", estimated_peak_bytes=2**35))
    path = plot_memory(records, tmp_path / "p.png", memory_limit_bytes=2**34)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path


def test_unrun_points_are_estimated_from_the_measured_series():
    from mmhnet.profile.runner import _series_model

    assert _series_model([]) is None
    one = _record("mmhnet", 8, 3000, activation_bytes=1500, inputs_bytes=500)
    assert _series_model([(one, 1.0)]).predict(2 * one.tokens) == pytest.approx(4000)
    one.fit_bytes_per_token = 1.0
    assert _series_model([(one, 1.0)]).predict(one.tokens + 10) == pytest.approx(2010)
    two = _record("mmhnet", 16, 5000, activation_bytes=3500, inputs_bytes=500)
    model = _series_model([(one, 1.0), (two, 1.0)])
    assert model.predict(one.tokens) == pytest.approx(2000)
    assert model.predict(two.tokens) == pytest.approx(4000)
