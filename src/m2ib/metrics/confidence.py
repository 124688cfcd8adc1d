"""Confidence Drop and Confidence Increase (Chattopadhyay et al.'s Grad-CAM++ metrics, as
pytorch-grad-cam defines them), with the target score of M2IB's evaluation.

For a pair, ``s`` is the cosine similarity of the explained side's embedding with the other
side's (fixed, unperturbed) embedding, and ``s_masked`` the same after the explained input
was perturbed with its attribution map:

* **Confidence Drop** = ``max(0, s - s_masked) * 100`` per pair, averaged over pairs.
  **Lower is better**: keeping what the map marks keeps the match.
* **Confidence Increase** = ``100 * [s_masked > s]`` per pair, i.e. the share of pairs (in %)
  whose similarity went *up*. **Higher is better**.

Two protocols, both reported (``PROTOCOLS``):

``"mask"`` (corrected)
    Image: the normalised pixels times the min-max map (``pixels * map``, pytorch-grad-cam's
    ``multiply_tensor_with_cam``): a pixel fades to the mean colour (0 after normalising) as
    its score goes to 0. Text: the word tokens (start and end tokens excluded) are binarised
    at the median of their scores (kept iff ``score > median``); the others are removed
    through the attention mask. Start and end tokens stay, so the model pools its usual end
    token; positions are not renumbered. ``s`` is the pair's own similarity.

``"m2ib"`` (the public reference's ``scripts/eval.py``, reproduced exactly, defects included)
    Image: the reference passes its [224, 224] map as pytorch-grad-cam 1.4.6's batch of cams,
    and the metric reads ``cams[i]`` for image ``i``: the map's *first row* [W]. So every
    pixel ``(c, y, x)`` is multiplied by ``map[0, x]``, the top row broadcast down the image,
    not by ``map[y, x]``. We do the same.
    Text: the first and last token (start and end) are cut from the ids and from the map; the
    map is binarised at its median (``> np.percentile(map, 50)``); the ids are multiplied by
    that mask, so dropped tokens become id 0 (``!`` in CLIP's vocabulary, a real token), and
    the ids are re-encoded with no attention mask. The reference's transformers pooled the
    position of the *largest id*; with the end token cut, that is whichever kept word has the
    largest vocabulary id, and its position moves whenever that word is dropped. ``s`` is
    computed the same way on the cut ids (not the pair's own similarity). We force that
    pooling (backends whose text tower cannot pool at the largest id refuse this protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..settings import setting
from .base import Key, Measured, MethodRun, Metric, MetricSettings, PairBatch, Table, modality_of, register
from .common import cosine, image_maps, scoring, targets, text_maps, unit_embeddings, word_positions

PROTOCOLS = ("m2ib", "mask")


def confidence_change(
    backend: Backend,
    images: ImageBatch,
    texts: TextBatch,
    maps: torch.Tensor | Sequence[torch.Tensor],
    *,
    modality: Modality,
    protocol: str = "mask",
) -> dict[str, torch.Tensor]:
    """Confidence Drop and Increase of ``modality``'s maps for pairs ``(images[i], texts[i])``.

    Args:
        backend: the model (``m2ib.load(...)``).
        images, texts: N preprocessed images and N tokenised texts (pair ``i`` is
            ``images[i]`` with ``texts[i]``).
        maps: image side: [N, H, W] (or a list of [H, W]) min-max maps at the model's input size
            (``Explanation.image_map``); text side: a list of [T_i] token scores, start/end
            included (``Explanation.text_map``).
        modality: ``"image"`` or ``"text"``.
        protocol: ``"mask"`` (corrected) or ``"m2ib"`` (the reference's, exactly); see the module.

    Returns:
        ``{"s": [N], "s_masked": [N], "drop": [N], "increase": [N]}`` (CPU float tensors; drop
        in [0, 200], increase 0 or 100 per pair; NaN where a text has no word token).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol={protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if modality == "image":
        s, s_masked = _image_scores(backend, images, texts, image_maps(maps, images), protocol)
    elif modality == "text":
        s, s_masked = _text_scores(backend, images, texts, text_maps(maps, texts), protocol)
    else:
        raise InputError(f"modality={modality!r}: use 'image' or 'text'")
    drop = (s - s_masked).clamp_min(0.0) * 100.0
    increase = (s_masked > s).float() * 100.0
    bad = torch.isnan(s) | torch.isnan(s_masked)
    increase[bad] = float("nan")
    return {"s": s, "s_masked": s_masked, "drop": drop, "increase": increase}


def perturb_image(pixels: torch.Tensor, maps: torch.Tensor, protocol: str) -> torch.Tensor:
    """Normalised pixels [N, 3, H, W] times the maps [N, H, W], as the protocol does it."""
    if protocol == "m2ib":  # pytorch-grad-cam reads cams[i] = the map's first row, broadcast over rows
        return pixels * maps[:, 0][:, None, None, :].to(pixels.dtype)
    return pixels * maps[:, None].to(pixels.dtype)


def _image_scores(
    backend: Backend, images: ImageBatch, texts: TextBatch, maps: torch.Tensor, protocol: str
) -> tuple[torch.Tensor, torch.Tensor]:
    with scoring(backend):
        target = targets(backend, "image", images, texts)
        s = cosine(unit_embeddings(backend, "image", images), target)
        perturbed = ImageBatch(perturb_image(images.pixel_values, maps, protocol))
        s_masked = cosine(unit_embeddings(backend, "image", perturbed), target)
    return s.cpu(), s_masked.cpu()


def median_keep(scores: torch.Tensor) -> torch.Tensor:
    """Bool [K]: scores strictly above their median (``np.percentile(x, 50)``, linear interpolation)."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    return scores > torch.quantile(scores.double(), 0.5).to(scores.dtype)


def _text_scores(
    backend: Backend, images: ImageBatch, texts: TextBatch, maps: list[torch.Tensor], protocol: str
) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(texts)
    s = torch.full((n,), float("nan"))
    s_masked = torch.full((n,), float("nan"))
    with scoring(backend):
        target = targets(backend, "text", images, texts)
        if protocol == "mask":
            s = cosine(unit_embeddings(backend, "text", texts), target).cpu()
            attention = texts.attention_mask.clone()
            for i in range(n):
                words = word_positions(texts, i)
                if not words:
                    s[i] = float("nan")
                    continue
                keep = median_keep(maps[i][words])
                drop = [w for w, k in zip(words, keep.tolist()) if not k]
                attention[i, drop] = 0
            masked_texts = TextBatch(texts.input_ids, attention)
            s_masked = cosine(unit_embeddings(backend, "text", masked_texts), target).cpu()
            s_masked[torch.isnan(s)] = float("nan")
            return s, s_masked
        # "m2ib": cut the first and last ids, zero the dropped ones, no attention mask, argmax pooling
        rows = [i for i in range(n) if int(texts.lengths[i]) > 2]
        if not rows:
            return s, s_masked
        cut, zeroed = [], []
        for i in rows:
            length = int(texts.lengths[i])
            ids = texts.input_ids[i, 1 : length - 1].cpu()
            keep = median_keep(maps[i][1 : length - 1])
            cut.append(ids)
            zeroed.append(ids * keep.to(ids.dtype))
        if not backend.can_pool("text", "argmax"):
            raise InputError(
                f"the 'm2ib' text protocol needs a causal text tower that can pool the largest id; "
                f"{type(backend).__name__} cannot: use protocol 'mask'"
            )
        with backend.pooling("text", "argmax"):
            base = cosine(unit_embeddings(backend, "text", _padded(backend, cut)), target[rows])
            masked = cosine(unit_embeddings(backend, "text", _padded(backend, zeroed)), target[rows])
        s[rows] = base.cpu()
        s_masked[rows] = masked.cpu()
    return s, s_masked


def _padded(backend: Backend, rows: list[torch.Tensor]) -> TextBatch:
    """Id rows of different lengths, right-padded with id 0 (masked, and never the largest id of
    a row, so argmax pooling stays on real tokens; a causal tower's real positions do not see it)."""
    t = max(r.shape[0] for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    attention = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.shape[0]] = r
        attention[i, : r.shape[0]] = 1
    return TextBatch(ids.to(backend.device), attention.to(backend.device))


#: What each protocol does, recorded in every results file's provenance.
PROTOCOL_DEFINITIONS = {
    "m2ib": "public reference scripts/eval.py exactly: image = normalised pixels x the map's FIRST ROW "
    "broadcast over rows (pytorch-grad-cam 1.4.6 reads cams[0] of a [224, 224] map); text = "
    "start/end ids cut, ids x (map > median) so dropped ids become 0, no attention mask, "
    "pooled at the largest id, baseline on the cut ids",
    "mask": "image = normalised pixels x the map; text = words with score <= median (start/end excluded) "
    "removed through the attention mask, start/end kept, usual pooling, baseline = the pair's "
    "own similarity",
}


def _keys(protocol: str) -> tuple[str, ...]:
    return tuple(f"{side}_{kind}_{protocol}" for side in ("image", "text") for kind in ("drop", "increase"))


@dataclass(frozen=True)
class ConfidenceSettings(MetricSettings):
    """Confidence's options (``m2ib evaluate --confidence-protocols mask``,
    ``{"confidence": {"protocols": ("mask",)}}``).

    Attributes:
        protocols: which protocols are measured, ``"m2ib"`` (the public M2IB reference's
            ``scripts/eval.py``, defects included: the paper's numbers) and/or ``"mask"``
            (corrected); default ``('m2ib', 'mask')``.
    """

    # "protocols": the flag and recorded key it had before metric options were per metric
    protocols: tuple[Literal["m2ib", "mask"], ...] = setting(
        PROTOCOLS,
        "confidence protocols: m2ib (the public reference's, exactly) and/or mask (corrected)",
        alias="protocols",
    )

    def validate(self) -> None:
        if not self.protocols:
            raise InputError(f"protocols is empty: give {' and/or '.join(PROTOCOLS)}")


@register
class Confidence(Metric):
    """Confidence Drop (lower is better) and Increase (higher is better), per protocol asked for.

    Chattopadhyay et al., "Grad-CAM++", WACV 2018, https://arxiv.org/abs/1710.11063, as
    pytorch-grad-cam defines them; the two protocols are in this module's docstring. Options:
    :class:`ConfidenceSettings`. Reads image maps [N, H, W] and text maps [T_i]; records
    ``{side}_drop_{protocol}`` and ``{side}_increase_{protocol}`` per pair (in %).

    Examples:
        >>> import tempfile, m2ib
        >>> from m2ib.datasets.tables import load_table
        >>> from m2ib.evaluation.runner import run_evaluation
        >>> model = m2ib.load("shapes")
        >>> rows = load_table("shapes:test:2", size=96)
        >>> run = run_evaluation(
        ...     model, rows, ["gradcam"], {"confidence": {}}, None, 0, tempfile.mkdtemp(),
        ...     progress=False, report=False,
        ... )
        >>> sorted(run.records[0]["metrics"])
        ['image_drop_m2ib', 'image_drop_mask', 'image_increase_m2ib', 'image_increase_mask',
         'text_drop_m2ib', 'text_drop_mask', 'text_increase_m2ib', 'text_increase_mask']
    """

    name = "confidence"
    title = "Confidence drop and increase"
    paper = "https://arxiv.org/abs/1710.11063"
    keys = tuple(Key(k, "lower" if "_drop_" in k else "higher") for p in PROTOCOLS for k in _keys(p))
    tables = (
        Table("Confidence, protocol `m2ib` (the public reference's, exactly)", _keys("m2ib")),
        Table("Confidence, protocol `mask` (corrected)", _keys("mask")),
    )
    Settings = ConfidenceSettings
    settings: ConfidenceSettings

    def provenance(self) -> dict:
        """The protocols measured, for the run's provenance record."""
        return {"protocol_definitions": dict(PROTOCOL_DEFINITIONS)}

    def measure(self, batch: PairBatch, run: MethodRun, side: str, maps) -> Measured:
        out = Measured.empty(len(batch))
        for protocol in self.settings.protocols:
            r = confidence_change(
                batch.backend, batch.images, batch.texts, maps, modality=modality_of(side), protocol=protocol
            )
            out.put(f"{side}_drop_{protocol}", r["drop"])
            out.put(f"{side}_increase_{protocol}", r["increase"])
        return out
