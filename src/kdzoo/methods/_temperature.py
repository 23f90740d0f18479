"""CTKD's curriculum temperature, for any logit method (the ``ctkd`` option of
:class:`kdzoo.methods._logit.LogitMethod` and of TTM/WTTM's
:class:`kdzoo.methods._transformed.TransformedMatching`, and the ``ctkd`` method).

"Curriculum Temperature for Knowledge Distillation", Li, Li, Yang, Zhao, Song, Luo, Li &
Yang, AAAI 2023; reference github.com/zhengli97/CTKD: ``models/temp_global.py`` (``Global_T``,
``GradientReversalFunction``), ``train_student.py`` (``CosineDecay``, ``LinearDecay``, the
per-epoch ``decay_value``), ``helper/loops.py`` (``temp = t_start + t_end * sigmoid(...)``),
``scripts/run_cifar_distill.sh`` (the settings).

The temperature is one learnable scalar p (initialised to 1) passed through a gradient-reversal
layer, then mapped to T = t_start + t_end * sigmoid(p) (1 + 20 * sigmoid(1) = 15.62 at the
start). The reversal layer is the identity forward and multiplies the gradient by lambda
backward, with lambda from the curriculum of the epoch e (1-based; the reference's
``gradient_decay.get_value(epoch)``):

* cosine (``cosine_decay``, the reference's setting): i = min(max(e, 0), loops),
  lambda = (cos(i pi / loops) + 1) / 2 * (decay_max - decay_min) + decay_min;
* linear: i = max(e, 0), or loops - 1 from i >= loops on, lambda = -i (decay_max - decay_min)
  / loops (as written there, without decay_max added).

With the script's decay_max 0, decay_min -1, decay_loops 10 (argparse's defaults, 0 / 0 / 0,
would divide by zero), lambda goes from 0 to -1 over the first 10 epochs and stays at -1: the
temperature ascends the distillation loss the student descends, ever more strongly. kdzoo counts
the epochs within the stage (``Step.epoch``); the reference counts the run's, the same for the
one-stage logit methods. ``decay_loops`` is in epochs, as there (10 of the reference's 240);
runs much shorter than 240 epochs may want to scale it.

Optional hyper-parameters read from the method's ``Params`` (with CTKD's values when absent):
``t_start`` (1), ``t_end`` (20), ``cosine_decay`` (True), ``decay_max`` (0), ``decay_min`` (-1),
``decay_loops`` (10). The parameter p is a submodule parameter of the method, so it is trained
by the run's optimiser with the student (SGD with its learning rate, momentum and weight decay,
as the reference puts ``Global_T`` in its ``trainable_list``) and saved in the method's state.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..core import Step
from ..errors import ConfigError

#: CTKD's settings (scripts/run_cifar_distill.sh): name -> value.
CTKD_DEFAULTS: dict[str, Any] = {"t_start": 1.0, "t_end": 20.0, "cosine_decay": True,
                                 "decay_max": 0.0, "decay_min": -1.0, "decay_loops": 10}


class GradientReversal(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``lambda_`` backward (CTKD's
    ``GradientReversalFunction``: the reversal itself comes from a negative lambda)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.new_tensor(ctx.lambda_) * grad, None


def curriculum_lambda(epoch: int, decay_max: float = 0.0, decay_min: float = -1.0,
                      decay_loops: float = 10, cosine: bool = True) -> float:
    """The gradient-reversal strength lambda of ``epoch`` (module docstring)."""
    if cosine:
        i = min(max(epoch, 0), decay_loops)
        value = (math.cos(i * math.pi / decay_loops) + 1.0) * 0.5
        return value * (decay_max - decay_min) + decay_min
    i = max(epoch, 0)
    if i >= decay_loops:
        i = decay_loops - 1
    return i * -((decay_max - decay_min) / decay_loops)


class CurriculumTemperature(nn.Module):
    """CTKD's learnable global temperature (module docstring); ``module(step)`` returns the
    scalar temperature of the step, as a 0-dim tensor that carries the reversed gradient."""

    def __init__(self, params: Any = None) -> None:
        super().__init__()
        settings = {key: getattr(params, key, default) for key, default in CTKD_DEFAULTS.items()}
        self.t_start = float(settings["t_start"])
        self.t_end = float(settings["t_end"])
        self.cosine = bool(settings["cosine_decay"])
        self.decay_max = float(settings["decay_max"])
        self.decay_min = float(settings["decay_min"])
        self.decay_loops = settings["decay_loops"]
        if not self.decay_loops > 0:
            raise ConfigError(f"ctkd: decay_loops must be positive, got {self.decay_loops}")
        if not (self.t_start > 0 and self.t_end >= 0):
            raise ConfigError("ctkd: the temperature t_start + t_end * sigmoid(p) needs "
                              f"t_start > 0 and t_end >= 0, got {self.t_start} and {self.t_end}")
        # CTKD's Global_T: nn.Parameter(torch.ones(1)).
        self.global_t = nn.Parameter(torch.ones(1))

    def strength(self, epoch: int) -> float:
        """lambda of ``epoch`` (1-based)."""
        return curriculum_lambda(epoch, self.decay_max, self.decay_min, self.decay_loops,
                                 self.cosine)

    def forward(self, step: Step) -> Tensor:
        reversed_t = GradientReversal.apply(self.global_t, self.strength(step.epoch))
        return (self.t_start + self.t_end * torch.sigmoid(reversed_t)).reshape(())

    @torch.no_grad()
    def value(self) -> float:
        """The current temperature (for logging)."""
        return float(self.t_start + self.t_end * torch.sigmoid(self.global_t))
