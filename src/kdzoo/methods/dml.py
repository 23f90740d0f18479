"""Deep mutual learning: two networks trained together, each distilling from the other."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import functional as KF
from ..core import STUDENT, Role
from ..models.features import Features
from .base import Method, MethodParams, Step
from .registry import register_method


@dataclass(frozen=True)
class DMLParams(MethodParams):
    weight: float = 1.0


@register_method("dml")
class DeepMutualLearning(Method[DMLParams]):
    """Deep mutual learning: "Deep Mutual Learning", Zhang, Xiang, Hospedales & Lu, CVPR 2018.

    The method's second network is a trainable peer (role "peer", named by ``--teacher``): like
    every trainable role, the loop runs it in train mode inside the step, gives it its own
    cross-entropy ``peer_ce`` and its own SGD optimiser ("peer", same settings and schedule),
    evaluates it every epoch (``peer_test_*``) and exports it as ``peer.pt``; no engine code
    knows about mutual learning. This method adds the two mutual terms

        dml      = weight * KL(p_peer || p_student)   (peer detached)
        peer_dml = weight * KL(p_student || p_peer)   (student detached)

    with no temperature and 'batchmean' (AberHu/Knowledge-Distillation-Zoo@65470c8:
    kd_losses/dml.py, train_dml.py; its net1 is the peer, its net2 the student, whose accuracy
    the reference-zoo grid compares with the README's). Both terms come from one
    forward pass of each network. The reference backpropagates the two networks' losses
    separately and steps optimiser 1 then optimiser 2; the loop backpropagates their sum once and
    steps both, which gives the same gradients because each network's loss depends only on its
    own parameters (the other network's logits are detached) and neither step changes the other
    network's graph. Two networks only ("DML: two nets only, synchronous updates"), as the
    reference; the paper also covers cohorts of more than two. weight = 1.0 (reference).

    The peer starts from its own random weights (seeded apart from the student's), or from
    ``--teacher-checkpoint`` (the reference's ``--net1_init``; ``--student-init`` is its
    ``--net2_init``).
    """

    paper = "Deep Mutual Learning, Zhang et al., CVPR 2018"
    url = "https://arxiv.org/abs/1706.00384"
    # the peer is named by the config's teacher section (--teacher NET1 --student NET2)
    roles = (STUDENT, Role("peer", trainable=True, source="teacher"))

    def forward(self, features: Mapping[str, Features], step: Step) -> dict[str, Tensor]:
        s_logits, p_logits = features["student"].logits, features["peer"].logits
        weight = self.params.weight
        return {
            "dml": weight * KF.mutual_learning(s_logits, p_logits.detach()),
            "peer_dml": weight * KF.mutual_learning(p_logits, s_logits.detach()),
        }
