"""PKT, RKD, CC and IRG as methods: the reference's feature points, weights and terms, no
connectors for any widths."""
import pytest
import torch

from kdzoo import functional as KF
from kdzoo.methods import (MethodContext, Stage, Step, create_method, get_method_class,
                           method_defaults)
from kdzoo.models import create_model

from feature_points import features_of, point_features, requested_points


def pair_features(teacher="resnet8x4", student="resnet8", batch=6):
    torch.manual_seed(0)
    s_net = create_model(student, num_classes=5)
    t_net = create_model(teacher, num_classes=5)
    images = torch.randn(batch, 3, 16, 16)
    ctx = MethodContext({"student": s_net.feature_info, "teacher": t_net.feature_info}, 5, 16, 3,
                        torch.arange(20) % 5)
    with torch.no_grad():
        return ctx, point_features(s_net, images), point_features(t_net, images)


def step():
    return Step(None, Stage("main", 1), 1, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name,points,defaults", [
    ("pkt", ("pool",), {"weight": 10000.0, "variant": "reference"}),
    ("rkd", ("pool",), {"weight": 1.0, "w_dist": 25.0, "w_angle": 50.0}),
    ("cc", ("pool",), {"weight": 100.0, "gamma": 0.4, "order": 2, "feat_dim": 128,
                       "variant": "reference"}),
    ("irg", ("stage2", "stage3", "pool"),  # and the logits, which every method gets
     {"weight": 1.0, "w_vert": 0.1, "w_edge": 5.0, "w_tran": 5.0}),
    ("crd", ("pool",), {"weight": 0.2, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.1,
                        "nce_mom": 0.5, "mode": "exact", "variant": "reference"}),
])
def test_points_and_reference_defaults(name, points, defaults):
    cls = get_method_class(name)
    assert requested_points(cls) == points
    assert method_defaults(name) == defaults


@pytest.mark.parametrize("name", ["pkt", "rkd", "cc", "irg"])
def test_relation_methods_need_no_connector_for_other_widths(name):
    ctx, _, _ = pair_features()
    assert list(create_method(name, ctx).parameters()) == []


def test_method_terms_are_the_weighted_functional_losses():
    ctx, s, t = pair_features()
    both = {"student": features_of(s), "teacher": features_of(t)}
    pkt = create_method("pkt", ctx, weight=3.0)(both, step())
    assert torch.allclose(pkt["pkt"], 3 * KF.probabilistic_knowledge_transfer(s["pool"],
                                                                              t["pool"]))
    rkd = create_method("rkd", ctx, weight=2.0)(both, step())
    assert set(rkd) == {"rkd_distance", "rkd_angle"}
    assert torch.allclose(rkd["rkd_distance"] + rkd["rkd_angle"],
                          2 * KF.relational_kd(s["pool"], t["pool"]))
    assert set(create_method("rkd", ctx, w_angle=0.0)(both, step())) == {"rkd_distance"}
    cc = create_method("cc", ctx, weight=5.0, gamma=0.3, order=3)(both, step())
    assert torch.allclose(cc["cc"], 5 * KF.correlation_congruence(s["pool"], t["pool"], 0.3, 3))
    irg = create_method("irg", ctx, weight=2.0, w_vert=1.0, w_edge=2.0, w_tran=3.0)(both, step())
    assert set(irg) == {"irg_vertex", "irg_edge", "irg_transformation"}
    expected = 2 * KF.instance_relation_graph(
        [s[k] for k in ("stage2", "stage3", "pool", "logits")],
        [t[k] for k in ("stage2", "stage3", "pool", "logits")], 1.0, 2.0, 3.0)
    assert torch.allclose(sum(irg.values()), expected)


def test_irg_transformation_is_defined_for_a_network_without_the_reference_shape_ratio():
    # The reference needs stage3 = 2 x stage2 channels; other ratios are averaged in groups.
    fm2 = torch.randn(4, 24, 8, 8)
    fm3 = torch.randn(4, 40, 4, 4)  # 40 / 24 is not an integer
    value = KF.irg_transformation(fm2, fm3, torch.randn(4, 32, 8, 8), torch.randn(4, 64, 4, 4))
    assert torch.isfinite(value)
