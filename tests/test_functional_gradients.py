"""sobolev_matching and the LwM attention maps against explicit float64 computations."""
import math

import pytest
import torch

from kdzoo import functional as KF


def randn(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def hand_normalize(values):
    norm = math.sqrt(sum(v * v for v in values))
    return [v / max(norm, 1e-12) for v in values]


def hand_sobolev(gs, gt):
    """mean over B*C*H*W of (gs/||gs|| - gt/||gt||)^2, norms per sample, with Python loops."""
    total, count = 0.0, 0
    for b in range(gs.shape[0]):
        a = hand_normalize(gs[b].flatten().tolist())
        c = hand_normalize(gt[b].flatten().tolist())
        total += sum((x - y) ** 2 for x, y in zip(a, c, strict=True))
        count += len(a)
    return total / count


def hand_cam(grad, feature=None):
    """cam[b, h*W+w] = max(0, sum_c mean_{h',w'}(g[b,c]) * m[b,c,h,w]), m = g or the feature,
    then L2-normalised per sample."""
    B, C, H, W = grad.shape
    maps = grad if feature is None else feature
    cams = []
    for b in range(B):
        weights = [sum(grad[b, c].flatten().tolist()) / (H * W) for c in range(C)]
        cam = []
        for h in range(H):
            for w in range(W):
                cam.append(max(0.0, sum(weights[c] * maps[b, c, h, w].item() for c in range(C))))
        cams.append(hand_normalize(cam))
    return cams


def test_sobolev_matching_equals_hand_computation():
    gs, gt = randn(3, 2, 4, 5, seed=1), randn(3, 2, 4, 5, seed=2) * 7
    value = KF.sobolev_matching(gs, gt)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(hand_sobolev(gs, gt), rel=1e-12)


def test_sobolev_matching_hand_derived_values():
    # one sample, 2 elements: gs = (3, 4) -> (0.6, 0.8); gt = (0, -2) -> (0, -1)
    gs = torch.tensor([[[[3.0]], [[4.0]]]], dtype=torch.float64)
    gt = torch.tensor([[[[0.0]], [[-2.0]]]], dtype=torch.float64)
    assert KF.sobolev_matching(gs, gt).item() == pytest.approx((0.36 + 3.24) / 2, rel=1e-12)
    # scale invariant per sample, zero for parallel gradients
    assert KF.sobolev_matching(gs, 5 * gs).item() == pytest.approx(0.0, abs=1e-15)


def test_sobolev_matching_float32_and_channels_last():
    gs, gt = randn(2, 3, 4, 4, seed=3), randn(2, 3, 4, 4, seed=4)
    value = KF.sobolev_matching(gs.float().to(memory_format=torch.channels_last), gt.float())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(hand_sobolev(gs, gt), rel=1e-5)


def test_sobolev_matching_gradcheck():
    gs, gt = randn(2, 2, 3, 3, seed=5), randn(2, 2, 3, 3, seed=6)
    assert torch.autograd.gradcheck(KF.sobolev_matching,
                                    (gs.requires_grad_(), gt.requires_grad_()))


@pytest.mark.parametrize("use_feature", [False, True])
def test_lwm_attention_equals_hand_computation(use_feature):
    grad = randn(3, 4, 3, 5, seed=7)
    feature = randn(3, 4, 3, 5, seed=8).relu() if use_feature else None
    cam = KF.lwm_attention(grad, feature)
    assert cam.shape == (3, 15)  # B x H*W: depends on the map size
    assert cam.dtype == torch.float64
    expected = torch.tensor(hand_cam(grad, feature), dtype=torch.float64)
    assert torch.allclose(cam, expected, rtol=1e-12, atol=1e-14)


def test_lwm_attention_hand_derived_values():
    # C=2, 1x2 map: g_0 = (1, 3), g_1 = (2, -2) -> weights (2, 0); cam = ReLU(2*(1,3)) = (2, 6)
    grad = torch.tensor([[[[1.0, 3.0]], [[2.0, -2.0]]]], dtype=torch.float64)
    expected = torch.tensor([[2.0, 6.0]], dtype=torch.float64) / math.sqrt(40.0)
    assert torch.allclose(KF.lwm_attention(grad), expected, rtol=1e-14, atol=0)
    # Grad-CAM with A_0 = (1, 0), A_1 = (5, 5): cam = ReLU(2*(1,0) + 0) = (2, 0) -> (1, 0)
    feature = torch.tensor([[[[1.0, 0.0]], [[5.0, 5.0]]]], dtype=torch.float64)
    assert torch.allclose(KF.lwm_attention(grad, feature),
                          torch.tensor([[1.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    # a map that ReLU zeroes entirely stays zero (F.normalize's eps), no NaN
    # (g = (1, -1) has GAP 0, so cam = 0 everywhere)
    flat = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)
    assert torch.equal(KF.lwm_attention(flat), torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("use_feature", [False, True])
def test_lwm_attention_loss_equals_hand_computation(use_feature):
    # student and teacher of different widths (3 vs 5 channels), same 4x4 map
    gs, gt = randn(2, 3, 4, 4, seed=9), randn(2, 5, 4, 4, seed=10)
    fs = randn(2, 3, 4, 4, seed=11).relu() if use_feature else None
    ft = randn(2, 5, 4, 4, seed=12).relu() if use_feature else None
    cs, ct = hand_cam(gs, fs), hand_cam(gt, ft)
    expected = sum(abs(a - b) for rs, rt in zip(cs, ct, strict=True)
                   for a, b in zip(rs, rt, strict=True)) / (2 * 16)
    value = KF.lwm_attention_loss(gs, gt, fs, ft)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert KF.lwm_attention_loss(gs.float(), gt.float()).dtype == torch.float32


def test_lwm_attention_loss_refuses_different_map_sizes():
    with pytest.raises(ValueError, match="same|map"):
        KF.lwm_attention_loss(randn(2, 3, 4, 4), randn(2, 3, 8, 8))


def test_lwm_gradcheck():
    gs, gt = randn(2, 3, 3, 3, seed=13), randn(2, 2, 3, 3, seed=14)
    fs = randn(2, 3, 3, 3, seed=15)
    assert torch.autograd.gradcheck(KF.lwm_attention_loss,
                                    (gs.requires_grad_(), gt.requires_grad_()))
    assert torch.autograd.gradcheck(lambda g, f: KF.lwm_attention(g, f),
                                    (gs, fs.requires_grad_()))
