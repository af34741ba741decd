"""Threads benchmark (issue 24): a training step of the tiny config beside a competing load.

    python -m benchmarks.run --only threads

The competing load is one process spinning on one core (pinned with sched_setaffinity; it ends
itself after a deadline even if this benchmark dies), started before a timed step and stopped
after it. Quiet and loaded steps alternate, so that other work on the machine weighs on both
alike; the table gives their minima and medians.

Fair sharing of N cores between the step's T threads and the load's K = 1 spinning thread
predicts the loaded step at quiet x max(1, (T + K) / N), where quiet is the step's cost when no
thread spins: the fastest quiet median of all policies (a policy's own quiet time would hide
what spinning costs, since other work on a shared machine slows it too). The target (issue 24)
is at most 1.5x that prediction. libgomp reads its wait policy once, when ``import torch`` loads
it, so each policy runs in its own process (``CHILD``): mmhnet's default
(OMP_WAIT_POLICY=PASSIVE, set by ``import mmhnet``), libgomp's own default
(GOMP_SPINCOUNT=300000, its default spin count, given explicitly so that mmhnet leaves it alone)
and a short spin (GOMP_SPINCOUNT=10000).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from .common import Table

# name -> environment of the child process (None: unset)
POLICIES = {
    "mmhnet default (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
    "libgomp default (GOMP_SPINCOUNT=300000)": {"OMP_WAIT_POLICY": None,
                                                "GOMP_SPINCOUNT": "300000"},
    "short spin (GOMP_SPINCOUNT=10000)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},
}
LOAD_THREADS = 1
TARGET = 1.5
CLIP_SECONDS, BATCH = 8.0, 8  # mmhnet train's defaults
SPINNER_DEADLINE_S = 120      # a spinner never outlives this, whatever happens to its parent

# mmhnet first: it sets the thread policy only if torch is not imported yet
CHILD = "import mmhnet, sys; from benchmarks.bench_threads import child; child(int(sys.argv[1]))"
SPIN = """import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < end:
    pass
"""


class Spinner:
    """A process busy on ``core`` for as long as the ``with`` block runs (at most the deadline)."""

    def __init__(self, core):
        self.core = core

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SPIN, str(self.core),
                                      str(SPINNER_DEADLINE_S)], stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # pinned and spinning
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def child(rounds):
    """Time ``rounds`` quiet and ``rounds`` loaded training steps, alternating, after one
    warm-up step; print one JSON line: threads, cores, quiet and loaded times in seconds.
    Runs in a process that imported mmhnet before torch (CHILD), as ``mmhnet train`` does."""
    import torch

    from mmhnet.model.build import build_model
    from mmhnet.model.synthetic import SyntheticTask
    from mmhnet.model.train import make_optimizer, training_step

    torch.manual_seed(0)
    model = build_model("tiny")
    optimizer = make_optimizer(model)
    g = torch.Generator().manual_seed(0)
    clips = SyntheticTask(model.config).sample(CLIP_SECONDS, BATCH, generator=g)

    def step():
        t0 = time.perf_counter()
        training_step(model, optimizer, clips.latents, clips.conditions, generator=g)
        return time.perf_counter() - t0

    step()
    core = min(os.sched_getaffinity(0))
    quiet, loaded = [], []
    for _ in range(rounds):
        quiet.append(step())
        with Spinner(core):
            loaded.append(step())
    print(json.dumps({"threads": torch.get_num_threads(), "cores": len(os.sched_getaffinity(0)),
                      "quiet": quiet, "loaded": loaded}), flush=True)


def run_policy(env_changes, rounds):
    """The child's result dict under ``env_changes`` (None values: unset)."""
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # finds `benchmarks`
    out = subprocess.run([sys.executable, "-c", CHILD, str(rounds)], env=env, cwd=root,
                         check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(device, quick):
    import torch

    if torch.device(device).type != "cpu":
        return []
    rounds = 3 if quick else 5
    table = Table(
        f"Training step of the tiny config (batch {BATCH}, {CLIP_SECONDS:g} s clips) beside "
        f"{LOAD_THREADS} spinning process pinned to one core",
        ["OpenMP policy", "threads", "cores", "quiet s (min / median)",
         "loaded s (min / median)", "fair-share prediction s", "loaded / prediction",
         f"target <= {TARGET}"],
        note=(f"{rounds} alternating quiet and loaded steps, after one warm-up step; the ratio "
              f"is of medians. "
              f"Prediction: the fastest quiet median x max(1, (threads + {LOAD_THREADS}) / "
              f"cores)."))
    results = {name: run_policy(env, rounds) for name, env in POLICIES.items()}
    cost = min(statistics.median(r["quiet"]) for r in results.values())
    for name, r in results.items():
        quiet, loaded = statistics.median(r["quiet"]), statistics.median(r["loaded"])
        predicted = cost * max(1.0, (r["threads"] + LOAD_THREADS) / r["cores"])
        ratio = loaded / predicted
        table.add(name, r["threads"], r["cores"], f"{min(r['quiet']):.2f} / {quiet:.2f}",
                  f"{min(r['loaded']):.2f} / {loaded:.2f}", f"{predicted:.2f}", f"{ratio:.2f}",
                  "yes" if ratio <= TARGET else "NO")
    return [table]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print("\n".join(t.render() for t in run("cpu", args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
