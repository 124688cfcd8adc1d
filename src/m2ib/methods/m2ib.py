"""M2IB: multi-modal information bottleneck attribution.

Wang, Rudner, Wilson, "Visual Explanations of Image-Text Representations via Multi-Modal
Information Bottleneck Attribution", NeurIPS 2023, https://arxiv.org/abs/2312.17174

For one pair and one tower, hidden states R at the output of block ``layer`` are replaced by
Z = lam * R + (1 - lam) * eps, eps ~ N(0, var), lam = sigmoid(alpha), alpha of R's shape.
alpha is fitted with Adam to minimise ``beta * mean KL(N(lam R, (1-lam)^2 var) || N(0, var))
- mean cos(embedding(Z), other modality's embedding)`` over ``samples`` noise copies. The
attribution is the KL of the last step's forward pass summed over channels. With
``negatives`` the fit term is the target's margin (:class:`~m2ib.methods.base.Target`) instead
of the plain cosine; without them it is the cosine, as in the paper.

``bottleneck="standardised"`` (off by default) is IBA's bottleneck (Schulz et al., ICLR 2020):
eps ~ N(mu_R, var sigma_R^2) and the prior N(mu_R, var sigma_R^2) per feature, with mu_R and
sigma_R estimated on a reference set or on the batch (:mod:`.m2ib_statistics`). It is the
published loop run on (R - mu_R) / sigma_R, with Z mapped back as Z * sigma_R + mu_R.

Fast path (same numbers as re-running the whole model): the tower's prefix up to the
bottleneck runs once per pair, the other modality's embedding once per pair, and only the
blocks after the bottleneck run on the noise copies; weights are frozen, so backward stops
at alpha. Pairs are fitted together, each with its own alpha, loss term and noise stream,
so a pair's map does not depend on the batch it is in.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import overload

import torch

from ..backends.base import Backend, ImageBatch, Modality, TextBatch
from ..errors import InputError
from ..settings import check_choice, check_number, check_positive_int
from .adaib import COMPRESSIONS, EMBEDDINGS, OBJECTIVES, RELEVANCES, AdaIBTerms, check_settings, pair_relevance
from .base import PRECISIONS, RawScores, Target, autocast, register, setting
from .bottleneck import bottleneck_loop, kl_to_prior, noise_generators  # noqa: F401  (kl_to_prior: re-exported)
from .common import PerBackend
from .layered import LayerMethod, LayerSettings
from .m2ib_statistics import bottleneck_statistics
from .memory import require_memory

#: ``published``: noise and prior N(0, var), as in the paper. ``standardised``: IBA's (Schulz et
#: al., ICLR 2020) N(mu_R, var * sigma_R^2) per feature (:mod:`m2ib.methods.m2ib_statistics`).
BOTTLENECKS = ("published", "standardised")


@dataclass(frozen=True)
class M2IBSettings(LayerSettings):
    """M2IB's settings; defaults are the paper's (CLIP ViT-B/32, Conceptual Captions).

    Every field is a keyword of ``m2ib.explain(..., method="m2ib")`` and a flag of ``m2ib
    explain`` (``--vision-beta``). A model may recommend its own values (``backend.recommended``,
    e.g. the shipped shapes model's betas); settings you pass win over them. Paper: Wang, Rudner,
    Wilson, NeurIPS 2023, https://arxiv.org/abs/2312.17174 (the values below under "paper").

    Attributes:
        seed: seed of the random draws; the same seed gives the same maps for a pair, alone or
            in a batch; default ``0``.
        vision_layer: image tower block whose output R [tokens, width] is bottlenecked (0-based,
            negative from the end); default ``None``: the model's recommended layer, else
            :func:`~m2ib.methods.layered.default_layer` (9 of 12 blocks, the same relative depth
            otherwise). Paper: 9 (CLIP ViT-B/32).
        text_layer: text tower block whose output is bottlenecked; default ``None``, as for
            ``vision_layer``. Paper: 9 (7 for the chest X-ray CLIP).
        vision_beta: weight of the compression (KL) term of the image bottleneck; default ``0.1``.
            Paper: 0.1 (1 for the chest X-ray CLIP).
        text_beta: weight of the compression term of the text bottleneck; default ``0.1``. Paper: 0.1.
        var: variance of the noise and of the prior N(0, var); default ``1.0``. Paper: 1.
        steps: Adam steps of the fit; default ``10``. Paper: 10.
        lr: Adam learning rate; default ``1.0``. Paper: 1.
        samples: noise copies per step; default ``10``. Paper: 10.
        init_alpha: initial alpha, lam = sigmoid(alpha) starting near 1 (keep everything); default
            ``5.0``. Paper's code: 5.
        precision: arithmetic of the towers, ``"fp32"`` (exact) or ``"bf16"``/``"fp16"`` (faster,
            opt-in; the bottleneck and the loss stay fp32); default ``'fp32'``.
        bottleneck: noise and prior, ``"published"`` (N(0, var), the paper) or ``"standardised"``
            (IBA's per-feature N(mean, var * sd^2), Schulz et al., ICLR 2020); default
            ``'published'``.
        reference: with ``bottleneck="standardised"``, the inputs whose R gives each feature's
            mean and sd (a dataset spec as ``m2ib evaluate --data`` reads it, e.g.
            ``"shapes:val:64"``); default ``None``: the batch's own inputs. Not in the paper.
        cuda_graphs: on a GPU, replay the fit as a CUDA graph (the same numbers, fewer launches);
            no effect on a CPU or with ``objective="adaib"``; default ``True``.
        objective: the loss, ``"published"`` (``beta * KL - fit``, the paper) or ``"adaib"``
            (AdaIB's per-pair ``g(f) * KL - f * fit``, docs/adaib.md); default ``'published'``.
        adaib_relevance: AdaIB's f: ``"l2"``, ``"l1"``, ``"linf"`` (1 / (distance + eps_f)),
            ``"cosine"`` or ``"constant"``; default ``'l2'`` (AdaIB's). Read only with
            ``objective="adaib"``, as are all ``adaib_*`` settings.
        adaib_embeddings: f's distances read the raw projected embeddings or ``"normalised"``
            ones; default ``'raw'``.
        adaib_eps_f: eps_f > 0 added to f's distance (or to its cosine form); default ``1e-06``
            (the paper says only > 0).
        adaib_tau: temperature of f's cosine form; default ``1.0`` (the paper says only > 0).
        adaib_constant: f of every pair with ``adaib_relevance="constant"``; default ``1.0``.
        adaib_compression: g(f): ``"mlp"`` (learned, AdaIB's section 5.2), ``"inverse"``
            (1 / (f + eps_g), appendix B.1) or ``"proportional"`` (beta * f); default ``'mlp'``.
        adaib_hidden: hidden width of g's MLP; default ``32`` (AdaIB's 1 -> 32 -> 1).
        adaib_eps_g: eps_g > 0, g's floor (mlp) or shift (inverse); default ``1e-06``.
        adaib_clip: each pair's gradient is clipped to this L2 norm at every step (0: none);
            default ``1.0`` (AdaIB's).
    """

    vision_layer: int | None = setting(
        None,
        "image tower block whose output is bottlenecked (0-based, negative from the end); "
        "default: the model's recommended layer, else 9 for 12 blocks (same relative depth otherwise)",
    )
    text_layer: int | None = setting(None, "text tower block whose output is bottlenecked; default as for vision_layer")
    vision_beta: float = setting(0.1, "weight of the compression (KL) term for the image bottleneck")
    text_beta: float = setting(0.1, "weight of the compression (KL) term for the text bottleneck")
    var: float = setting(1.0, "variance of the noise and of the prior N(0, var)")
    steps: int = setting(10, "optimisation steps of the bottleneck")
    lr: float = setting(1.0, "Adam learning rate")
    samples: int = setting(10, "noise copies per step")
    init_alpha: float = setting(5.0, "initial value of alpha (lam = sigmoid(alpha) starts near 1)")
    precision: str = setting(
        "fp32",
        "arithmetic of the towers: fp32 (default, exact), or bf16/fp16 "
        "(faster, opt-in; the bottleneck and loss stay fp32)",
        choices=PRECISIONS,
    )
    bottleneck: str = setting(
        "published",
        "noise and prior of the bottleneck: published (N(0, var), the paper) or standardised (IBA, "
        "Schulz et al. ICLR 2020: N(mean, var * sd^2) of each feature of R, so a token's large norm "
        "is not scored as information)",
        choices=BOTTLENECKS,
    )
    reference: str | None = setting(
        None,
        "with bottleneck=standardised: the inputs whose R gives each feature's mean and sd, a dataset as "
        "evaluate --data reads it (e.g. shapes:val:64 or a pairs file); default: the batch's own inputs "
        "(2 or more pairs; a pair's map then depends on its batch)",
    )
    cuda_graphs: bool = setting(
        True,
        "on a GPU, replay the optimisation loop as a CUDA graph (same kernels, far fewer launches); no effect on a CPU "
        "(nor with objective=adaib, which runs eagerly)",
    )
    objective: str = setting(
        "published",
        "the bottleneck's loss: published (beta * KL - fit, the paper) or adaib (AdaIB, OpenReview NuYcnDYQuQ: "
        "g(f) * KL - f * fit per pair, f the pair's relevance, g a non-increasing weight; docs/adaib.md)",
        choices=OBJECTIVES,
    )
    adaib_relevance: str = setting(
        "l2",
        "AdaIB's f(x, y), fixed per pair from the projected embeddings of the whole image and text: l2, l1, linf "
        "(1 / (distance + adaib_eps_f); l2 is AdaIB's default), cosine (softplus(adaib_tau * (1 + cos) / 2) "
        "+ adaib_eps_f) or constant (adaib_constant)",
        choices=RELEVANCES,
    )
    adaib_embeddings: str = setting(
        "raw", "AdaIB's distances read the raw projected embeddings or unit-norm ones (normalised)", choices=EMBEDDINGS
    )
    adaib_eps_f: float = setting(1e-6, "AdaIB: eps_f > 0 added to the distance (or to the cosine form) of f")
    adaib_tau: float = setting(1.0, "AdaIB: temperature tau > 0 of the cosine form of f")
    adaib_constant: float = setting(1.0, "AdaIB: f of every pair with adaib_relevance=constant")
    adaib_compression: str = setting(
        "mlp",
        "AdaIB's g(f): mlp (eps_g + softplus of an MLP 1 -> adaib_hidden -> 1 with ReLU, trained per pair with the "
        "bottleneck; AdaIB's default), inverse (1 / (f + adaib_eps_g), fixed) or proportional (beta * f: with a "
        "constant f, the published M2IB)",
        choices=COMPRESSIONS,
    )
    adaib_hidden: int = setting(32, "AdaIB: hidden width of g's MLP")
    adaib_eps_g: float = setting(1e-6, "AdaIB: eps_g > 0, the floor of g (mlp) or the shift of 1 / (f + eps_g)")
    adaib_clip: float = setting(
        1.0, "AdaIB: each pair's gradient (alpha and g's MLP) is clipped to this L2 norm at every step; 0: no clipping"
    )

    def validate(self) -> None:
        """Ranges, choices, AdaIB's settings, and ``reference`` only with the standardised bottleneck."""
        super().validate()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.samples, "samples")
        check_number(self.lr, "lr", strict=True)
        check_number(self.var, "var", strict=True)
        check_number(self.vision_beta, "vision_beta")
        check_number(self.text_beta, "text_beta")
        check_choice(self.precision, "precision", PRECISIONS)
        check_choice(self.bottleneck, "bottleneck", BOTTLENECKS)
        check_settings(self)  # AdaIB's, and that no setting goes unread (beta with AdaIB's own g)
        if self.reference is not None and self.bottleneck != "standardised":  # honoured or refused, never ignored
            raise InputError(
                f"reference={self.reference!r} is read only with bottleneck=standardised: set bottleneck "
                "to standardised, or leave reference out",
                settings=("bottleneck", "reference"),
            )


@register
class M2IB(LayerMethod):
    """Multi-modal information bottleneck attribution (image and text).

    Wang, Rudner, Wilson, "Visual Explanations of Image-Text Representations via Multi-Modal
    Information Bottleneck Attribution", NeurIPS 2023, https://arxiv.org/abs/2312.17174.
    Settings: :class:`M2IBSettings`; the definition is in this module's docstring.

    Shapes: per pair and tower, alpha has the shape of the hidden states R [tokens, width] at
    the output of block ``vision_layer`` / ``text_layer``; the map is the KL summed over the
    width: image [rows, cols] on the patch grid (``Explanation.image_grid``, the prefix tokens
    dropped), upsampled bilinearly to the input [H, W] (``image_map``); text [T], one score per
    token (``text_map``). ``Explanation.info[side]`` holds the fit's last ``compression`` and ``fit``.

    Examples:
        >>> import m2ib
        >>> exp = m2ib.explain("shapes", "examples/scene3.png", "an orange triangle", method="m2ib")
        >>> exp.image_grid.shape, exp.image_map.shape, exp.text_map.shape
        (torch.Size([16, 16]), torch.Size([96, 96]), torch.Size([5]))
        >>> sorted(exp.info["image"])
        ['compression', 'fit']
    """

    name = "m2ib"
    title = "M2IB"
    paper = "https://arxiv.org/abs/2312.17174"
    Settings = M2IBSettings

    def degenerate_hint(self, settings: M2IBSettings, side: Modality) -> str:
        """What to change when a side's map comes out flat: a lower ``lr`` or beta."""
        beta = "vision_beta" if side == "image" else "text_beta"
        return (
            f"the fit diverged or compressed everything: lower lr (now {settings.lr:g}) "
            f"or {beta} (now {getattr(settings, beta):g})"
        )

    def precision_of(self, settings: M2IBSettings) -> str:
        return settings.precision

    def attribute(
        self,
        backend: Backend,
        modality: Modality,
        images: ImageBatch,
        texts: TextBatch,
        target: Target,
        settings: M2IBSettings,
    ) -> RawScores:
        batch, layer = self.side(modality, images, texts, settings)
        beta = settings.vision_beta if modality == "image" else settings.text_beta
        relevance = None if settings.objective == "published" else pair_relevance(backend, images, texts, settings)
        kl_map, info = fit_bottleneck(backend, modality, batch, layer, target, beta, settings, relevance)
        check_fit(kl_map, modality, settings)
        return RawScores(kl_map, info)


def check_fit(kl_map: torch.Tensor, modality: Modality, s: M2IBSettings) -> None:
    """A fit that went wrong says so: a non-finite map is an error. (A map that is the same on every
    token is a warning for every method, from :meth:`Explanation.problems`, with :meth:`M2IB.degenerate_hint`.)"""
    if not torch.isfinite(kl_map).all():
        raise InputError(
            f"M2IB's {modality} fit diverged (non-finite KL): lower lr (now {s.lr}) or raise var (now {s.var})",
            settings=("lr", "var"),
        )


def fit_bottleneck(
    backend: Backend,
    modality: Modality,
    batch: ImageBatch | TextBatch,
    layer: int,
    target: Target | torch.Tensor,
    beta: float | torch.Tensor,
    s: M2IBSettings,
    relevance: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """Fit one bottleneck per pair of ``batch`` at ``layer``; return KL maps [N, tokens] and info.

    ``target``: a :class:`Target`, or [N, E] unit-norm embeddings of the other side (the cosine).
    ``relevance``: with ``objective="adaib"``, each pair's f [N] (:func:`.adaib.pair_relevance`).
    ``beta``: one value, or one per pair ([N]; the pairs' losses are independent, so a pair's map
    is the one a fit with its beta alone gives). ``hidden``: the prefix's output R for ``batch``
    at ``layer`` when already computed (``m2ib tune`` shares it between its fits)."""
    if (relevance is None) != (s.objective == "published"):
        raise InputError("fit_bottleneck takes each pair's relevance f with objective=adaib, and only then")
    if isinstance(target, torch.Tensor):
        target = Target(target)
    device = backend.device
    if hidden is None:
        with torch.no_grad(), autocast(device, s.precision):
            hidden = backend.prefix(modality, batch, layer).float()  # [N, T, D]
    n, t, d = hidden.shape
    check_fits_in_memory(backend, modality, layer, n, t, d, s)
    statistics = None
    if s.bottleneck == "standardised":  # fit on (R - mean) / sd; the suffix reads Z * sd + mean
        statistics = bottleneck_statistics(backend, modality, batch, layer, hidden, s.reference)
        hidden = (hidden - statistics[0]) / statistics[1]
    use_graph = s.cuda_graphs and device.type == "cuda" and relevance is None
    key = (
        modality,
        layer,
        n,
        t,
        d,
        tuple(beta.tolist()) if isinstance(beta, torch.Tensor) else beta,
        s.var,
        s.bottleneck,
        s.steps,
        s.lr,
        s.samples,
        s.init_alpha,
        s.precision,
        None if target.negatives is None else tuple(target.negatives.shape),
        target.offset is not None,
    )
    cache = FITS(backend) if use_graph else None
    fit = None if cache is None else cache.pop(key, None)
    if fit is None:
        # Image towers read only the batch's length in the suffix: no per-copy pixels (or display images).
        copies = batch.repeat_interleave(s.samples) if isinstance(batch, TextBatch) else batch
        adaib = None if relevance is None else AdaIBTerms(relevance, beta, s, device)
        fit = BottleneckFit(backend, modality, copies, layer, beta, s, n, t, d, graph=use_graph, adaib=adaib)
    fit.load(hidden, batch, target, s.seed, statistics)
    fit.run()
    if cache is not None:  # keep the few most recent loops (their memory stays reserved while cached)
        cache[key] = fit
        while len(cache) > GRAPH_CACHE_SIZE:
            cache.pop(next(iter(cache)))
    if fit.kl_map is None or fit.numbers is None:
        raise InputError("M2IB's bottleneck fit ran no step: steps must be positive")
    numbers = fit.numbers.tolist()  # one device sync, not 2N
    return fit.kl_map.clone(), [dict(zip(INFO_KEYS, row)) for row in numbers]


#: Per pair, the last step's numbers (AdaIB adds its f, g and g / f).
INFO_KEYS = ("compression", "fit", "relevance", "compression_weight", "effective_beta")


GRAPH_CACHE_SIZE = 4
#: Per backend, the most recent captured loops by shape and settings (oldest first).
FITS: PerBackend[dict[tuple, BottleneckFit]] = PerBackend(dict)
# Live float32 tensors of width D per token and noise copy in the blocks after the bottleneck, per
# block (normed input, q/k/v, attention output, residuals, the 4x MLP hidden and its activation,
# kept for the backward pass): a generous upper bound measured on transformers' CLIP blocks.
ACTIVATIONS_PER_BLOCK = 16


def memory_needed(n: int, t: int, d: int, blocks_after: int, s: M2IBSettings) -> int:
    """Bytes a batch of ``n`` bottleneck fits needs at its peak, roughly: the noise of every step,
    and one step's activations on ``n * samples`` copies through the blocks after the bottleneck."""
    noise = n * s.steps * s.samples * t * d
    activations = n * s.samples * t * d * (ACTIVATIONS_PER_BLOCK * max(blocks_after, 1) + 4)
    return 4 * (noise + activations)


def check_fits_in_memory(
    backend: Backend, modality: Modality, layer: int, n: int, t: int, d: int, s: M2IBSettings
) -> None:
    """Refuse, on one line, a fit that cannot fit in memory (instead of an allocation failure or a
    swap storm minutes later), naming the settings to lower."""
    require_memory(
        memory_needed(n, t, d, backend.num_layers(modality) - 1 - layer, s),
        backend.device,
        f"M2IB with samples={s.samples} and steps={s.steps} on {n} pair(s)",
        "lower samples (or batch_size, or steps)",
        settings=("samples", "batch_size", "steps"),
    )


@overload
def _into(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor: ...
@overload
def _into(buffer: torch.Tensor | None, value: None) -> None: ...
@overload
def _into(buffer: torch.Tensor | None, value: torch.Tensor | None) -> torch.Tensor | None: ...
def _into(buffer: torch.Tensor | None, value: torch.Tensor | None) -> torch.Tensor | None:
    """Copy ``value`` into ``buffer`` (fixed storage for CUDA graphs); a new buffer if shapes differ."""
    if value is None:
        return None
    value = value.float()
    if buffer is None or buffer.shape != value.shape or buffer.device != value.device:
        return value.clone()
    return buffer.copy_(value)


LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


class BottleneckFit:
    """The optimisation loop of a batch of bottlenecks, on fixed buffers.

    On a GPU the whole loop (all steps: forward, backward, Adam) is captured once as a CUDA
    graph and replayed for later batches of the same shape, which removes the per-kernel
    launch cost that dominates small batches. Eager and graph runs execute the same kernels.
    """

    def __init__(
        self,
        backend: Backend,
        modality: Modality,
        copies: ImageBatch | TextBatch,
        layer: int,
        beta: float | torch.Tensor,
        s: M2IBSettings,
        n: int,
        t: int,
        d: int,
        graph: bool,
        adaib: AdaIBTerms | None = None,
    ):
        device = backend.device
        self.modality, self.copies, self.layer, self.s = modality, copies, layer, s
        # one beta, or one per pair [N]: each pair's loss term is weighted by its own
        self.beta = beta.to(device=device, dtype=torch.float32) if isinstance(beta, torch.Tensor) else beta
        # Reduced precision runs the blocks after the bottleneck on a copy of the weights in
        # that dtype (activations stay in it, no per-op casts); the bottleneck itself stays fp32.
        # Held weakly: a cached fit (FITS) must not keep its backend alive.
        self._runner = weakref.ref(backend if s.precision == "fp32" else backend.in_dtype(LOW_PRECISION[s.precision]))
        self.hidden = torch.zeros(n, t, d, device=device)
        self.valid = torch.zeros(n, t, device=device)
        self.target = torch.zeros(n * s.samples, 1, device=device)
        self.negatives: torch.Tensor | None = None  # [K, E], when the target is a margin
        self.offset: torch.Tensor | None = None  # [N * samples], the text side's margin term
        self.shift: torch.Tensor | None = None  # [T, D], standardised bottleneck: R's mean
        self.scale: torch.Tensor | None = None  # [T, D], standardised bottleneck: R's sd
        self.noise = torch.zeros(n, s.steps, s.samples, t, d, device=device)
        self.alpha = torch.full((n, t, d), float(s.init_alpha), device=device, requires_grad=True)
        # fused: one kernel per step on a GPU; capturable: its step count lives on the device
        self.adaib = adaib  # AdaIB's f and g (its MLP trained with alpha, same Adam); None: the published loss
        params = [self.alpha] + ([] if adaib is None else adaib.params)
        self.optimiser = torch.optim.Adam(params, lr=s.lr, fused=device.type == "cuda", capturable=graph)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.wants_graph = graph
        self.kl_map: torch.Tensor | None = None  # [N, T], set by the loop
        self.numbers: torch.Tensor | None = None  # [N, 2] (AdaIB: [N, 5]): per pair, INFO_KEYS

    def load(
        self,
        hidden: torch.Tensor,
        batch: ImageBatch | TextBatch,
        target: Target,
        seed: int,
        statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Copy one batch's inputs into the buffers and draw its noise (``statistics``: the
        standardised bottleneck's mean and sd of R, which ``hidden`` is already scaled by)."""
        s, device = self.s, self.hidden.device
        n, t, d = hidden.shape
        self.hidden.copy_(hidden)
        if isinstance(batch, TextBatch):
            if not isinstance(self.copies, TextBatch):
                raise InputError(f"a text batch loaded into a bottleneck fit of the {self.modality} side")
            self.valid.copy_(batch.attention_mask)  # padding carries no information
            self.copies.input_ids.copy_(batch.input_ids.repeat_interleave(s.samples, 0))
            self.copies.attention_mask.copy_(batch.attention_mask.repeat_interleave(s.samples, 0))
            lengths = batch.lengths.tolist()
        else:
            self.valid.fill_(1.0)
            lengths = [t] * n
        self.target = _into(self.target, target.embeddings.to(device).float().repeat_interleave(s.samples, 0))
        self.negatives = _into(self.negatives, target.negatives)
        self.offset = _into(
            self.offset, None if target.offset is None else target.offset.repeat_interleave(s.samples, 0)
        )
        self.shift = _into(self.shift, None if statistics is None else statistics[0])
        self.scale = _into(self.scale, None if statistics is None else statistics[1])
        # All steps' noise at once, per pair at its own length, from the pair's own generator.
        for i, g in enumerate(noise_generators(device, seed, n)):
            if lengths[i] == t:
                torch.randn(s.steps, s.samples, t, d, generator=g, device=device, out=self.noise[i])
            else:
                self.noise[i].zero_()
                self.noise[i, :, :, : lengths[i]] = torch.randn(
                    s.steps, s.samples, lengths[i], d, generator=g, device=device
                )

    def _reset(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(float(self.s.init_alpha))
            for state in self.optimiser.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()

    def _loop(self) -> None:
        s = self.s
        runner = self._runner()  # alive: a fit runs only inside fit_bottleneck, which holds the backend
        if runner is None:
            raise InputError("M2IB's bottleneck fit outlived its backend: fit through fit_bottleneck")

        def score(z: torch.Tensor) -> torch.Tensor:  # z [N * samples, T, D] -> the target [N * samples]
            if self.shift is not None and self.scale is not None:
                # standardised: back to R's units, Z = lam R + (1 - lam)(mean + sd eps)
                z = torch.addcmul(self.shift, z, self.scale)
            emb = runner.suffix(self.modality, z.to(runner.dtype), self.layer, self.copies)
            return Target(self.target, self.negatives, self.offset).score(emb)

        weight: torch.Tensor | None = None  # AdaIB's g(f) of the last step

        def adaib_backward(compression: torch.Tensor, fit: torch.Tensor) -> None:
            # AdaIB: g(f) * KL - f * fit, per-pair clipped gradients of alpha and g's parameters
            nonlocal weight
            if self.adaib is not None:
                weight = self.adaib.backward(self.alpha, compression, fit)

        if s.steps < 1:
            raise InputError("M2IB's bottleneck fit ran no step: steps must be positive")
        kl, compression, fit = bottleneck_loop(
            self.alpha,
            self.optimiser,
            self.hidden,
            self.noise,
            self.valid,
            s.var,
            self.beta,
            score,
            backward=None if self.adaib is None else adaib_backward,
        )
        self.kl_map = kl.sum(-1)
        numbers = [compression, fit]
        if self.adaib is not None and weight is not None:
            numbers += [self.adaib.f, weight, weight / self.adaib.f]
        self.numbers = torch.stack(numbers, 1)

    def run(self) -> None:
        self._reset()
        if not self.wants_graph:
            self._loop()
            return
        if self.graph is None:
            side = torch.cuda.Stream(device=self.hidden.device)
            side.wait_stream(torch.cuda.current_stream(self.hidden.device))
            with torch.cuda.stream(side):  # warm-up: creates the optimiser state and workspaces
                self._loop()
            torch.cuda.current_stream(self.hidden.device).wait_stream(side)
            self._reset()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._loop()
        self.graph.replay()
