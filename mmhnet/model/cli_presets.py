"""``mmhnet presets``: the model presets and their parameter counts."""

from .build import preset_parameter_counts
from .config import PRESETS

__all__ = ["add_presets_command", "presets_table"]


def presets_table():
    """The presets as a markdown table (parameters counted on the meta device)."""
    lines = ["| preset | audio | d_model | MMHNet blocks enc/mm/audio/dec | MMHNet params "
             "| baseline blocks joint/fused | baseline params |",
             "|---|---|---|---|---|---|---|"]
    for name, c in PRESETS.items():
        counts = preset_parameter_counts(c)
        lines.append(
            f"| {name} | {c.audio} | {c.d_model} | {c.encoder_depth}/{c.multimodal_depth}/"
            f"{c.audio_depth}/{c.decoder_depth} | {counts['mmhnet'] / 1e6:.2f}M | "
            f"{c.baseline_joint_depth}/{c.baseline_fused_depth} | "
            f"{counts['baseline'] / 1e6:.2f}M |")
    return "\n".join(lines)


def _run(args):
    print(presets_table())
    return 0


def add_presets_command(sub):
    p = sub.add_parser("presets", help="list the model presets and their parameter counts")
    p.set_defaults(func=_run)
