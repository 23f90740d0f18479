"""BSS: distillation on adversarial samples that support the teacher's decision boundary."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as KF
from ..models.features import Features
from .base import Method, MethodParams, Step
from .registry import register_method


def bss_epoch_weight(weight: float, epoch: int, epochs: int, warmup_epochs: int = 10,
                     decay: float = 1.25) -> float:
    """The reference's per-epoch lambda (train_bss.py): 0 during the warm-up (epoch <= 10),
    then ``max(weight * (1 - decay * (epoch - 1) / epochs), 0)``. With weight 2 and 200 epochs:
    1.875 at epoch 11, 0.0125 at epoch 160, 0 from epoch 161 ("80% of the epochs")."""
    if epoch <= warmup_epochs:
        return 0.0
    return max(weight * (1.0 - decay * (epoch - 1) / epochs), 0.0)


def select_candidates(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                      attack_size: int) -> Tensor:
    """Indices of the samples to attack: those both networks classify correctly; if there are
    more than ``attack_size``, the ``attack_size`` with the largest
    sum_{k != y} (p_t,k - p_s,k)^2 (where the student disagrees most with the teacher off the
    true class). Ties keep the batch order (stable sort)."""
    correct = (student_logits.argmax(1) == labels) & (teacher_logits.argmax(1) == labels)
    index = correct.nonzero().view(-1)
    if index.numel() > attack_size:
        diff = (F.softmax(teacher_logits[index], 1) - F.softmax(student_logits[index], 1)) ** 2
        score = diff.sum(1) - diff.gather(1, labels[index].view(-1, 1)).view(-1)
        order = torch.sort(score, descending=True, stable=True).indices
        index = index[order[:attack_size]]
    return index


def sample_attack_class(teacher_logits: Tensor, uniform: Tensor) -> Tensor:
    """The class each sample is pushed towards, drawn among the teacher's classes of rank >= 2
    with probability proportional to the teacher's probability (rank 1, the true class of a
    candidate, is never drawn).

    The reference's Python double loop, vectorised: with the rank->=2 probabilities q sorted in
    descending order and r = u * sum(q), pick the first rank whose cumulative sum of q is >= r.
    If round-off leaves none (r above the last cumulative sum), the reference keeps its initial
    choice, the rank-2 class, and so does this.
    """
    probs, classes = F.softmax(teacher_logits, 1).sort(dim=1, descending=True)
    probs, classes = probs[:, 1:], classes[:, 1:]
    threshold = probs.sum(1) * uniform
    position = (probs.cumsum(1) < threshold.unsqueeze(1)).sum(1)
    position = torch.where(position < probs.shape[1], position, torch.zeros_like(position))
    return classes.gather(1, position.unsqueeze(1)).squeeze(1)


def boundary_attack(teacher: Callable[[Tensor], Tensor], images: Tensor, target: Tensor,
                    attack_class: Tensor, step_alpha: float = 0.3, num_steps: int = 10,
                    eps: float = 1e-4, clamp: float = 2.5) -> Tensor:
    """The reference's ``BSSAttacker.attack``: move each image towards the boundary between its
    class ``target`` and ``attack_class`` of the (frozen) ``teacher``, a callable that gives its
    logits with autograd through the images (the network itself, or ``Step.run`` with
    ``input_grad``).

    Each step computes p = softmax(teacher(x)) and the gradient g of sum_b (p_attack - p_target)
    with respect to x, then x <- clamp(x + a_b (p_target - p_attack + eps) g / ||g||_2, -c, c)
    with ||g||_2 per sample over C, H, W and a_b = step_alpha while the teacher still predicts
    ``target`` (0 once it has crossed); it stops early when every sample has crossed. A zero
    gradient gives a zero step here (the reference would divide by zero). ``clamp <= 0`` turns the
    clamp off. Only the images get gradients: ``torch.autograd.grad`` leaves the teacher's
    parameters and their ``.grad`` untouched, and the teacher's mode is not changed.
    """
    adv = images.detach().clone()
    target, attack_class = target.view(-1, 1), attack_class.view(-1, 1)
    for _ in range(num_steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            logits = teacher(adv)
            probs = F.softmax(logits, 1)
            p_target, p_attack = probs.gather(1, target), probs.gather(1, attack_class)
            (grad,) = torch.autograd.grad((p_attack - p_target).sum(), adv)
        adv = adv.detach()
        alpha = step_alpha * (logits.detach().argmax(1, keepdim=True) == target).to(adv.dtype)
        if not bool(alpha.any()):  # every sample crossed the boundary: stop, as the reference
            break
        norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        scale = alpha * ((p_target - p_attack).detach() + eps)
        adv = adv + scale.view(-1, 1, 1, 1) * grad / norm
        if clamp > 0:
            adv = adv.clamp(-clamp, clamp)
    return adv.detach()


def _at_least_float32(logits: Tensor) -> Tensor:
    """Selection and sampling in float32 or better, also under bf16/fp16 autocast (the
    reference runs them in float32)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


@dataclass(frozen=True)
class BSSParams(MethodParams):
    weight: float = 2.0
    temperature: float = 3.0
    squared_temperature: bool = False
    attack_size: int = 32
    step_alpha: float = 0.3
    num_steps: int = 10
    eps: float = 1e-4
    clamp: float = 2.5
    warmup_epochs: int = 10
    decay: float = 1.25


@register_method("bss")
class BoundarySupportingSamples(Method[BSSParams]):
    """BSS: "Knowledge Distillation with Adversarial Samples Supporting Decision Boundary", Heo,
    Lee, Yun & Choi, AAAI 2019.

    Reference zoo behaviour (AberHu/Knowledge-Distillation-Zoo@65470c8: train_bss.py,
    kd_losses/bss.py), per batch while the epoch's lambda is positive:

    1. candidates: samples that student and teacher both classify correctly (on the clean batch);
       if more than ``attack_size`` (32), the 32 with the largest off-true-class squared
       difference of the two softmaxes;
    2. attack class: drawn among the teacher's ranks >= 2 with probability proportional to the
       teacher's probability (the reference's double loop, vectorised; the uniform draws come from
       ``step.generator("bss")`` so a resumed run draws the same classes);
    3. ``boundary_attack`` on the frozen teacher (its network with autograd to the images,
       ``step.run("teacher", x, input_grad=True)``): 10 steps of L2-normalised gradient ascent
       on p_attack - p_target with step 0.3 * (p_target - p_attack + 1e-4), early stop, images
       clamped to [-2.5, 2.5];
    4. bss = lambda_e * KL(softmax(t(adv)/T) || softmax(s(adv)/T)) with 'batchmean' and T = 3,
       without the T^2 factor (commented out in the reference; ``squared_temperature=True`` adds
       it). Both networks run on the adversarial batch through ``step.run``: the student in a
       second pass of the step module's forward, in train mode, so its BatchNorm statistics
       also see those images, as in the reference; the teacher through its inference path.

    lambda_e = 0 for the first ``warmup_epochs`` (10) epochs, then
    max(weight * (1 - 1.25 (e - 1) / E), 0) with E the stage's epoch count (``bss_epoch_weight``):
    a linear decay that reaches 0 after 80% of the epochs. weight = 2.0. With no candidates or
    lambda_e = 0 the term is a zero scalar.

    The clamp range is in *normalised* input space and is the reference's CIFAR-specific value:
    CIFAR pixels in [0, 1] normalise to about [-2.0, 2.1], so 2.5 is a loose box around the valid
    images. Other normalisations need another ``clamp`` (``clamp <= 0`` disables it); kdzoo's
    method context carries no normalisation statistics, so the box is not derived automatically.

    Differences from the paper / the authors' code (bhheo/BSS_distillation): there, candidates
    only need the teacher to be right, the student also distils on the clean images with a
    decaying soft-target term, the attack has a maximum perturbation, and lambda decays as
    2 (1 - 4/3 e/E) without warm-up. The reference zoo keeps only the adversarial term.
    """

    paper = ("Knowledge Distillation with Adversarial Samples Supporting Decision Boundary, "
             "Heo et al., AAAI 2019")
    url = "https://arxiv.org/abs/1805.05532"
    # it attacks the teacher and runs it on other inputs: cached logits are not all it needs
    teacher_cacheable = False

    def epoch_weight(self, epoch: int, epochs: int) -> float:
        p = self.params
        return bss_epoch_weight(p.weight, epoch, epochs, p.warmup_epochs, p.decay)

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        p = self.params
        s_logits = _at_least_float32(features["student"].logits.detach())
        t_logits = _at_least_float32(features["teacher"].logits.detach())
        zero = s_logits.new_zeros(())
        lam = self.epoch_weight(step.epoch, step.stage.epochs)
        if lam <= 0:
            return {"bss": zero}
        labels = step.batch.labels
        index = select_candidates(s_logits, t_logits, labels, p.attack_size)
        if index.numel() == 0:
            return {"bss": zero}
        gen = step.generator("bss", s_logits.device)
        uniform = torch.rand(index.numel(), generator=gen, device=s_logits.device,
                             dtype=t_logits.dtype)
        attack_class = sample_attack_class(t_logits[index], uniform)
        adv = boundary_attack(lambda x: step.run("teacher", x, input_grad=True).logits,
                              step.batch.images[index], labels[index], attack_class,
                              p.step_alpha, p.num_steps, p.eps, p.clamp)
        adv_student = step.run("student", adv).logits
        with torch.no_grad():
            adv_teacher = step.run("teacher", adv).logits
        loss = KF.boundary_supporting_kl(adv_student, adv_teacher, p.temperature,
                                         p.squared_temperature)
        return {"bss": lam * loss}
