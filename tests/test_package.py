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


def test_import_loads_nothing_beyond_torch():
    """`import mmhnet` costs its own modules only (issue 24: torch._dynamo, pulled in by a
    decorator, made it take 2.8 s more than `import torch`)."""
    code = ("import sys, torch; before = set(sys.modules); import mmhnet; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('mmhnet')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backend_choice_carries_torchs_constant_result_marker():
    """resolve_backend is marked as torch.compiler.assume_constant_result marks a function,
    without importing torch._dynamo: the marker must be all that torch's decorator sets."""
    import torch

    from mmhnet.ops._backend import resolve_backend

    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == {"_dynamo_marked_constant": True}
    assert resolve_backend._dynamo_marked_constant is True
