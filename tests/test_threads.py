"""The OpenMP wait policy that ``import mmhnet`` sets (issue 24 item 1, DESIGN.md "Threads").

torch and mmhnet._C share torch's libgomp, which reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once,
when ``import torch`` loads it. OMP_DISPLAY_ENV=VERBOSE makes libgomp print the values it took
(GOMP_SPINCOUNT '0' is PASSIVE, '300000' its default), so these tests check what the runtime
actually uses, not only the environment.
"""

import os
import subprocess
import sys

import pytest

import mmhnet

POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def libgomp_settings(code, **env_changes):
    """Run ``code`` in a fresh interpreter under the environment without POLICY_VARS plus
    ``env_changes``; return (stdout, the libgomp lines about waiting)."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env.update(env_changes, OMP_DISPLAY_ENV="VERBOSE")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    waiting = [line.strip() for line in out.stderr.splitlines()
               if line.strip().startswith(POLICY_VARS)]
    return out.stdout.strip(), waiting


def test_import_mmhnet_sets_passive_when_unset():
    stdout, waiting = libgomp_settings(
        "import os, mmhnet; print(os.environ['OMP_WAIT_POLICY'], mmhnet.THREAD_POLICY_SET)")
    assert stdout == "PASSIVE True"
    assert "GOMP_SPINCOUNT = '0'" in waiting, waiting  # torch's libgomp took it


def test_import_mmhnet_leaves_the_users_policy():
    stdout, waiting = libgomp_settings(
        "import os, mmhnet; print(os.environ['OMP_WAIT_POLICY'], mmhnet.THREAD_POLICY_SET)",
        OMP_WAIT_POLICY="ACTIVE")
    assert stdout == "ACTIVE False"
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in waiting, waiting


@pytest.mark.parametrize("user_env, torch_imported, expect_set", [
    ({}, False, True),
    ({"GOMP_SPINCOUNT": "1000"}, False, False),
    ({"OMP_WAIT_POLICY": "active"}, False, False),
    ({}, True, False),  # too late: libgomp has read the environment already
], ids=["unset", "user_spincount", "user_policy", "torch_first"])
def test_policy_decision(monkeypatch, user_env, torch_imported, expect_set):
    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in user_env.items():
        monkeypatch.setenv(var, value)
    if not torch_imported:
        monkeypatch.delitem(sys.modules, "torch")  # restored after the test
    assert mmhnet._set_thread_wait_policy() is expect_set
    expected = {"OMP_WAIT_POLICY": "PASSIVE"} if expect_set else user_env
    assert {v: os.environ[v] for v in POLICY_VARS if v in os.environ} == expected
