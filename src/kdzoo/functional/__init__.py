"""The math of the distillation losses, as pure functions on tensors (public API).

No parameters, no state: float32 or float64 in, the same dtype out. Each function computes the loss
of one (student, teacher) pair of tensors exactly as the reference Knowledge-Distillation-Zoo does
(github.com/AberHu/Knowledge-Distillation-Zoo, kd_losses/); the method classes in
:mod:`kdzoo.methods` add the weights and average over stages. Tests check every function against a
hand-written float64 computation of the formula and with ``torch.autograd.gradcheck``.

Topic modules: ``logits`` (losses on logits), ``maps`` (on feature maps), ``regression`` (through
learned connectors), ``relations`` (on relations between samples), ``gradients`` (on input or
feature gradients); the methods the field compares against today: ``logit_kd`` (DKD, DIST, NKD,
WSLD, RLD, SDD), ``multilevel`` (MLKD, TTM, WTTM), ``feature_kd`` (ReviewKD, ICKD, KDSVD),
``wasserstein`` (WKD), ``activation_maps`` (CAT-KD) and ``repdistiller`` (RepDistiller's
variants).
"""
from .gradients import (lwm_attention, lwm_attention_loss, sobolev_matching)
from .logits import (boundary_supporting_kl, logits_mse, mutual_learning, soft_target,
                     standardize_logits)
from .maps import (activation_boundary, attention_map, attention_transfer, fsp, fsp_matrix, hint,
                   match_spatial_size, neuron_selectivity_transfer, similarity_preserving)
from .regression import (attention_feature_distillation, factor_transfer, ofd_margin_from_batch,
                         ofd_margin_from_bn, overhaul_distillation, variational_information_loss)
from .relations import (contrastive_memory_scores, contrastive_nce_loss, correlation_congruence,
                        instance_relation_graph, irg_edge, irg_transformation, irg_vertex,
                        pairwise_distances, probabilistic_knowledge_transfer, relational_kd,
                        rkd_angle, rkd_distance)
from .logit_kd import (decoupled_kd, dist, normalized_kd, refined_logit_distillation,
                       scale_decoupled_kd, sdd_region_weights, spatial_pyramid_pool,
                       weighted_soft_label_kd)
from .multilevel import (batch_correlation, class_correlation, transformed_teacher_matching,
                         weighted_transformed_teacher_matching)
from .feature_kd import (hierarchical_context_loss, inter_channel_correlation, kdsvd)
from .wasserstein import (cosine_cost, gaussian_wasserstein, linear_cka_cost, sharpen_cost,
                          sinkhorn_distance, sinkhorn_plan, wkd_logit)
from .activation_maps import (cat_loss, class_activation_maps)
from .repdistiller import (repdistiller_activation_boundary, repdistiller_attention_map,
                           repdistiller_attention_transfer, repdistiller_correlation,
                           repdistiller_factor, repdistiller_factor_transfer, repdistiller_fsp,
                           repdistiller_fsp_matrix, repdistiller_match_size)

__all__ = [
    "activation_boundary", "attention_feature_distillation", "attention_map", "attention_transfer",
    "batch_correlation", "boundary_supporting_kl", "cat_loss", "class_activation_maps",
    "class_correlation", "contrastive_memory_scores", "contrastive_nce_loss",
    "correlation_congruence", "cosine_cost", "decoupled_kd", "dist", "factor_transfer", "fsp",
    "fsp_matrix", "gaussian_wasserstein", "hierarchical_context_loss", "hint",
    "instance_relation_graph", "inter_channel_correlation", "irg_edge", "irg_transformation",
    "irg_vertex", "kdsvd", "linear_cka_cost", "logits_mse", "lwm_attention", "lwm_attention_loss",
    "match_spatial_size", "mutual_learning", "neuron_selectivity_transfer", "normalized_kd",
    "ofd_margin_from_batch", "ofd_margin_from_bn", "overhaul_distillation", "pairwise_distances",
    "probabilistic_knowledge_transfer", "refined_logit_distillation", "relational_kd",
    "repdistiller_activation_boundary", "repdistiller_attention_map",
    "repdistiller_attention_transfer", "repdistiller_correlation", "repdistiller_factor",
    "repdistiller_factor_transfer", "repdistiller_fsp", "repdistiller_fsp_matrix",
    "repdistiller_match_size",
    "rkd_angle", "rkd_distance", "scale_decoupled_kd", "sdd_region_weights", "sharpen_cost",
    "similarity_preserving", "sinkhorn_distance", "sinkhorn_plan", "sobolev_matching",
    "soft_target", "spatial_pyramid_pool", "standardize_logits", "transformed_teacher_matching",
    "variational_information_loss", "weighted_soft_label_kd",
    "weighted_transformed_teacher_matching", "wkd_logit",
]
