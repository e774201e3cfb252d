"""Loss terms any method's training can add (``Trainer.add_loss``): each is ``fn(state) -> scalar``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench.train.loop import LossFn, StepState


def kd(teacher: nn.Module, temperature: float = 4.0) -> LossFn:
    """Knowledge distillation (Hinton et al. 2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per sample,
    with the teacher (the run's cached FP32 model) in eval mode and without gradients. Zero when the
    student's logits equal the teacher's."""
    if not temperature > 0:
        raise ValueError("distillation temperature must be positive")
    teacher.eval().requires_grad_(False)

    def term(state: StepState) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(teacher(state.x) / temperature, dim=1)
        student = F.log_softmax(state.logits / temperature, dim=1)
        return temperature**2 * F.kl_div(student, target, reduction="batchmean", log_target=True)

    return term
