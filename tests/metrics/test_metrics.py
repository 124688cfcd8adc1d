"""Metrics against hand-computed cases: a perfect map, an inverted one, a constant one.

Most cases use a toy backend whose similarity is known in closed form: the image embedding is
``[a, 1]`` with ``a`` the mean of channel 0 over the object region R (the bottom-left quadrant
of an 8x8 image; pixels are 1 there and 0 elsewhere), the text embedding ``[w, 1]`` with ``w``
the number of attended "relevant" word ids. Scored against ``[1, 0]``, the similarity is
``a / sqrt(a^2 + 1)``: ``s1 = 1/sqrt(2)`` for the intact image, 0 once R is gone.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m2ib.backends.base import Backend, Geometry, ImageBatch, TextBatch
from m2ib.metrics import (
    boxes_to_mask,
    cascading_randomization,
    confidence_change,
    deletion_insertion,
    linear_impute,
    localisation,
    road_scores,
    spearman,
    ssim,
    text_pointing,
    topk_iou,
)

S1 = 1 / math.sqrt(2)
H = W = 8
RELEVANT = (5, 6)  # word ids the toy text tower counts


@dataclass
class Toy(Backend):
    """Closed-form 'model': see the module docstring. Targets are fixed by ``embed`` of the other side."""

    def __post_init__(self) -> None:
        self.region = torch.zeros(H, W, dtype=torch.bool)
        self.region[4:, :4] = True

    @property
    def geometry(self) -> Geometry:
        return Geometry((H, W), (2, 2), 1, 2, 2, 16)

    def preprocess_images(self, images, sources=()):
        raise NotImplementedError

    def tokenize(self, texts):
        raise NotImplementedError

    def prefix(self, modality, batch, layer):
        raise NotImplementedError

    def suffix(self, modality, hidden, layer, batch):
        raise NotImplementedError

    def can_pool(self, modality, rule):  # the toy's embedding reads no pooled token, whatever the rule
        return True

    def pooling(self, modality, rule):
        return contextlib.nullcontext()

    def embed(self, modality, batch):
        if modality == "image":
            px = batch.pixel_values
            a = px[:, 0][:, self.region].mean(-1)
            return torch.stack([a, torch.ones_like(a)], -1)
        ids, mask = batch.input_ids, batch.attention_mask.bool()
        w = (torch.isin(ids, torch.tensor(RELEVANT)) & mask).float().sum(-1)
        return torch.stack([w, torch.ones_like(w)], -1)


@pytest.fixture()
def toy():
    return Toy(model=torch.nn.Linear(1, 1))


@pytest.fixture()
def pair(toy):
    pixels = torch.zeros(1, 3, H, W)
    pixels[0, 0][toy.region] = 1.0
    images = ImageBatch(pixels)
    # text "<s> a 5 b 6 </s>": relevant word ids 5 and 6; the text's own embedding is [2, 1]
    texts = TextBatch(torch.tensor([[49, 1, 5, 2, 6, 50]]), torch.ones(1, 6, dtype=torch.long), special=((0, 5),))
    return images, texts


def _target_is_unit_x(monkeypatch):
    """Score every side against [1, 0]."""
    import importlib

    def targets(backend, modality, images, texts):
        return torch.tensor([[1.0, 0.0]]).repeat(len(images), 1)

    for mod in ("common", "confidence", "deletion", "road"):
        monkeypatch.setattr(importlib.import_module(f"m2ib.metrics.{mod}"), "targets", targets)


def _maps(toy):
    perfect = toy.region.float()
    return {"perfect": perfect, "inverted": 1 - perfect, "constant": torch.full((H, W), 0.5)}


# --- confidence ---------------------------------------------------------------------------------


def test_confidence_image_mask_protocol(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    got = {
        k: confidence_change(toy, images, texts, m[None], modality="image", protocol="mask")
        for k, m in _maps(toy).items()
    }
    a_half = 0.5 / math.sqrt(0.25 + 1)
    assert got["perfect"]["drop"].item() == pytest.approx(0.0)
    assert got["perfect"]["increase"].item() == 0.0  # unchanged is not an increase
    assert got["inverted"]["drop"].item() == pytest.approx(100 * S1)  # R is gone: s_masked = 0
    assert got["constant"]["drop"].item() == pytest.approx(100 * (S1 - a_half))
    assert got["perfect"]["s"].item() == pytest.approx(S1)


def test_confidence_image_m2ib_protocol_reads_the_first_row(toy, pair, monkeypatch):
    """The reference multiplies every row by the map's first row: R (bottom rows) is erased by the
    perfect map (first row 0 over R's columns) and kept by the inverted one."""
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    maps = _maps(toy)
    perfect = confidence_change(toy, images, texts, maps["perfect"][None], modality="image", protocol="m2ib")
    inverted = confidence_change(toy, images, texts, maps["inverted"][None], modality="image", protocol="m2ib")
    assert perfect["drop"].item() == pytest.approx(100 * S1)
    assert inverted["drop"].item() == pytest.approx(0.0)


def test_confidence_increase(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    images = ImageBatch(images.pixel_values * 0.5)  # a = 0.5; a map above 1 raises it
    boosted = confidence_change(toy, images, texts, torch.full((1, H, W), 2.0), modality="image")
    assert boosted["increase"].item() == 100.0 and boosted["drop"].item() == 0.0


def test_confidence_text_both_protocols(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    s_full = 2 / math.sqrt(5)
    perfect = torch.tensor([0.0, 0.1, 0.9, 0.2, 0.8, 0.0])  # relevant words (positions 2, 4) above the median
    inverted = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.2, 0.0])
    constant = torch.full((6,), 0.5)
    for protocol in ("mask", "m2ib"):
        got = {
            name: confidence_change(toy, images, texts, [m], modality="text", protocol=protocol)
            for name, m in (("perfect", perfect), ("inverted", inverted), ("constant", constant))
        }
        assert got["perfect"]["s"].item() == pytest.approx(s_full)
        assert got["perfect"]["drop"].item() == pytest.approx(0.0)
        assert got["inverted"]["drop"].item() == pytest.approx(100 * s_full)  # w = 0
        assert got["constant"]["drop"].item() == pytest.approx(100 * s_full)  # nothing is above the median


def test_m2ib_text_protocol_matches_the_reference_computation(backend):
    """The reference: cut start/end, ids * (map > median), get_text_features with no mask, pooled
    at the largest id (old transformers); here written out with the model's own modules."""
    images = ImageBatch(torch.randn(1, 3, 48, 48))
    texts = backend.tokenize(["a red circle and a blue star"])
    n = int(texts.lengths[0])
    tmap = torch.linspace(0, 1, n).flip(0)
    got = confidence_change(backend, images, texts, [tmap], modality="text", protocol="m2ib")
    model = backend.model
    with torch.no_grad():
        image = F.normalize(
            model.visual_projection(model.vision_model(pixel_values=images.pixel_values).pooler_output), dim=-1
        )

        def features(ids):
            hidden = model.text_model(input_ids=ids[None]).last_hidden_state[0]
            pooled = hidden[int(ids.argmax())]
            return F.normalize(model.text_projection(pooled), dim=-1)

        cut = texts.input_ids[0, 1 : n - 1]
        m = tmap[1 : n - 1]
        keep = m > torch.quantile(m, 0.5)
        s = float(features(cut) @ image[0])
        s_masked = float(features(cut * keep) @ image[0])
    assert got["s"].item() == pytest.approx(s, abs=1e-5)
    assert got["s_masked"].item() == pytest.approx(s_masked, abs=1e-5)
    assert got["drop"].item() == pytest.approx(max(0.0, s - s_masked) * 100, abs=1e-3)
    assert backend.pooled_positions("text", texts).tolist() == [n - 1]  # the end token again: restored


def test_argmax_pooling_is_restored(backend):
    ids = backend.tokenize(["a red circle"])
    before = backend.pooled_positions("text", ids).tolist()
    with backend.pooling("text", "argmax"):
        assert backend.pooled_positions("text", ids).tolist() == ids.input_ids.argmax(-1).tolist()
    assert backend.pooled_positions("text", ids).tolist() == before


# --- deletion / insertion -------------------------------------------------------------------


def test_deletion_insertion(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    maps = _maps(toy)
    perfect = deletion_insertion(toy, images, texts, maps["perfect"][None], modality="image", steps=4)
    inverted = deletion_insertion(toy, images, texts, maps["inverted"][None], modality="image", steps=4)
    assert perfect["deletion"][0].tolist() == pytest.approx([S1, 0, 0, 0, 0], abs=1e-6)
    assert perfect["deletion_auc"].item() == pytest.approx(S1 / 8)
    assert inverted["deletion"][0].tolist() == pytest.approx([S1, S1, S1, S1, 0], abs=1e-6)
    assert inverted["deletion_auc"].item() == pytest.approx(0.875 * S1)
    from m2ib.metrics import gaussian_blur

    a_blur = float(gaussian_blur(images.pixel_values, 5 * H / 224)[0, 0][toy.region].mean())
    s_blur = a_blur / math.sqrt(a_blur**2 + 1)
    assert perfect["insertion"][0].tolist() == pytest.approx([s_blur, S1, S1, S1, S1], abs=1e-6)
    assert perfect["insertion_auc"].item() == pytest.approx(0.125 * (s_blur + S1) + 0.75 * S1, abs=1e-6)
    constant = deletion_insertion(toy, images, texts, maps["constant"][None], modality="image", steps=4, seeds=[3])
    again = deletion_insertion(toy, images, texts, maps["constant"][None], modality="image", steps=4, seeds=[3])
    assert perfect["deletion_auc"] < constant["deletion_auc"] < inverted["deletion_auc"]
    assert torch.equal(constant["deletion"], again["deletion"])  # ties broken by the seed


def test_text_deletion(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    s2, s1 = 2 / math.sqrt(5), S1
    perfect = deletion_insertion(
        toy, images, texts, [torch.tensor([0, 0.1, 0.9, 0.2, 0.8, 0])], modality="text", steps=4
    )
    # 4 words ranked 5, 6, a, b: deleting 0..4 of them leaves w = 2, 1, 0, 0, 0
    assert perfect["deletion_auc"].item() == pytest.approx(0.25 * ((s2 + s1) / 2 + s1 / 2))
    assert perfect["insertion_auc"].item() == pytest.approx(0.25 * (s1 / 2 + (s1 + s2) / 2 + 2 * s2))


# --- ROAD -------------------------------------------------------------------------------------


def test_linear_impute_hand_case():
    img = torch.zeros(1, 3, 3)
    img[0, 0, :] = 1.0  # top row 1, the rest 0
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[1, 1] = True
    out = linear_impute(img, removed, noise=0.0)
    # weights: 3 top neighbours (1/12 + 1/6 + 1/12 = 1/3) have value 1, the others 0; all 8 inside
    assert out[0, 1, 1].item() == pytest.approx(1 / 3)
    assert torch.equal(out[0][~removed], img[0][~removed])
    everything = linear_impute(img, torch.ones(3, 3, dtype=torch.bool), noise=0.0)
    assert torch.equal(everything, torch.zeros_like(img))


def test_road(toy, pair, monkeypatch):
    _target_is_unit_x(monkeypatch)
    images, texts = pair
    maps = _maps(toy)
    p = (30, 50, 70)  # remove 70, 50, 30 %: always more than R's 25 %, never more than the rest's 75 %
    perfect = road_scores(toy, images, texts, maps["perfect"][None], percentiles=p, noise=0.0)
    inverted = road_scores(toy, images, texts, maps["inverted"][None], percentiles=p, noise=0.0)
    assert perfect["morf"].item() == pytest.approx(-S1, abs=1e-6)
    assert perfect["lerf"].item() == pytest.approx(0.0, abs=1e-6)
    assert perfect["combined"].item() == pytest.approx(S1 / 2, abs=1e-6)
    assert inverted["morf"].item() == pytest.approx(0.0, abs=1e-6)
    assert inverted["lerf"].item() == pytest.approx(-S1, abs=1e-6)
    constant = road_scores(toy, images, texts, maps["constant"][None], percentiles=p, noise=0.0, seeds=[1])
    assert inverted["combined"] < constant["combined"] < perfect["combined"]


# --- localisation -----------------------------------------------------------------------------


def test_localisation_hand_cases():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:6] = True  # 8 pixels = 1/8 of the image
    perfect = mask.float()
    inverted = 1 - perfect
    constant = torch.full((8, 8), 0.3)
    got = localisation(torch.stack([perfect, inverted, constant]), mask.expand(3, 8, 8))
    assert got["pointing"].tolist() == [1.0, 0.0, 0.0]  # a constant map points at (0, 0)
    assert got["energy"].tolist() == pytest.approx([1.0, 0.0, 1 / 8])
    assert got["iou"][:2].tolist() == [1.0, 0.0]
    assert topk_iou(constant, mask, k=1.0) == pytest.approx(1 / 8)  # top 100 % = every pixel
    assert topk_iou(perfect, mask, k=0.25) == pytest.approx(8 / 16)


def test_boxes_to_mask_and_text_pointing():
    m = boxes_to_mask([(1, 2, 3, 1)], (5, 6))
    assert m.sum() == 3 and m[2, 1:4].all()
    assert text_pointing(torch.tensor([0.9, 0.1, 0.8, 0.2, 1.0]), words=[1, 2, 3], relevant=[2]) == 1.0
    assert text_pointing(torch.tensor([0.9, 0.1, 0.2, 0.8, 1.0]), words=[1, 2, 3], relevant=[2]) == 0.0


# --- sanity -----------------------------------------------------------------------------------


def test_spearman_and_ssim_hand_cases():
    a = torch.arange(64, dtype=torch.float32).reshape(8, 8) / 63
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, 1 - a) == pytest.approx(-1.0)
    assert spearman(a, torch.full_like(a, 0.5)) == 0.0
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(0.9486833, abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 0
    assert ssim(torch.full_like(a, 0.5), torch.full_like(a, 0.5)) == pytest.approx(1.0)


def test_cascading_randomization_leaves_the_model_alone(backend):
    images = ImageBatch(torch.randn(1, 3, 48, 48))
    texts = backend.tokenize(["a red circle"])
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    got = cascading_randomization(backend, images, texts, method="gradcam", modality="image")
    assert got["labels"] == ["head", "block 2", "block 1", "block 0", "embeddings"]
    assert got["spearman"].shape == (1, 5) and got["ssim"].shape == (1, 5)
    assert all(torch.equal(v, backend.model.state_dict()[k]) for k, v in before.items())
    text = cascading_randomization(backend, images, texts, method="saliency", modality="text", steps=2)
    assert text["labels"] == ["head", "embeddings"] and text["ssim"] is None


def test_the_randomised_copy_never_reuses_the_trained_models_m2ib_fits(backend):
    """M2IB's captured loops (CUDA graphs replay the weights they were captured on) are kept per
    backend object by the method layer: the sanity check's randomised copy starts with none of the
    trained model's, and a backend's go when it is collected (a cached fit does not keep it alive)."""
    import dataclasses
    import gc

    from m2ib.methods.m2ib import FITS, BottleneckFit, M2IBSettings
    from m2ib.metrics.sanity import randomised_cascade

    FITS(backend)["key"] = "the trained model's fit"
    for _, randomised in randomised_cascade(backend, "image", steps=2):
        assert "key" not in FITS(randomised)
    assert FITS(backend) == {"key": "the trained model's fit"}
    live = len(FITS)
    other = dataclasses.replace(backend)
    settings = M2IBSettings(steps=1, samples=1)
    FITS(other)["key"] = BottleneckFit(
        other, "image", ImageBatch(torch.rand(1, 3, 48, 48)), 0, 0.1, settings, 1, 4, 8, graph=False
    )
    assert len(FITS) == live + 1 and FITS(backend)["key"] == "the trained model's fit"
    del other
    gc.collect()
    assert len(FITS) == live


# --- ROAR+ ------------------------------------------------------------------------------------


def test_roar_degrade_and_retrain():
    from m2ib.metrics.roar import RoarBudget, degrade, retrain_accuracy, retrain_config, roar_scenes

    images, labels, prompts = roar_scenes(64, 6, "train")
    assert images.shape == (6, 3, 64, 64) and len(prompts) == 30
    assert torch.equal(degrade(images, torch.rand(6, 64, 64), 0, seed=0), images)
    ramp = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64).expand(6, 64, 64)
    out = degrade(images, ramp, 25, seed=0)
    changed = (out != images).any(1)  # only the top 25 % (the last 16 rows) may change
    assert not changed[:, :48].any()
    config = retrain_config(64, RoarBudget("test", 6, 4, (50,), steps=2, batch_size=4), seed=0)
    acc = retrain_accuracy(images, labels, images[:4], labels[:4], prompts, config)
    assert 0.0 <= acc <= 1.0


def test_roar_resumes_from_cached_map_chunks(tmp_path, monkeypatch):
    """Stopped while computing a method's maps, ROAR+ keeps the finished chunks on disk; the re-run
    computes only the rest, gives the records of an uninterrupted run, and removes the cache."""
    import dataclasses

    from conftest import SMALL

    import m2ib
    from m2ib.metrics import roar as R
    from m2ib.models import random_clip

    model, tokenizer = random_clip(dataclasses.replace(SMALL, image_size=64, patch_size=16), seed=1)
    backend = m2ib.load(model, tokenizer=tokenizer)  # shapes scenes are at least 64 px

    budget = R.RoarBudget("test", train=40, test=8, ks=(50,), steps=2, batch_size=4)
    monkeypatch.setattr(R, "MAP_CHUNK", 16)
    # chunked maps equal one call on every scene (per-pair seeds)
    images, labels, prompts = R.roar_scenes(64, 40, "train")
    fast = {"steps": 2, "samples": 2}
    assert torch.allclose(
        R.cached_maps(backend, "m2ib", images, labels, prompts, fast, 3, None, "train"),
        R.method_maps(backend, "m2ib", images, labels, prompts, fast, 3),
        atol=1e-6,
    )

    calls: list[int] = []
    real = R.method_maps
    monkeypatch.setattr(R, "method_maps", lambda b, m, x, *a: calls.append(x.shape[0]) or real(b, m, x, *a))
    polls = iter(range(100))  # stop() is asked before "none", before "saliency", before each chunk
    cache = tmp_path / "maps"
    first = R.roar(backend, ["saliency"], budget=budget, cache=cache, stop=lambda: next(polls) >= 4)
    assert [(r["method"], r["k"]) for r in first] == [("none", 0)]
    assert calls == [16, 16] and len(list(cache.glob("saliency-train-*.pt"))) == 2
    finished = {("none", 0)}
    second = R.roar(backend, ["saliency"], budget=budget, cache=cache, done=lambda m, k: (m, k) in finished)
    assert calls == [16, 16, 8, 8, 40, 8]  # the rest of train, test, then the random control (uncached)
    assert not cache.exists()
    whole = R.roar(backend, ["saliency"], budget=budget)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(first + second) == strip(whole)


# ----------------------------------------------------------------------------------------------
# Metric options: each metric's settings fields become evaluate's flags and the run's record.
# ----------------------------------------------------------------------------------------------
def _metric_options():
    from m2ib.metrics import REGISTRY
    from m2ib.settings import fields_of

    return [(name, f.name) for name, cls in REGISTRY.items() for f in fields_of(cls.Settings)]


def _evaluate_args(*flags):
    from m2ib.cli import build_parser

    return build_parser().parse_args(["evaluate", "--data", "shapes:test:2", "--out", "o", *flags])


def _non_default(field):
    """A value of a metric option other than its default (a list: its first item, or the other choice)."""
    if field.many:
        others = [c for c in field.choices or () if c not in field.default]
        return field.default[1:] if not others else (others[0],)
    if field.choices:
        return next(c for c in field.choices if c != field.default)
    return {int: 3, float: 0.5}[field.kind]


@pytest.mark.parametrize("metric,option", _metric_options())
def test_every_metric_option_round_trips_through_its_flags(metric, option):
    """--METRIC-OPTION and --metric-setting METRIC.OPTION=VALUE both reach the metric's settings, unchanged."""
    from m2ib.cli.evaluate import chosen_metrics
    from m2ib.metrics import REGISTRY
    from m2ib.settings import fields_of, owned_flags

    cls = REGISTRY[metric]
    field = next(f for f in fields_of(cls.Settings) if f.name == option)
    value = _non_default(field)
    expected = cls.Settings(**{option: value})
    assert expected != cls.Settings()
    for flag in owned_flags(metric, field):
        assert chosen_metrics(_evaluate_args("--metrics", metric, flag, field.format(value)))[metric] == expected
    assigned = _evaluate_args("--metrics", metric, "--metric-setting", f"{metric}.{option}={field.format(value)}")
    assert chosen_metrics(assigned)[metric] == expected
    assert cls(expected).settings is expected  # what measure reads as self.settings


def test_metric_flags_keep_their_names_and_the_record_its_keys():
    """Today's commands keep working (--protocols, --iou-k, --deletion-steps, ...), and the options are
    recorded under the keys earlier runs recorded, so their folders still resume."""
    from m2ib.cli.evaluate import chosen_metrics
    from m2ib.metrics import metrics_record

    args = _evaluate_args(
        "--metrics",
        "confidence,deletion,road,localisation,sanity,roar",
        "--protocols",
        "mask",
        "--deletion-steps",
        "4",
        "--road-percentiles",
        "10,50,90",
        "--road-noise",
        "0",
        "--iou-k",
        "0.25",
        "--sanity-steps",
        "3",
        "--roar-budget",
        "small",
    )
    record = metrics_record(chosen_metrics(args))
    definitions, budget = record.pop("protocol_definitions"), record.pop("roar")
    assert record == {
        "names": ["confidence", "deletion", "road", "localisation", "sanity", "roar"],
        "protocols": ["mask"],
        "deletion_steps": 4,
        "road_percentiles": [10, 50, 90],
        "road_noise": 0.0,
        "iou_k": 0.25,
        "sanity_steps": 3,
        "roar_budget": "small",
    }
    assert set(definitions) == {"m2ib", "mask"} and budget["name"] == "small"
    defaults = metrics_record(chosen_metrics(_evaluate_args()))  # the default metrics, default options
    assert defaults["names"] == ["confidence", "deletion", "road", "localisation"]
    assert {k: defaults[k] for k in ("protocols", "deletion_steps", "road_percentiles", "road_noise", "iou_k")} == {
        "protocols": ["m2ib", "mask"],
        "deletion_steps": 20,
        "road_percentiles": [10, 20, 30, 40, 50, 60, 70, 80, 90],
        "road_noise": 0.01,
        "iou_k": None,
    }


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--deletion-steps", "0"], "deletion_steps=0 must be a positive integer"),
        (["--deletion-steps", "2.5"], "deletion_steps='2.5' must be a whole number"),
        (["--road-percentiles", "10,,20"], "road_percentiles='10,,20' has an empty item"),
        (["--road-percentiles", "10,x"], "road_percentiles='x' must be a whole number"),
        (["--road-percentiles", "10,120"], "road_percentiles='10,120': give percentiles in 0..100"),
        (["--road-noise", "-1"], "road_noise=-1.0 must be a number >= 0"),
        (["--protocols", "mask,exact"], "protocols='exact': use one of m2ib, mask"),
        (["--protocols", ""], "protocols is empty"),
        (["--iou-k", "2"], "iou_k=2.0 must be a share in (0, 1]"),
        (["--metrics", "sanity", "--sanity-steps", "0"], "sanity_steps=0 must be a positive integer"),
        (["--metrics", "roar", "--roar-budget", "huge"], "roar_budget='huge': use one of tiny, small, full"),
        (["--sanity-steps", "3"], "--sanity-steps is an option of metric sanity, which --metrics does not choose"),
        (["--metric-setting", "deletion.stride=2"], "deletion has no setting 'stride' (it has steps)"),
        (["--metric-setting", "speed.x=2"], "use METRIC.NAME=VALUE with METRIC one of confidence"),
        (["--metrics", "confidence,speed"], "unknown metric 'speed'"),
    ],
)
def test_bad_metric_options_are_one_line_naming_the_option(flags, message):
    from m2ib.cli.evaluate import chosen_metrics
    from m2ib.errors import InputError

    with pytest.raises(InputError) as caught:
        chosen_metrics(_evaluate_args(*flags))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_new_metric_option_is_one_field(registered):
    """A metric's option is one settings field: its flag, its check, its place in the record and in the
    resume check follow, with nothing else to touch; a flag another option holds is one error line."""
    import dataclasses

    from m2ib.cli.evaluate import chosen_metrics
    from m2ib.errors import InputError
    from m2ib.evaluation.provenance import check_same_run
    from m2ib.metrics import REGISTRY, Key, Metric, MetricSettings, metrics_record
    from m2ib.settings import setting

    @dataclasses.dataclass(frozen=True)
    class SpreadSettings(MetricSettings):
        radius: int = setting(2, "pixels around the maximum")
        sides: tuple[int, ...] = setting((1, 2), "a list option")

    class Spread(Metric):
        name, title, keys, Settings = "map-spread", "Spread", (Key("image_map_spread", "lower"),), SpreadSettings

    registered(REGISTRY, Spread)
    args = _evaluate_args("--metrics", "map-spread", "--map-spread-radius", "5", "--map-spread-sides", "3,4")
    chosen = chosen_metrics(args)
    assert chosen == {"map-spread": SpreadSettings(radius=5, sides=(3, 4))}
    assert metrics_record(chosen) == {"names": ["map-spread"], "map_spread_radius": 5, "map_spread_sides": [3, 4]}
    with pytest.raises(InputError, match="map_spread_radius='far' must be a whole number"):
        chosen_metrics(_evaluate_args("--metrics", "map-spread", "--map-spread-radius", "far"))

    header = {"format": 1, "metrics": metrics_record(chosen)}
    check_same_run(header, dict(header), Path("results.jsonl"))  # the same options: it resumes
    other = {**header, "metrics": metrics_record({"map-spread": {"radius": 4, "sides": (3, 4)}})}
    with pytest.raises(InputError, match="other metrics"):
        check_same_run(header, other, Path("results.jsonl"))

    class Clash(Metric):  # its option's flag would be --ray-actors, a flag of evaluate's own
        name, title, keys = "ray", "Clash", ()
        Settings = dataclasses.make_dataclass(
            "RaySettings", [("actors", int, setting(1, "x"))], bases=(MetricSettings,), frozen=True
        )

    registered(REGISTRY, Clash)
    with pytest.raises(InputError, match="ray's setting 'actors': argument --ray-actors: conflicting option string"):
        _evaluate_args()


def test_metrics_measure_with_their_own_options(toy, pair, monkeypatch):
    """A metric object measures with its settings: the protocols, the curve's steps, ROAD's percentiles
    and noise, the IoU's k (hand cases of the toy backend, as above)."""
    from m2ib.metrics import REGISTRY, MethodRun, PairBatch

    _target_is_unit_x(monkeypatch)
    images, texts = pair
    batch = PairBatch(toy, [None], images, texts, seed=0, pair_seeds=[0], masks=[toy.region])
    perfect, run = _maps(toy)["perfect"][None], MethodRun("m", {}, [])

    def measure(name, **options):
        cls = REGISTRY[name]
        return cls(cls.make_settings(**options)).measure(batch, run, "image", perfect)

    assert list(measure("confidence", protocols=("mask",)).values[0]) == ["image_drop_mask", "image_increase_mask"]
    assert measure("deletion", steps=4).curves[0]["image_deletion"] == pytest.approx([S1, 0, 0, 0, 0], abs=1e-6)
    assert len(measure("deletion", steps=2).curves[0]["image_deletion"]) == 3
    road = measure("road", percentiles=(30, 50, 70), noise=0.0)
    assert road.values[0]["image_road_morf"] == pytest.approx(-S1, abs=1e-6)
    assert len(road.curves[0]["image_road_morf"]) == 3
    assert measure("road", percentiles=(30,), noise=0.5).values[0]["image_road_morf"] != pytest.approx(-S1, abs=1e-3)
    assert measure("localisation").values[0]["image_iou"] == pytest.approx(1.0)  # k: the mask's own 25 %
    assert measure("localisation", iou_k=0.5).values[0]["image_iou"] == pytest.approx(0.5)
