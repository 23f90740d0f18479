"""Issue 5: the fast path computes what the plain path computes; the teacher cache serves
exactly the teacher's outputs for each augmented view."""
import pytest
import torch

import kdzoo
from kdzoo.models import Features
from kdzoo.engine import RunDir, Trainer, build, fit, read_metrics
from kdzoo.engine.cache import TeacherCache, ViewSpace, fill_cache
from kdzoo.engine.teacher import TeacherRunner, fold_batchnorm, foldable_pairs
from kdzoo.models import FeatureRequest
from kdzoo.errors import ConfigError

from feature_points import point_features, points_of


def trained_looking_teacher(path, name="resnet8", seed=0):
    """A teacher file whose BatchNorms hold non-trivial statistics (folding must matter)."""
    torch.manual_seed(seed)
    teacher = kdzoo.create_model(name, num_classes=10)
    with torch.no_grad():
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    kdzoo.export_model(teacher, path)
    return str(path)


class _Features(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_features(x)


def relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def test_conv_bn_pairs_and_folding():
    torch.manual_seed(0)
    model = kdzoo.create_model("resnet20").eval()
    traced = torch.fx.symbolic_trace(_Features(model))
    pairs = foldable_pairs(traced.graph, dict(traced.named_modules()))
    assert len(pairs) == 1 + 9 * 2 + 2  # stem, 2 per block, 2 projections
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        x = torch.randn(4, 3, 32, 32)
        want, got = point_features(model, x), points_of(Features.from_raw(folded(x)))
    for point in want:
        assert relative_error(got[point], want[point]) < 1e-5, point
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy


def test_chunked_runner_equals_whole_batches():
    torch.manual_seed(0)
    teacher = kdzoo.create_model("resnet8").eval().requires_grad_(False)
    images = torch.randn(70, 3, 16, 16)
    request = FeatureRequest(stages=(-2,))
    whole = points_of(TeacherRunner(teacher, request)(images))
    chunked = points_of(TeacherRunner(teacher, request, chunk=32)(images))
    every = FeatureRequest(stages="all", stem=True, pool=True, pre_pool=True).resolve(
        teacher.feature_info)
    whole_every = TeacherRunner(teacher, every)(images)
    chunked_every = TeacherRunner(teacher, every, chunk=32)(images)
    for field in ("pre_pool", "pool", "stem", "logits"):
        want, got = getattr(whole_every, field), getattr(chunked_every, field)
        assert got is not None and relative_error(got, want) < 1e-5, field
    assert set(whole) == {"stage2", "logits"}
    for point in whole:
        assert chunked[point].shape == whole[point].shape
        assert relative_error(chunked[point], whole[point]) < 1e-5, point
        assert not chunked[point].is_inference()


def test_runner_hands_over_ordinary_tensors():
    teacher = kdzoo.create_model("resnet8").eval().requires_grad_(False)
    runner = TeacherRunner(teacher, FeatureRequest.last(1), memory_format=torch.channels_last)
    feats = points_of(runner(torch.randn(2, 3, 16, 16).contiguous(
        memory_format=torch.channels_last)))
    assert set(feats) == {"stage3", "logits"}
    assert not any(t.is_inference() for t in feats.values())
    student_logits = torch.randn(2, 10, requires_grad=True)
    torch.nn.functional.mse_loss(student_logits, feats["logits"]).backward()  # may be saved


def first_step_terms(config):
    parts = build(config)
    trainer = Trainer(parts, RunDir(config.out), progress=False)
    stage = parts.stages[0]
    trainer.begin_epoch(stage, config.optim.lr)  # the loop's modes for the stage
    batch = next(parts.loader.train_batches(config.seed, 1, views=parts.method.views))
    terms, _ = trainer.step_terms(batch, stage, 1, 0)
    return {k: v.item() for k, v in terms.items()}


@pytest.mark.parametrize("method", kdzoo.list_methods())
def test_fast_path_gives_the_plain_paths_losses(make_config, tmp_path, method):
    teacher = trained_looking_teacher(tmp_path / "teacher.pt")
    common = dict(method={"name": method},
                  teacher={"name": "resnet8", "checkpoint": teacher, "untrained": False},
                  data={"name": "synthetic", "train_size": 32, "test_size": 16,
                        "image_size": 16},
                  optim={"batch_size": 16})
    plain = first_step_terms(make_config(channels_last=False, fold_teacher_bn=False, **common))
    fast = first_step_terms(make_config(channels_last=True, fold_teacher_bn=True, **common))
    assert plain.keys() == fast.keys()
    for name in plain:
        assert fast[name] == pytest.approx(plain[name], rel=2e-3, abs=1e-5), name


def test_fast_and_plain_runs_agree(make_config, tmp_path):
    teacher = trained_looking_teacher(tmp_path / "teacher.pt")
    runs = {}
    for label, fast in (("plain", False), ("fast", True)):
        config = make_config(out=str(tmp_path / label), channels_last=fast, fold_teacher_bn=fast,
                             teacher={"name": "resnet8", "checkpoint": teacher,
                                      "untrained": False})
        runs[label] = read_metrics(fit(config).path)
    for a, b in zip(runs["plain"], runs["fast"], strict=True):
        assert b["terms"]["loss"] == pytest.approx(a["terms"]["loss"], rel=1e-3)


# ------------------------------------------------------------------------ teacher cache
def test_view_numbers_round_trip():
    space = ViewSpace(pad=4, flip=True)
    assert space.size == 162
    views = torch.arange(162)
    offsets, flips = space.decode(views)
    assert torch.equal(space.index(offsets, flips), views)
    assert offsets.min() == 0 and offsets.max() == 8


def cache_setup(tmp_path):
    data = kdzoo.load_dataset("synthetic", train_size=24, test_size=8, image_size=12)
    teacher = kdzoo.create_model("resnet8", checkpoint=trained_looking_teacher(
        tmp_path / "t.pt")).eval().requires_grad_(False)
    return data, teacher


def test_cached_outputs_equal_live_outputs_for_random_views(tmp_path):
    from kdzoo.data.augment import Normalize, crop_flip

    data, teacher = cache_setup(tmp_path)
    cache = TeacherCache.for_teacher(teacher, data, tmp_path / "cache")
    runner = TeacherRunner(teacher, FeatureRequest())
    fill_cache(cache, data, lambda x: runner(x).logits, batch_size=10,
               channels_last=False)
    assert cache.filled_fraction() == 1.0
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 24, (40,), generator=gen)
    offsets = torch.randint(0, 9, (40, 2), generator=gen)
    flips = torch.rand(40, generator=gen) < 0.5
    x = Normalize(data.mean, data.std)(crop_flip(data.train_images[index], offsets, flips, 4))
    with torch.no_grad():
        live = teacher(x)
    cached, filled = cache.lookup(index, cache.views.index(offsets, flips))
    assert filled.all()
    assert torch.allclose(cached, live, rtol=2e-3, atol=2e-3)  # float16 storage
    with torch.no_grad():
        test_live = teacher(Normalize(data.mean, data.std)(data.test_images))
    assert torch.allclose(cache.test_logits(), test_live, rtol=2e-3, atol=2e-3)


def test_cache_key_depends_on_teacher_and_data(tmp_path):
    data, teacher = cache_setup(tmp_path)
    first = TeacherCache.for_teacher(teacher, data, tmp_path).folder
    other_teacher = kdzoo.create_model("resnet8", checkpoint=trained_looking_teacher(
        tmp_path / "t2.pt", seed=1))
    assert TeacherCache.for_teacher(other_teacher, data, tmp_path).folder != first
    other_data = kdzoo.load_dataset("synthetic", train_size=24, test_size=8, image_size=12,
                                    seed=1)
    assert TeacherCache.for_teacher(teacher, other_data, tmp_path).folder != first
    assert TeacherCache.for_teacher(teacher, data, tmp_path).folder == first


def cached_config(make_config, tmp_path, label, cache, **overrides):
    """Two epochs of one step each: epoch 1's terms are the first step's, before any update."""
    return make_config(out=str(tmp_path / label), teacher_cache=cache,
                       cache_dir=str(tmp_path / "cache"), optim={"epochs": 2, "batch_size": 32},
                       data={"train_size": 32},
                       teacher={"name": "resnet8", "untrained": False,
                                "checkpoint": trained_looking_teacher(tmp_path / "t.pt")},
                       **overrides)


def test_training_with_the_cache_matches_live_training(make_config, tmp_path, monkeypatch):
    live = read_metrics(fit(cached_config(make_config, tmp_path, "live", False)).path)
    filling = read_metrics(fit(cached_config(make_config, tmp_path, "fill", True)).path)
    # A second run finds every view it needs in the cache: the teacher must not run at all.
    monkeypatch.setattr(TeacherRunner, "__call__", lambda *a: pytest.fail("teacher ran"))
    reused = read_metrics(fit(cached_config(make_config, tmp_path, "reuse", True)).path)
    # The first step sees the same weights: the cached (float16) teacher logits give its
    # distillation term to float16 rounding. Later steps are not compared: float32 training
    # amplifies any rounding difference.
    assert filling[0]["terms"]["st"] == pytest.approx(live[0]["terms"]["st"], rel=5e-3)
    assert filling[0]["terms"]["st"] != live[0]["terms"]["st"]  # the cache was read
    # Filling and reusing the cache give the same float16 values: the same run, bit for bit.
    assert len(filling) == len(reused) == 2
    assert [r["terms"] for r in filling] == [r["terms"] for r in reused]


def test_cache_refused_for_feature_methods(make_config, tmp_path):
    if "at" not in kdzoo.list_methods():
        pytest.skip("needs a feature method")
    with pytest.raises(ConfigError, match="cannot be cached"):
        build(make_config(method={"name": "at"}, teacher_cache=True,
                          cache_dir=str(tmp_path)))


@pytest.mark.slow
def test_cache_teacher_command(tmp_path, capsys):
    from kdzoo.cli import main

    teacher = trained_looking_teacher(tmp_path / "t.pt")
    argv = ["cache-teacher", "--teacher", "resnet8", "--teacher-checkpoint", teacher, "--data",
            "synthetic", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert "the cache is complete" in capsys.readouterr().out
    assert main(argv) == 0
    assert "computed 0 teacher forwards" in capsys.readouterr().out


# ------------------------------------------------------------------------------- options
def test_bf16_autocast_runs_on_cpu(make_config, tmp_path):
    """bf16 autocast changes the first step's loss at bfloat16's precision (~1e-2), no more."""
    def first_loss(label, **amp):
        config = make_config(out=str(tmp_path / label), optim={"epochs": 1, "batch_size": 16},
                             data={"name": "synthetic", "train_size": 16, "test_size": 8,
                                   "image_size": 8}, **amp)
        return read_metrics(fit(config).path)[0]["terms"]["loss"]

    full, bf16 = first_loss("fp32"), first_loss("bf16", amp="bf16")
    assert bf16 == pytest.approx(full, rel=3e-2)
    assert bf16 != full


def test_fp16_needs_cuda(make_config):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        build(make_config(amp="fp16"))


@pytest.mark.slow
def test_compiled_run_matches_eager(make_config, tmp_path):
    """The first step (the same weights on both sides) computes the same loss compiled and
    eager; later steps are not compared (float32 training amplifies rounding differences)."""
    def run(label, **options):
        config = make_config(out=str(tmp_path / label), optim={"epochs": 1, "batch_size": 32},
                             data={"train_size": 32}, **options)
        return read_metrics(fit(config).path)[0]["terms"]

    eager, compiled = run("eager"), run("compiled", compile=True)
    assert eager.keys() == compiled.keys()
    for name in eager:
        assert compiled[name] == pytest.approx(eager[name], rel=1e-4), name
