"""The thin MMHNet video-to-audio model (DESIGN.md, "The thin MMHNet model"; docs/model.md).

    from mmhnet.model import build_model, SyntheticTask, euler_sample
    model = build_model("tiny")                               # or "S", "M", "L"
    clips = SyntheticTask(model.config).sample(seconds=300)   # features of any duration
    latents = euler_sample(model.eval(), clips.conditions)    # (1, 9375, 20)
"""

from .baseline import AttentionBaseline
from .build import MODEL_KINDS, build_model, count_parameters, preset_parameter_counts
from .checkpoint import load_checkpoint, save_checkpoint
from .config import AUDIO_FORMATS, PRESETS, AudioFormat, ModelConfig, get_config
from .features import (Conditions, FeatureError, frame_counts, load_feature_file,
                       save_feature_file, validate_features)
from .flow import (euler_sample, flow_matching_loss, prepare_guidance, sampling_step,
                   draw_training_randomness)
from .mmhnet import MMHNet, VelocityOutput
from .synthetic import SyntheticTask
from .train import TrainSettings, make_optimizer, train, training_step

__all__ = [
    "MMHNet", "AttentionBaseline", "VelocityOutput", "MODEL_KINDS", "build_model",
    "count_parameters", "preset_parameter_counts", "ModelConfig", "AudioFormat", "AUDIO_FORMATS",
    "PRESETS", "get_config", "Conditions", "FeatureError", "frame_counts", "validate_features",
    "load_feature_file", "save_feature_file", "flow_matching_loss", "draw_training_randomness",
    "prepare_guidance", "sampling_step", "euler_sample", "SyntheticTask", "TrainSettings",
    "make_optimizer", "training_step", "train", "save_checkpoint", "load_checkpoint",
]
