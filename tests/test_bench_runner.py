"""The benchmark runner's plan choice and progress lines (benchmarks/run.py), with the
sections stubbed: what `make bench` prints between its tables."""

import pytest

from benchmarks import run


class _Table:
    def __init__(self, name):
        self.name = name

    def render(self):
        return f"### {self.name}\n"


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_section(name, device, quick):
        seen.append((name, device, quick))
        return [_Table(name)]

    monkeypatch.setattr(run, "section_tables", fake_section)
    return seen


@pytest.mark.parametrize("flags, quick", [([], True), (["--quick"], True), (["--full"], False)])
def test_cpu_plan_is_short_unless_full_is_asked(calls, capsys, flags, quick):
    assert run.main(["--device", "cpu", "--only", "scan", "routing", *flags]) == 0
    assert calls == [("scan", "cpu", quick), ("routing", "cpu", quick)]
    out = capsys.readouterr().out
    assert ("short plan" if quick else "full plan") in out
    # a progress line before each section, then its table, then the closing line
    assert out.index("> [1/2] scan: running") < out.index("### scan") \
        < out.index("> [2/2] routing: running") < out.index("### routing") < out.index("> done: 2")


def test_quick_and_full_exclude_each_other(calls):
    with pytest.raises(SystemExit) as err:
        run.main(["--device", "cpu", "--quick", "--full"])
    assert err.value.code == 2 and calls == []


def test_estimate_scales_the_typical_times_by_this_runs_speed():
    sections = ["scan", "routing"]
    first = run.progress_line(0, sections, elapsed=0.0, spent=0.0)
    assert first.startswith("> [1/2] scan: running; 0 s so far")
    typical = run.TYPICAL_SECONDS
    assert f"about {typical['scan'] + typical['routing']} s left" in first
    # the first section took twice its typical time: the rest is expected twice as slow
    second = run.progress_line(1, sections, elapsed=2.0 * typical["scan"],
                               spent=2.0 * typical["scan"])
    assert f"about {2 * typical['routing']} s left" in second
