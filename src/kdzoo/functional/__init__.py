"""The math of the distillation losses, as pure functions on tensors (public API).

No parameters, no state: float32 or float64 in, the same dtype out. Each function computes the
loss of one (student, teacher) pair of tensors exactly as the reference Knowledge-Distillation-Zoo
does (seed-zoo.md section 2 has every formula); the method classes in :mod:`kdzoo.methods` add the
weights and average over stages. Tests check every function against a hand-written float64
computation of the formula and with ``torch.autograd.gradcheck``.

Topic modules: ``logits`` (losses on logits), ``maps`` (on feature maps), ``regression`` (through
learned connectors), ``relations`` (on relations between samples), ``gradients`` (on input or
feature gradients).
"""
from .gradients import lwm_attention, lwm_attention_loss, sobolev_matching
from .logits import boundary_supporting_kl, logits_mse, mutual_learning, soft_target
from .maps import (activation_boundary, attention_map, attention_transfer, fsp, fsp_matrix, hint,
                   match_spatial_size, neuron_selectivity_transfer, similarity_preserving)
from .regression import (attention_feature_distillation, factor_transfer, ofd_margin_from_batch,
                         ofd_margin_from_bn, overhaul_distillation, variational_information_loss)
from .relations import (contrastive_memory_scores, contrastive_nce_loss, correlation_congruence,
                        instance_relation_graph, irg_edge, irg_transformation, irg_vertex,
                        pairwise_distances, probabilistic_knowledge_transfer, relational_kd,
                        rkd_angle, rkd_distance)

__all__ = [
    "activation_boundary", "attention_feature_distillation", "attention_map",
    "attention_transfer", "boundary_supporting_kl", "contrastive_memory_scores",
    "contrastive_nce_loss", "correlation_congruence", "factor_transfer", "fsp", "fsp_matrix",
    "hint", "instance_relation_graph", "irg_edge", "irg_transformation", "irg_vertex",
    "logits_mse", "lwm_attention", "lwm_attention_loss", "match_spatial_size",
    "mutual_learning", "neuron_selectivity_transfer", "ofd_margin_from_batch",
    "ofd_margin_from_bn", "overhaul_distillation", "pairwise_distances",
    "probabilistic_knowledge_transfer", "relational_kd", "rkd_angle", "rkd_distance",
    "similarity_preserving", "sobolev_matching", "soft_target", "variational_information_loss",
]
