"""MLKD (both protocols, its masks and its strong view's RandAugment), CTKD's curriculum
temperature (as the ``ctkd`` method and as any logit method's ``ctkd`` option), TTM and WTTM."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo.spec import method_params
from kdzoo.data import randaugment as R
from kdzoo.data.loader import Batch
from kdzoo.errors import ConfigError
from kdzoo.functional.logits import soft_target
from kdzoo.functional.multilevel import (
    batch_correlation,
    class_correlation,
    transformed_teacher_matching,
    weighted_transformed_teacher_matching,
)
from kdzoo.methods import (
    MethodContext,
    Stage,
    Step,
    create_method,
    method_defaults,
)
from kdzoo.methods._temperature import CurriculumTemperature, curriculum_lambda
from kdzoo.methods.mlkd import confidence_masks
from kdzoo.models.features import FeatureInfo, Features
from states import assert_same_state


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the machine is shared


NUM_CLASSES = 10


def context(num_classes=NUM_CLASSES):
    info = FeatureInfo(stages=(), pool=8, logits=num_classes)
    return MethodContext({"student": info, "teacher": info}, num_classes, 16, 3,
                         torch.zeros(8, dtype=torch.long))


def logits(seed, batch=8, classes=NUM_CLASSES, dtype=torch.float64, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=gen, dtype=dtype) * scale


def by_role(student_logits, teacher_logits):
    return {"student": Features(student_logits), "teacher": Features(teacher_logits)}


def make_step(epoch=1, labels=None, views=None, run=None, ce_weight=1.0, batch=8):
    labels = torch.arange(batch) % NUM_CLASSES if labels is None else labels
    data = Batch(torch.zeros(batch, 3, 4, 4), labels, torch.arange(batch), views=views or {})
    return Step(data, Stage("main", 12, ce_weight=ce_weight), epoch=epoch, step=0, _run=run)


# ---------------------------------------------------------------------------------- defaults
def test_defaults_are_the_references():
    # MLKD: mdistiller/engine/cfg.py CFG.KD (the ours/*.yaml configs do not override it), and
    # the authors' two views (tools/train_ours.py always trains with the strong view)
    assert method_defaults("mlkd") == {"ce_weight": 0.1, "weight": 0.9, "temperature": 4.0,
                                       "protocol": "paper", "standardize": False,
                                       "ctkd": False}
    assert create_method("mlkd", context()).views == ("strong",)
    # CTKD: scripts/run_cifar_distill.sh (-r 0.1 -a 0.9 --t_start 1 --t_end 20 --cosine_decay 1
    # --decay_max 0 --decay_min -1 --decay_loops 10)
    assert method_defaults("ctkd") == {"ce_weight": 0.1, "weight": 0.9, "t_start": 1.0,
                                       "t_end": 20.0, "cosine_decay": True, "decay_max": 0.0,
                                       "decay_min": -1.0, "decay_loops": 10,
                                       "standardize": False}
    # TTM: the README's command (--ttm_l 0.1 -r 1 -b 45); WTTM: its (--ttm_l 0.2 -a 4)
    assert method_defaults("ttm") == {"ce_weight": 1.0, "weight": 45.0, "exponent": 0.1,
                                      "standardize": False, "ctkd": False}
    assert method_defaults("wttm") == {"ce_weight": 1.0, "weight": 4.0, "exponent": 0.2,
                                       "standardize": False, "ctkd": False}
    for name in ("mlkd", "ctkd", "ttm", "wttm"):
        method = kdzoo.methods.get_method_class(name)
        assert method.paper and method.url.startswith("https://github.com/")


@pytest.mark.parametrize("name,params,words", [
    ("mlkd", {"protocol": "strong"}, "protocol"),
    ("mlkd", {"temperature": 0.0}, "temperature"),
    ("ctkd", {"decay_loops": 0}, "decay_loops"),
    ("ctkd", {"t_start": 0.0}, "t_start"),
    ("ttm", {"exponent": -0.1}, "exponent"),
    ("wttm", {"exponent": 0.0}, "exponent"),
])
def test_bad_hyper_parameters_are_refused_in_one_line(name, params, words):
    with pytest.raises(ConfigError) as caught:
        method_params(name, params).to_dict()
    assert words in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------ MLKD masks
@pytest.mark.parametrize("batch", [7, 8, 1])
def test_masks_equal_numpy_percentile(batch):
    t = logits(1, batch=batch).float()
    t[1 % batch] = t[0]  # a tie
    mask, class_mask = confidence_masks(t)
    prediction = F.softmax(t, dim=1)
    confidence = prediction.max(dim=1).values.numpy()
    assert mask.tolist() == list(confidence <= np.percentile(confidence, 50))
    class_confidence = prediction.sum(dim=0).numpy()
    assert class_mask.tolist() == list(class_confidence <= np.percentile(class_confidence, 50))
    assert mask.sum() >= (batch + 1) // 2


# ------------------------------------------------------------------------------- MLKD terms
def reference_mlkd(sw, ss, tw, ts, labels, T=4.0, ce_w=0.1, kd_w=0.9):
    """The authors' forward_train, rewritten: the four returned losses."""
    def kd(a, b, temp):
        return (F.kl_div(F.log_softmax(a / temp, 1), F.softmax(b / temp, 1), reduction="none")
                .sum(1).mean() * temp ** 2)

    def cc(a, b, temp):
        pa, pb = F.softmax(a / temp, 1), F.softmax(b / temp, 1)
        return ((pb.T @ pb - pa.T @ pa) ** 2).sum() / a.shape[1]

    def bc(a, b, temp):
        pa, pb = F.softmax(a / temp, 1), F.softmax(b / temp, 1)
        return ((pb @ pb.T - pa @ pa.T) ** 2).sum() / a.shape[0]

    prediction = F.softmax(tw, dim=1)
    confidence = prediction.max(1).values.numpy()
    mask = torch.from_numpy(confidence <= np.percentile(confidence, 50))
    class_confidence = prediction.sum(0).numpy()
    class_mask = torch.from_numpy(class_confidence <= np.percentile(class_confidence, 50))
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    ce = ce_w * (F.cross_entropy(sw, labels) + F.cross_entropy(ss, labels))
    kd_weak = sum(kd_w * (kd(sw, tw, x) * mask).mean() for x in temps)
    kd_strong = (sum(kd_w * kd(ss, ts, x) for x in temps[:3])
                 + sum(kd_w * kd(sw, tw, x) for x in temps[3:]))
    cc_weak = sum(kd_w * (cc(sw, tw, x) * class_mask).mean() for x in temps)
    bc_weak = sum(kd_w * (bc(sw, tw, x) * mask).mean() for x in temps)
    return {"ce": ce, "kd": kd_weak + kd_strong, "cc": cc_weak, "bc": bc_weak,
            "kd_weak": kd_weak, "kd_strong": kd_strong}


def test_standard_protocol_is_the_reference_loss_with_strong_equal_to_weak():
    method = create_method("mlkd", context(), protocol="standard").double()
    assert method.views == ()
    sw, tw = logits(2), logits(3)
    labels = torch.arange(8) % NUM_CLASSES
    terms = method(by_role(sw, tw), make_step(labels=labels, ce_weight=0.1))
    assert set(terms) == {"second_ce", "kd_masked", "kd_unmasked", "cc", "bc"}
    expected = reference_mlkd(sw, sw, tw, tw, labels)
    loop_ce = 0.1 * F.cross_entropy(sw, labels)  # the loop's "ce"
    assert (loop_ce + terms["second_ce"]).item() == pytest.approx(expected["ce"].item(),
                                                                  rel=1e-12)
    assert (terms["kd_masked"] + terms["kd_unmasked"]).item() == pytest.approx(
        expected["kd"].item(), rel=1e-12)
    assert terms["cc"].item() == pytest.approx(expected["cc"].item(), rel=1e-12)
    assert terms["bc"].item() == pytest.approx(expected["bc"].item(), rel=1e-12)
    # How the terms read with one view (the docstring's account)
    mask, class_mask = confidence_masks(tw)
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    kd_sum = sum(soft_target(sw, tw, x) for x in temps)
    assert terms["kd_unmasked"].item() == pytest.approx(0.9 * kd_sum.item(), rel=1e-12)
    assert terms["kd_masked"].item() == pytest.approx(
        0.9 * mask.double().mean().item() * kd_sum.item(), rel=1e-12)
    assert terms["cc"].item() == pytest.approx(0.9 * class_mask.double().mean().item() * sum(
        class_correlation(sw, tw, x) for x in temps).item(), rel=1e-12)
    assert terms["bc"].item() == pytest.approx(0.9 * mask.double().mean().item() * sum(
        batch_correlation(sw, tw, x) for x in temps).item(), rel=1e-12)


def test_paper_protocol_runs_the_networks_on_the_strong_view():
    torch.manual_seed(0)
    method = create_method("mlkd", context(), protocol="paper").double()
    assert method.views == ("strong",)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, NUM_CLASSES)).double()
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, NUM_CLASSES)).double()
    strong = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    calls = []

    def run(role, images, input_grad):  # the step module's Step.run: the student with
        calls.append((role, images, input_grad))  # autograd, the frozen teacher without
        if role == "student":
            return Features(student(images))
        with torch.no_grad():
            return Features(teacher(images))

    sw, tw = logits(4), logits(5)
    labels = torch.arange(8) % NUM_CLASSES
    step = make_step(labels=labels, views={"strong": strong}, run=run, ce_weight=0.1)
    terms = method(by_role(sw, tw), step)
    assert set(terms) == {"strong_ce", "kd_weak", "kd_strong", "cc", "bc"}
    assert [(role, images is strong, grad) for role, images, grad in calls] == [
        ("student", True, False), ("teacher", True, False)]
    ss = student(strong)
    with torch.no_grad():
        ts = teacher(strong)
    expected = reference_mlkd(sw, ss, tw, ts, labels)
    assert (0.1 * F.cross_entropy(sw, labels) + terms["strong_ce"]).item() == pytest.approx(
        expected["ce"].item(), rel=1e-12)
    for name in ("kd_weak", "kd_strong", "cc", "bc"):
        assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-12), name
    # The strong view's last two temperatures read the weak logits, as the reference writes.
    strong_part = 0.9 * sum(soft_target(ss, ts, x) for x in (4.0, 3.0, 5.0)) + 0.9 * sum(
        soft_target(sw, tw, x) for x in (2.0, 6.0))
    assert terms["kd_strong"].item() == pytest.approx(strong_part.item(), rel=1e-12)
    terms["strong_ce"].backward()
    assert student[1].weight.grad is not None and teacher[1].weight.grad is None


def test_mlkd_standardize_applies_to_the_kd_terms_only():
    method = create_method("mlkd", context(), standardize=True, protocol="standard").double()
    sw, tw = logits(6), logits(7)
    terms = method(by_role(sw, tw), make_step(ce_weight=0.1))
    plain = create_method("mlkd", context(), protocol="standard").double()(
        by_role(sw, tw), make_step(ce_weight=0.1))
    zs = (sw - sw.mean(1, keepdim=True)) / (sw.std(1, keepdim=True) + 1e-7)
    zt = (tw - tw.mean(1, keepdim=True)) / (tw.std(1, keepdim=True) + 1e-7)
    kd_sum = sum(soft_target(zs, zt, x) for x in (4.0, 3.0, 5.0, 2.0, 6.0))
    assert terms["kd_unmasked"].item() == pytest.approx(0.9 * kd_sum.item(), rel=1e-12)
    assert terms["cc"].item() == plain["cc"].item() and terms["bc"].item() == plain["bc"].item()


def test_mlkd_with_ctkd_learns_the_base_temperature_only():
    method = create_method("mlkd", context(), ctkd=True, protocol="standard").double()
    sw, tw = logits(8), logits(9)
    terms = method(by_role(sw, tw), make_step(epoch=3, ce_weight=0.1))
    T = 1 + 20 / (1 + math.exp(-1))
    kd_sum = sum(soft_target(sw, tw, x) for x in (T, 3.0, 5.0, 2.0, 6.0))
    assert terms["kd_unmasked"].item() == pytest.approx(0.9 * kd_sum.item(), rel=1e-12)
    sum(terms.values()).backward()
    assert method.learned_temperature.global_t.grad is not None


def test_mlkd_paper_protocol_trains_in_the_loop(make_config, tmp_path):
    """The loader makes the strong view, the loop hands it over, every term is finite."""
    from kdzoo.engine import RunDir, Trainer, build

    config = make_config(method={"name": "mlkd", "protocol": "paper"},
                         data={"name": "synthetic", "train_size": 32, "test_size": 16,
                               "image_size": 16},
                         optim={"epochs": 1, "batch_size": 16})
    parts = build(config)
    trainer = Trainer(parts, RunDir.prepare(tmp_path / "steps"), progress=False)
    batch = next(parts.loader.train_batches(config.seed, 1, views=parts.method.views))
    assert batch.views["strong"].shape == batch.images.shape
    assert not torch.equal(batch.views["strong"], batch.images)
    terms, _ = trainer.step_terms(batch, parts.stages[0], 1, 0)
    assert set(terms) == {"ce", "strong_ce", "kd_weak", "kd_strong", "cc", "bc"}
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert terms["strong_ce"].item() != pytest.approx(terms["ce"].item())


def test_mlkd_paper_protocol_resumed_run_equals_uninterrupted_run(make_config, tmp_path,
                                                                  crashed_and_resumed):
    """The strong views depend only on (seed, epoch, step): a resumed run sees the same."""
    from kdzoo.engine import fit

    def config(out):
        return make_config(method={"name": "mlkd", "protocol": "paper"},
                           data={"name": "synthetic", "train_size": 32, "test_size": 16,
                                 "image_size": 16},
                           optim={"epochs": 2, "batch_size": 16}, out=str(tmp_path / out))

    whole = fit(config("whole"))
    resumed = crashed_and_resumed(config("broken"), crash_at=2)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    # The protocol is recorded with the effective hyper-parameters, and the log's term names
    # tell it too.
    assert whole.summary["hyperparameters"]["protocol"] == "paper"
    assert (whole.path / "config.yaml").read_text().count("protocol: paper") == 1


# -------------------------------------------------------------------------------- CTKD
def test_curriculum_lambda_per_epoch():
    # cosine from decay_max 0 to decay_min -1 over 10 epochs, then -1 (the reference's script)
    expected = [(math.cos(min(e, 10) * math.pi / 10) + 1) / 2 - 1 for e in range(1, 16)]
    assert [curriculum_lambda(e) for e in range(1, 16)] == pytest.approx(expected, abs=1e-15)
    assert curriculum_lambda(0) == 0.0 and curriculum_lambda(5) == pytest.approx(-0.5)
    assert curriculum_lambda(10) == -1.0 and curriculum_lambda(240) == -1.0
    # LinearDecay as written there: -i (max - min) / loops, i capped at loops - 1
    linear = [curriculum_lambda(e, 0.0, -1.0, 10, cosine=False) for e in (0, 1, 5, 9, 10, 50)]
    assert linear == pytest.approx([0.0, -0.1, -0.5, -0.9, -0.9, -0.9])


def test_curriculum_temperature_reads_optional_fields_with_ctkd_defaults():
    default = CurriculumTemperature(None)
    assert (default.t_start, default.t_end, default.cosine, default.decay_max,
            default.decay_min, default.decay_loops) == (1.0, 20.0, True, 0.0, -1.0, 10)
    assert default.value() == pytest.approx(1 + 20 / (1 + math.exp(-1)))

    class Settings:
        t_start, t_end, decay_loops, decay_min = 2.0, 5.0, 4, -0.5

    custom = CurriculumTemperature(Settings())
    assert custom.value() == pytest.approx(2 + 5 / (1 + math.exp(-1)))
    assert [custom.strength(e) for e in (2, 4, 9)] == pytest.approx(
        [(math.cos(math.pi / 2) + 1) / 2 * 0.5 - 0.5, -0.5, -0.5])
    with pytest.raises(ConfigError):
        CurriculumTemperature(type("P", (), {"decay_loops": 0})())


def plain_temperature_gradient(loss_of_temperature):
    """d loss / d p for T = 1 + 20 sigmoid(p), p = 1, without any reversal."""
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    loss_of_temperature((1 + 20 * torch.sigmoid(p)).reshape(())).backward()
    return p.grad.item()


@pytest.mark.parametrize("epoch", [1, 4, 10, 30])
def test_st_with_ctkd_gets_the_learned_temperature_and_reversed_gradients(epoch):
    method = create_method("st", context(), ctkd=True).double()
    assert "learned_temperature.global_t" in dict(method.named_parameters())
    s, t = logits(10), logits(11)
    terms = method(by_role(s, t), make_step(epoch=epoch))
    T = 1 + 20 / (1 + math.exp(-1))
    assert terms["st"].item() == pytest.approx(0.1 * soft_target(s, t, T).item(), rel=1e-12)
    terms["st"].backward()
    plain = plain_temperature_gradient(lambda x: 0.1 * soft_target(s, t, x))
    grad = method.learned_temperature.global_t.grad.item()
    assert grad == pytest.approx(curriculum_lambda(epoch) * plain, rel=1e-12)
    assert grad * plain < 0  # reversed: the temperature ascends the loss


def test_ctkd_method_is_kd_with_the_learned_temperature():
    method = create_method("ctkd", context()).double()
    s, t = logits(12), logits(13)
    s.requires_grad_()
    terms = method(by_role(s, t), make_step(epoch=2, ce_weight=0.1))
    T = 1 + 20 / (1 + math.exp(-1))
    assert set(terms) == {"ctkd"}
    assert terms["ctkd"].item() == pytest.approx(0.9 * soft_target(s, t, T).item(), rel=1e-12)
    terms["ctkd"].backward()
    plain = plain_temperature_gradient(lambda x: 0.9 * soft_target(s.detach(), t, x))
    assert method.learned_temperature.global_t.grad.item() == pytest.approx(
        curriculum_lambda(2) * plain, rel=1e-12)
    # the student's gradient is not reversed
    expected = torch.autograd.grad(0.9 * soft_target(s, t, T), s)[0]
    assert torch.allclose(s.grad, expected, rtol=1e-12, atol=0)
    assert [stage.ce_weight for stage in method.stages(Stage("main", 3))] == [0.1]


def test_ctkd_temperature_moves_up_the_loss_when_trained():
    """One SGD step on the reversed gradient raises the KD loss's temperature derivative side:
    the learned temperature moves the way that increases the loss."""
    method = create_method("ctkd", context()).double()
    s, t = logits(14), logits(15)
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0)
    before = method.learned_temperature.value()
    loss = method(by_role(s, t), make_step(epoch=10))["ctkd"]
    loss.backward()
    optimizer.step()
    after = method.learned_temperature.value()
    plain = plain_temperature_gradient(lambda x: 0.9 * soft_target(s, t, x))
    assert (after - before) * plain > 0


@pytest.mark.parametrize("method_params", [{"name": "ctkd"}, {"name": "st", "ctkd": True}])
def test_learned_temperature_resumed_run_equals_uninterrupted_run(make_config, tmp_path,
                                                                  crashed_and_resumed,
                                                                  method_params):
    from kdzoo.engine import fit

    def config(out):
        return make_config(method=method_params,
                           data={"name": "synthetic", "train_size": 32, "test_size": 16,
                                 "image_size": 16},
                           optim={"epochs": 2, "batch_size": 16}, out=str(tmp_path / out))

    whole = fit(config("whole"))
    resumed = crashed_and_resumed(config("broken"), crash_at=2)
    assert_same_state(whole.student.state_dict(), resumed.student.state_dict())
    saved = torch.load(resumed.path / "checkpoint.pt", weights_only=False)["method"]
    reference = torch.load(whole.path / "checkpoint.pt", weights_only=False)["method"]
    key = "learned_temperature.global_t"
    assert torch.equal(saved[key], reference[key])
    assert saved[key].item() != 1.0  # it was trained


# ------------------------------------------------------------------------------- TTM/WTTM
@pytest.mark.parametrize("name,fn,weight,exponent", [
    ("ttm", transformed_teacher_matching, 45.0, 0.1),
    ("wttm", weighted_transformed_teacher_matching, 4.0, 0.2)])
def test_ttm_terms_equal_the_functional(name, fn, weight, exponent):
    method = create_method(name, context()).double()
    s, t = logits(16), logits(17)
    terms = method(by_role(s, t), make_step())
    assert set(terms) == {name}
    assert terms[name].item() == pytest.approx(weight * fn(s, t, exponent).item(), rel=1e-12)
    assert [stage.ce_weight for stage in method.stages(Stage("main", 3))] == [1.0]
    # ctkd: the exponent is 1/T of the learned temperature
    learned = create_method(name, context(), ctkd=True).double()
    T = 1 + 20 / (1 + math.exp(-1))
    value = learned(by_role(s, t), make_step())[name]
    assert value.item() == pytest.approx(weight * fn(s, t, 1 / T).item(), rel=1e-12)
    # standardize: z-scores before the softmaxes
    z = lambda x: (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)
    standard = create_method(name, context(), standardize=True).double()
    value = standard(by_role(s, t), make_step())[name]
    assert value.item() == pytest.approx(weight * fn(z(s), z(t), exponent).item(), rel=1e-12)


# --------------------------------------------------------------------- the strong view
def pil_reference(image, name, value):
    """MLKD's operation ``name`` with Pillow, as its dataset code calls it."""
    from PIL import Image, ImageEnhance, ImageOps

    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(value)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Identity":
        return image
    if name == "Posterize":
        return ImageOps.posterize(image, max(1, int(value)))
    if name == "Rotate":
        return image.rotate(value)
    if name == "Solarize":
        return ImageOps.solarize(image, value)
    w, h = image.size
    matrix = {"ShearX": (1, value, 0, 0, 1, 0), "ShearY": (1, 0, 0, value, 1, 0),
              "TranslateX": (1, 0, value * w, 0, 1, 0),
              "TranslateY": (1, 0, 0, 0, 1, value * h)}[name]
    return image.transform(image.size, Image.AFFINE, matrix)


def to_pil(image):
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if image.shape[0] == 1 else array)


def from_pil(image):
    array = np.array(image)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", R.MLKD_OPS)
def test_each_operation_equals_pillow(name, channels):
    pytest.importorskip("PIL")
    gen = torch.Generator().manual_seed(R.MLKD_OPS.index(name))
    images = torch.randint(0, 256, (10, channels, 12, 12), generator=gen, dtype=torch.uint8)
    images[:4] = images[:4] // 8 + 100  # low contrast
    images[4] = 7  # flat
    images[5, :, :6] = 0  # two levels
    images[5, :, 6:] = 200
    low, high = R.MLKD_RANGES[name]
    values = low + (high - low) * torch.rand(10, generator=gen, dtype=torch.float64)
    out = R.mlkd_op(name, images, values)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(10):
        expected = from_pil(pil_reference(to_pil(images[i]), name, float(values[i])))
        assert torch.equal(out[i], expected), (name, i)


def test_cutout_equals_pillow_rectangle():
    pytest.importorskip("PIL")
    from PIL import ImageDraw

    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=gen, dtype=torch.uint8)
    draws = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    draws[0, 0], draws[1, 1:] = 0.0, 0.0
    out = R.cutout(images, draws)
    for i in range(40):
        image = to_pil(images[i])
        w, h = image.size
        v = float(draws[i, 0]) * 0.5
        if v > 0:
            v *= w
            x0 = int(max(0, w + (1.0 - w) * float(draws[i, 1]) - v / 2.0))
            y0 = int(max(0, h + (1.0 - h) * float(draws[i, 2]) - v / 2.0))
            ImageDraw.Draw(image).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)),
                                            R.CUTOUT_COLOR)
        assert torch.equal(out[i], from_pil(image)), i


def test_rand_augment_is_deterministic_keeps_shape_dtype_and_composes_the_plan():
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    first = R.rand_augment(images, torch.Generator().manual_seed(5))
    again = R.rand_augment(images, torch.Generator().manual_seed(5))
    other = R.rand_augment(images, torch.Generator().manual_seed(6))
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    plan = R.mlkd_plan(16, torch.Generator().manual_seed(5), 2)
    manual = images
    for k in range(2):
        manual = torch.stack([R.mlkd_op(R.MLKD_OPS[int(plan.ops[i, k])], manual[i:i + 1],
                                        plan.values[i, k:k + 1])[0] for i in range(16)])
    assert torch.equal(first, R.cutout(manual, plan.cutout))
    single = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert R.rand_augment(single, torch.Generator().manual_seed(1)).shape == single.shape
    with pytest.raises(ValueError):
        R.rand_augment(images.float(), torch.Generator())


def test_every_operation_is_reachable_with_values_in_range():
    plan = R.mlkd_plan(600, torch.Generator().manual_seed(0), 2)
    assert set(plan.ops.flatten().tolist()) == set(range(len(R.MLKD_OPS)))
    for index, name in enumerate(R.MLKD_OPS):
        low, high = R.MLKD_RANGES[name]
        chosen = plan.values[plan.ops == index]
        assert (chosen >= low).all() and (chosen <= high).all(), name
    assert ((plan.cutout >= 0) & (plan.cutout < 1)).all()
