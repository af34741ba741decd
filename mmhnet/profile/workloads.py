"""The three profiled workloads, on synthetic inputs of any duration.

    sample_step   one Euler step with classifier-free guidance (the conditional and the null
                  pass as one batch of 2 B clips), conditions encoded first, under no_grad
    sample        full sampling: encode the conditions, then ``steps`` Euler steps
    train_step    one training step: flow-matching loss, backward, gradient clipping, AdamW step

Every workload goes through the model package's own API (build_model, prepare_guidance,
sampling_step, euler_sample, make_optimizer, training_step), so what is profiled is what
``mmhnet generate`` and ``mmhnet train`` run.
"""

from dataclasses import dataclass

import torch

from mmhnet.model.build import MODEL_KINDS, build_model
from mmhnet.model.features import frame_counts
from mmhnet.model.flow import DEFAULT_CFG_SCALE, euler_sample, prepare_guidance, sampling_step
from mmhnet.model.synthetic import SyntheticTask
from mmhnet.model.train import make_optimizer, training_step

__all__ = ["MODES", "MODEL_NAMES", "WorkloadSpec", "Workload", "input_bytes"]

MODES = ("sample_step", "sample", "train_step")
MODEL_NAMES = tuple(MODEL_KINDS)
FLOAT_BYTES = 4


@dataclass(frozen=True)
class WorkloadSpec:
    """One profiled point. seconds: clip duration; batch: clips per step (before the CFG
    doubling); steps: Euler steps of ``sample``; checkpointing: recompute every block in the
    backward pass (the model's ``set_recompute``)."""
    config: str = "S"
    model: str = "mmhnet"
    mode: str = "sample_step"
    seconds: float = 8.0
    batch: int = 1
    steps: int = 25
    cfg_scale: float = DEFAULT_CFG_SCALE
    checkpointing: bool = False
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose from {MODEL_NAMES}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {MODES}")
        if self.batch < 1 or self.steps < 1:
            raise ValueError(f"batch and steps must be >= 1, got {self.batch} and {self.steps}")


def input_bytes(config, seconds, batch):
    """Bytes of one batch of float32 inputs: visual, sync and text features and audio latents."""
    counts = frame_counts(config, seconds)
    per_clip = (counts.visual * config.visual_dim + counts.sync * config.sync_dim
                + config.text_tokens * config.text_dim + counts.audio * config.latent_dim)
    return batch * per_clip * FLOAT_BYTES


class Workload:
    """A built model with what its mode needs (an optimizer for training), able to run the mode
    at any duration: ``prepare(seconds)`` makes the inputs (not timed), ``run()`` the work
    (timed) and returns how many steps it took."""

    def __init__(self, spec: WorkloadSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self.model = build_model(spec.config, spec.model, device=self.device)
        self.config = self.model.config
        self.task = SyntheticTask(self.config)
        self.optimizer = None
        self._conditions = self._latents = self._guidance = self._noise = self._generator = None
        if spec.mode == "train_step":
            self.model.set_recompute(spec.checkpointing)
            self.optimizer = make_optimizer(self.model)
        else:
            self.model.eval()

    def tokens(self, seconds):
        """Audio latent frames of one clip of ``seconds``."""
        return frame_counts(self.config, seconds).audio

    def prepare(self, seconds):
        """Make the inputs of a batch of ``seconds``-long clips (and, for ``sample_step``, the
        encoded conditions and the noise)."""
        clips = self.task.sample(seconds, self.spec.batch,
                                 generator=torch.Generator().manual_seed(self.spec.seed))
        self._conditions = clips.conditions.to(self.device)
        self._latents = clips.latents.to(self.device)
        self._generator = torch.Generator(self.device).manual_seed(self.spec.seed)
        if self.spec.mode == "sample_step":
            self._guidance = prepare_guidance(self.model, self._conditions, self.spec.cfg_scale)
            self._noise = torch.randn(self._latents.shape, generator=self._generator,
                                      device=self.device)

    def run(self):
        """Run the mode once on the prepared inputs; returns the number of steps taken."""
        spec, model = self.spec, self.model
        if spec.mode == "sample_step":
            sampling_step(model, self._noise, 0.0, 1.0 / spec.steps, self._guidance)
            return 1
        if spec.mode == "sample":
            euler_sample(model, self._conditions, steps=spec.steps, cfg_scale=spec.cfg_scale,
                         generator=self._generator)
            return spec.steps
        training_step(model, self.optimizer, self._latents, self._conditions,
                      generator=self._generator)
        return 1

    def clear(self):
        """Drop the inputs, what was prepared from them and the gradients, so that what stays
        allocated is the weights and the optimizer state."""
        self._conditions = self._latents = self._guidance = self._noise = None
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def state_bytes(self):
        """(weights, gradients, optimizer state) in bytes, counted from the tensors."""
        weights = sum(t.numel() * t.element_size()
                      for t in list(self.model.parameters()) + list(self.model.buffers()))
        if self.optimizer is None:
            return weights, 0, 0
        # a training step allocates one gradient per trainable weight
        grads = sum(p.numel() * p.element_size() for p in self.model.parameters()
                    if p.requires_grad)
        optim = sum(t.numel() * t.element_size() for state in self.optimizer.state.values()
                    for t in state.values() if isinstance(t, torch.Tensor))
        return weights, grads, optim
