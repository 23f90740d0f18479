"""FT: factor transfer through a pre-trained paraphraser and a trained translator."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as KF
from ..core import MultiStep, Stage
from ..functional import repdistiller as KR
from ..errors import ConfigError
from ..models.features import FeatureRequest, Features
from .base import Method, MethodContext, MethodParams, Step, positive
from .registry import register_method

BatchNormRule = Literal["reference", "cifar10-only", "always", "never"]
#: the datasets on which the reference's ``use_bn = (data_name == 'cifar10')`` is False
NO_BATCHNORM_IN_REFERENCE = ("cifar100",)


def uses_batchnorm(rule: str, data_name: str) -> bool:
    """Whether paraphraser and translator get BatchNorm under ``rule`` on dataset ``data_name``.

    "reference": the reference zoo's choice on the datasets it runs (BN on cifar10, none on
    cifar100) and BN elsewhere, which is the reference networks' own default
    (``paraphraser(..., use_bn=True)``) and keeps the paraphraser stable on teachers whose
    features are far from unit scale; "cifar10-only": the reference's expression taken literally
    (BN on cifar10 only, so also none on synthetic or Fashion-MNIST data); "always" / "never".
    """
    if rule == "reference":
        return data_name not in NO_BATCHNORM_IN_REFERENCE
    if rule == "cifar10-only":
        return data_name == "cifar10"
    return rule == "always"


def _conv_block(in_ch: int, out_ch: int, use_bn: bool, transpose: bool = False,
                bias: bool | None = None) -> list[nn.Module]:
    """3x3 (transposed) convolution, stride 1, padding 1 -> BN or nothing -> LeakyReLU(0.1).
    The convolution has a bias only without BN, as in the reference zoo's network.py, unless
    ``bias`` says otherwise (RepDistiller's convolutions always have one)."""
    conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    return [conv_cls(in_ch, out_ch, 3, 1, 1, bias=not use_bn if bias is None else bias),
            nn.BatchNorm2d(out_ch) if use_bn else nn.Identity(),
            nn.LeakyReLU(0.1)]  # not in place: cheap, and never touches a captured tensor


def _encoder(in_ch: int, factor_ch: int, use_bn: bool, bias: bool | None = None
             ) -> nn.Sequential:
    return nn.Sequential(*_conv_block(in_ch, in_ch, use_bn, bias=bias),
                         *_conv_block(in_ch, factor_ch, use_bn, bias=bias),
                         *_conv_block(factor_ch, factor_ch, use_bn, bias=bias))


def _reference_init(module: nn.Module) -> None:
    """The reference's init loop: kaiming-normal (fan_out, relu) for every ``nn.Conv2d`` with bias
    0, BatchNorm 1/0. ``nn.ConvTranspose2d`` is not a ``Conv2d`` subclass, so the decoder keeps
    PyTorch's default init, as in the reference (a quirk of the reference's network.py)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Paraphraser(nn.Module):
    """Auto-encoder of the teacher's map: encoder C_t -> C_t -> F -> F (F = int(C_t * k)),
    decoder F -> F -> C_t -> C_t with transposed convolutions. ``forward`` returns
    ``(factor, reconstruction)`` like the reference's ``paraphraser``. ``repdistiller``:
    RepDistiller's ``Paraphraser`` (models/util.py): every convolution with a bias, PyTorch's
    default init."""

    def __init__(self, channels: int, factor_channels: int, use_bn: bool,
                 repdistiller: bool = False) -> None:
        super().__init__()
        bias = True if repdistiller else None
        self.encoder = _encoder(channels, factor_channels, use_bn, bias)
        self.decoder = nn.Sequential(
            *_conv_block(factor_channels, factor_channels, use_bn, transpose=True, bias=bias),
            *_conv_block(factor_channels, channels, use_bn, transpose=True, bias=bias),
            *_conv_block(channels, channels, use_bn, transpose=True, bias=bias))
        if not repdistiller:
            _reference_init(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """The student's encoder: C_s -> C_s -> F -> F, the same blocks as the paraphraser's
    encoder, so student and teacher factors have the same shape whatever the widths.
    ``repdistiller``: RepDistiller's ``Translator`` (models/util.py): every convolution with a
    bias, PyTorch's default init."""

    def __init__(self, channels: int, factor_channels: int, use_bn: bool,
                 repdistiller: bool = False) -> None:
        super().__init__()
        self.encoder = _encoder(channels, factor_channels, use_bn, True if repdistiller else None)
        if not repdistiller:
            _reference_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@dataclass(frozen=True)
class FTParams(MethodParams):
    weight: float = 200.0
    k: float = 0.5
    paraphraser_epochs: int = 30
    paraphraser_lr: float = 0.01
    use_bn: BatchNormRule = "reference"
    variant: Literal["reference", "repdistiller"] = "reference"

    def check(self, method: str) -> None:
        if self.paraphraser_epochs < 1:
            raise ConfigError("method ft: paraphraser_epochs must be at least 1 (the "
                              "paraphraser is trained before distilling), got "
                              f"{self.paraphraser_epochs}")
        positive(method, paraphraser_lr=self.paraphraser_lr, k=self.k)


@register_method("ft")
class FactorTransfer(Method[FTParams]):
    """Factor transfer: "Paraphrasing Complex Network: Network Compression via Factor Transfer",
    Kim, Park & Kwak, NeurIPS 2018.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: kd_losses/ft.py,
    train_ft.py, network.py):

    * stage ``paraphraser`` (``paraphraser_epochs`` = 30): the student does not run; a paraphraser
      (auto-encoder of the teacher's ``stage3``, factor rate ``k`` = 0.5) is trained alone with
      ``reconstruction`` = MSE(reconstruction, teacher stage3) (weight 1), by its own SGD
      (lr 0.01 constant, momentum 0.9, weight decay 1e-4, no Nesterov); no evaluation. Afterwards
      the paraphraser is frozen for good: eval mode and no gradients.
    * stage ``main`` (the run's schedule): student and translator train with
      ``ft`` = weight * |phi(translator(s3)) - phi(paraphraser factor(t3))|_1 (mean), weight 200.

    Features: ``stage3`` (post-ReLU) of both networks. The translator maps the student's width
    to the factor's, so teacher and student of different widths work by construction.

    ``use_bn`` decides whether paraphraser and translator have BatchNorm. The reference sets
    ``use_bn = (data_name == 'cifar10')``, so CIFAR-10 runs with BN and CIFAR-100 runs without
    (its train_ft.py; the paper gives no such rule). "reference" (default) does exactly
    that on both CIFARs and uses BN on datasets the reference never ran (the reference networks'
    own default; without BN, SGD at lr 0.01 diverges on a teacher whose features are far from
    unit scale, such as an untrained deep ResNet); "cifar10-only" applies the reference's
    expression literally (no BN on any dataset but cifar10); "always" / "never" force it (see
    :func:`uses_batchnorm`). Convolutions have a bias exactly when there is no BN. The decoder's
    transposed convolutions keep PyTorch's default init, as in the reference.

    On any network the reference's CIFAR-ResNet stages are its last stage,
    student and teacher aligned from the end, as RepDistiller pairs cross-family networks.

    ``variant="repdistiller"``: RepDistiller's FT (HobbitLong/RepDistiller@b84f547:
    distiller_zoo/FT.py, models/util.py ``Paraphraser``/``Translator``, train_student.py lines
    239-253, helper/pretrain.py, helper/loops.py), on ``feat[-2]``, the last stage's post-ReLU
    output, as here:

    * the paraphraser has no BatchNorm and the translator has BatchNorm (their defaults
      ``use_bn=False`` / ``use_bn=True``; ``use_bn`` is not used), every convolution has a bias,
      and both keep PyTorch's default init;
    * stage ``paraphraser``: ``paraphraser_epochs`` (its ``--init_epochs`` 30) epochs of the
      reconstruction MSE at the constant lr ``paraphraser_lr`` (0.01 for ResNet and WRN
      students, else its ``--learning_rate``: 0.05 for VGG students by recipe, 0.01 for
      MobileNetV2 / ShuffleNet), with the run's momentum and weight decay (0.9, 5e-4), no
      Nesterov;
    * stage ``main``: ``ft`` = weight * mean |factor(translator(s)) - factor(paraphraser
      factor(t))| with factor(z) = the L2-normalised channel mean of z^2
      (:func:`kdzoo.functional.repdistiller_factor_transfer`; the taller map pooled to the
      other's height), weight = beta 200 (``-b 200``, the same default), cross-entropy 1, no KD.
    """

    paper = ("Paraphrasing Complex Network: Network Compression via Factor Transfer, "
             "Kim et al., NeurIPS 2018")
    url = "https://arxiv.org/abs/1802.04977"
    needs = FeatureRequest.last(1)

    def __init__(self, ctx: MethodContext, params: FTParams) -> None:
        super().__init__(ctx, params)
        p = self.params
        teacher_ch = ctx.infos["teacher"].stages[-1].channels
        factor_ch = int(teacher_ch * p.k)
        if factor_ch < 1:
            raise ConfigError(f"method ft: k={p.k} leaves no factor channel for a teacher with "
                              f"{teacher_ch} channels; use a larger k")
        student_ch = ctx.infos["student"].stages[-1].channels
        if p.variant == "repdistiller":
            self.use_bn = False  # the paraphraser's; RepDistiller's translator always has BN
            self.paraphraser = Paraphraser(teacher_ch, factor_ch, False, repdistiller=True)
            self.translator = Translator(student_ch, factor_ch, True, repdistiller=True)
        else:
            self.use_bn = uses_batchnorm(p.use_bn, ctx.data_name)
            self.paraphraser = Paraphraser(teacher_ch, factor_ch, self.use_bn)
            self.translator = Translator(student_ch, factor_ch, self.use_bn)
        # Only the paraphraser trains in the first stage (its optimiser takes the method's
        # trainable parameters); the translator joins the student's optimiser afterwards.
        self.translator.requires_grad_(False)

    @property
    def paraphraser_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.paraphraser.parameters())

    def stages(self, main: Stage) -> list[Stage]:
        lr = self.params.paraphraser_lr
        # the reference zoo: lr, momentum 0.9, its weight decay 1e-4, no Nesterov; RepDistiller:
        # lr and no Nesterov, the run's momentum and weight decay (its opt.momentum, 5e-4)
        settings: dict[str, object] = {"lr": lr, "nesterov": False}
        if self.params.variant != "repdistiller":
            settings.update(momentum=0.9, weight_decay=1e-4)
        pretrain = Stage(
            "paraphraser", self.params.paraphraser_epochs, MultiStep(lr, ()),  # constant lr
            optimizer="paraphraser", optimizer_settings=settings,
            trainable="method", evaluate=False, uses_student=False)
        return [pretrain, main]

    def end_stage(self, stage: Stage) -> None:
        # Also re-applied on resume for every finished stage, so the frozen state needs no buffer.
        if stage.name == "paraphraser":
            self.paraphraser.eval()
            self.paraphraser.requires_grad_(False)
            self.translator.requires_grad_(True)

    def train(self, mode: bool = True) -> "FactorTransfer":
        """Like ``nn.Module.train``, but a frozen paraphraser stays in eval mode (its BatchNorm
        statistics must not move while the student trains)."""
        super().train(mode)
        if self.paraphraser_frozen:
            self.paraphraser.eval()
        return self

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        teacher_map = features["teacher"].stages[-1]
        assert teacher_map is not None
        if step.stage.name == "paraphraser":  # the student does not run (no "student" features)
            _, reconstruction = self.paraphraser(teacher_map)
            return {"reconstruction": F.mse_loss(reconstruction, teacher_map)}
        student_map = features["student"].stages[-1]
        assert student_map is not None
        with torch.no_grad():  # the frozen paraphraser's factor is a fixed target
            teacher_factor = self.paraphraser.encoder(teacher_map)
        student_factor = self.translator(student_map)
        if self.params.variant == "repdistiller":
            return {"ft": self.params.weight * KR.repdistiller_factor_transfer(student_factor,
                                                                               teacher_factor)}
        # Networks of other resolutions: the larger factor is pooled to the smaller's size.
        student_factor, teacher_factor = KF.match_spatial_size(student_factor, teacher_factor)
        return {"ft": self.params.weight * KF.factor_transfer(student_factor, teacher_factor)}
