"""The package's own namespace: the public ops and layers are re-exported there."""
import subprocess
import sys

import mmhnet
import mmhnet.layers
import mmhnet.ops


def test_top_level_exports_are_the_public_objects():
    for name in mmhnet.__all__:
        if name in ("ops", "layers"):
            continue
        source = mmhnet.layers if name in mmhnet.layers.__all__ else mmhnet.ops
        assert getattr(mmhnet, name) is getattr(source, name), name
    # every public op is reachable from the package
    assert set(mmhnet.ops.__all__) <= set(mmhnet.__all__)
    assert {"bi_selective_scan", "route_boundaries", "BiMamba2", "HNet"} <= set(mmhnet.__all__)


def test_import_leaves_the_model_out():
    code = "import sys, mmhnet; print('mmhnet.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
