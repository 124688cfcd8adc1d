"""M2IB on a generative VLM's answer.

The published bottleneck (Wang, Rudner, Wilson, NeurIPS 2023, https://arxiv.org/abs/2312.17174),
run by the same core as the CLIP path (:func:`m2ib.methods.bottleneck.bottleneck_loop`), with two
changes of place and target that a generative model forces:

* R is the image-token states where they enter the language model (LLaVA: the projector's
  output), [K, D], one alpha per token and channel; ``image_layer=l`` (this package's setting, for
  ``m2ib tune``) moves R to the output of the language model's decoder block l at the image
  positions (a forward hook, removed after; the blocks below run once, unbottlenecked);
* the fit term is the summed log-likelihood of the teacher-forced answer's tokens given the image
  and the prompt, ``log p(answer | Z, prompt)``, instead of a cosine to the other modality's
  embedding: the loss is ``beta * mean KL - mean_copies log p(answer | Z, prompt)``.

Everything else is the paper's: Z = lam R + (1 - lam) sqrt(var) eps, KL to N(0, var), Adam with
lr 1, 10 steps, 10 noise copies, alpha starting at 5, the last step's KL summed over channels as
the token scores. Those scores are placed on the image grid (tokens with no pixel are left out),
upsampled bilinearly to the model's input size and min-max normalised.

Scale: a log-likelihood is summed over the answer's tokens (nats), not bounded like a cosine, so
beta = 0.1 weighs compression less against it than in the CLIP setting; beta is a setting, not
yet tuned for these models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..maps import minmax
from ..methods.base import Settings, setting
from ..methods.bottleneck import Score, fit_once
from ..methods.memory import memory_available, require_memory
from ..settings import check_number, check_positive_int
from .base import GenerativeBackend, Query, answer_log_likelihood, evaluation_mode


@dataclass(frozen=True)
class AnswerM2IBSettings(Settings):
    """M2IB's settings for an answer: beta to init_alpha default to the paper's values (CLIP ViT-B/32);
    per_word and the prompt side are this package's additions.

    Attributes:
        seed: Random seed; the same seed gives the same maps for a pair, alone or in a batch;
            default ``0``.
        beta: Weight of the compression (KL) term; default ``0.1``.
        var: Variance of the noise and of the prior N(0, var); default ``1.0``.
        steps: Optimisation steps of the bottleneck; default ``10``.
        lr: Adam learning rate; default ``1.0``.
        samples: Noise copies per step; default ``10``.
        init_alpha: Initial value of alpha (lam = sigmoid(alpha) starts near 1); default ``5.0``.
        per_word: Also one map per answer word (its tokens' log-likelihood as the target); default
            ``True``.
        prompt_side: Also a bottleneck on the prompt's text tokens: a score per prompt word; default
            ``True``.
        prompt_layer: The prompt bottleneck's site: 0 = the language model's input embeddings, l =
            the output of its block l; default ``0``.
        image_layer: The image bottleneck's site: 0 = where the image tokens enter the language model
            (the projector's output: the published place), l = the output of its block l at the image
            positions (l below the last block: after it the image states reach no answer token);
            default ``0``.
    """

    beta: float = setting(0.1, "weight of the compression (KL) term")
    var: float = setting(1.0, "variance of the noise and of the prior N(0, var)")
    steps: int = setting(10, "optimisation steps of the bottleneck")
    lr: float = setting(1.0, "Adam learning rate")
    samples: int = setting(10, "noise copies per step")
    init_alpha: float = setting(5.0, "initial value of alpha (lam = sigmoid(alpha) starts near 1)")
    per_word: bool = setting(True, "also one map per answer word (its tokens' log-likelihood as the target)")
    prompt_side: bool = setting(True, "also a bottleneck on the prompt's text tokens: a score per prompt word")
    prompt_layer: int = setting(
        0, "the prompt bottleneck's site: 0 = the language model's input embeddings, l = the output of its block l"
    )
    image_layer: int = setting(
        0,
        "the image bottleneck's site: 0 = where the image tokens enter the language model (the projector's "
        "output), l = the output of its block l at the image positions (l below the last block)",
    )

    def validate(self) -> None:
        super().validate()
        check_positive_int(self.steps, "steps")
        check_positive_int(self.samples, "samples")
        check_number(self.lr, "lr", strict=True)
        check_number(self.var, "var", strict=True)
        check_number(self.beta, "beta")
        check_number(self.init_alpha, "init_alpha")
        check_positive_int(self.prompt_layer, "prompt_layer", minimum=0)
        check_positive_int(self.image_layer, "image_layer", minimum=0)


def answer_score(backend: GenerativeBackend, query: Query) -> Score:
    """z [copies, K, D] -> log p(answer | z, prompt) [copies]: the fit term of the bottleneck."""
    return lambda z: backend.rest(query, z)


@dataclass(frozen=True)
class WordMaps:
    """The per-word fits: each answer word's text, its answer-token indices, and its maps (as AnswerFit's)."""

    words: list[str]
    tokens: list[list[int]]
    token_scores: torch.Tensor  # [W, K]
    grid_maps: torch.Tensor  # [W, rows, cols]
    image_maps: torch.Tensor  # [W, H, W]


@dataclass(frozen=True)
class PromptScores:
    """The prompt-side fit: each prompt word, its sequence positions, its score (mean KL of its tokens)."""

    words: list[str]
    positions: list[list[int]]
    scores: torch.Tensor  # [P words]
    token_scores: torch.Tensor  # [prompt text tokens]: the KL of every bottlenecked position


@dataclass(frozen=True)
class AnswerFit:
    """What one fit gives: per-token KL [K], the map on the grid [rows, cols], the upsampled map
    [H, W] (min-max), the numbers of the fit, and the per-word and prompt fits when asked for."""

    token_scores: torch.Tensor
    grid_map: torch.Tensor
    image_map: torch.Tensor
    info: dict[str, float]
    words: WordMaps | None = None
    prompt: PromptScores | None = None

    def fields(self) -> dict[str, Any]:
        """The per-word and prompt fields of :class:`~m2ib.generative.result.AnswerExplanation`."""
        out: dict[str, Any] = {}
        if self.words is not None:
            w = self.words
            out.update(words=w.words, word_tokens=w.tokens, word_token_scores=w.token_scores)
            out.update(word_grid_maps=w.grid_maps, word_maps=w.image_maps)
        if self.prompt is not None:
            out.update(prompt_words=self.prompt.words, prompt_scores=self.prompt.scores)
        return out


def word_groups(tokenizer: Any, ids: list[int], breaks: Collection[int] = ()) -> list[tuple[str, list[int]]]:
    """Words of the token ids ``ids``: (text, indices into ``ids``) each, in order.

    The leading-space rule: a token starts a new word when the text decoded up to it grows, from
    the text decoded up to the token before, by a piece that begins with whitespace (a
    SentencePiece "▁", a byte-level BPE "Ġ" or a word-level tokenizer's joining space all decode
    to one); otherwise it continues the word before (sub-words, and punctuation written without
    a space: "circle." is one word). Indices in ``breaks`` (image and special tokens) belong to no
    word and end the one before. A word's text is its tokens decoded together, stripped; a group
    that decodes to nothing but whitespace is dropped."""
    groups: list[list[int]] = []
    run: list[int] = []
    before = ""
    for i in range(len(ids)):
        if i in breaks:
            run, before = [], ""
            continue
        run.append(i)
        text = str(tokenizer.decode([ids[j] for j in run], clean_up_tokenization_spaces=False))
        piece = text[len(before) :] if text.startswith(before) else text
        if len(run) == 1 or piece[:1].isspace():
            groups.append([i])
        else:
            groups[-1].append(i)
        before = text
    out = [(str(tokenizer.decode([ids[j] for j in g], clean_up_tokenization_spaces=False)).strip(), g) for g in groups]
    return [(text, g) for text, g in out if text]


def token_log_probs(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """log p(answer token a | ...) [B, A] from the answer's logits [B, A, V]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    index = answer_ids.to(logp.device).view(1, -1, 1).expand(logp.shape[0], -1, 1)
    return logp.gather(-1, index)[..., 0]


def answer_token_log_probs(backend: GenerativeBackend, query: Query, states: torch.Tensor) -> torch.Tensor:
    """log p(answer token a | z, prompt, answer tokens before a) [B, A] with ``states`` [B, K, D] as the
    image tokens: :meth:`GenerativeBackend.rest` before its sum over the answer's tokens."""
    return token_log_probs(backend.answer_logits(query, backend.embeds_with(query, states)), query.answer_ids)


#: z [B, K, D] at the image bottleneck's site -> the answer's token log-probabilities [B, A].
TokenLogProbs = Callable[[torch.Tensor], torch.Tensor]


def rows_score(
    backend: GenerativeBackend, query: Query, weights: torch.Tensor, log_probs: TokenLogProbs | None = None
) -> Score:
    """z [R * copies, K, D] (row r's copies adjacent) -> row r's target [R * copies]: the answer's
    token log-probabilities weighted by ``weights`` [R, A] (a word's row: 1 on its tokens, 0 elsewhere).
    ``log_probs``: z -> token log-probabilities (default: z as the image tokens at the projector site)."""

    def score(z: torch.Tensor) -> torch.Tensor:
        logp = answer_token_log_probs(backend, query, z) if log_probs is None else log_probs(z)
        return (logp.view(weights.shape[0], -1, logp.shape[-1]) * weights[:, None]).sum(-1).reshape(-1)

    return score


def fit_rows(
    backend: GenerativeBackend,
    query: Query,
    hidden: torch.Tensor,
    weights: torch.Tensor,
    s: AnswerM2IBSettings,
    log_probs: TokenLogProbs | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bottleneck per row of ``weights`` [R, A] on the image states ``hidden`` [1, K, D], fitted as
    batches of rows (as many as memory holds; all at once where it cannot be asked). Each row has
    its own alpha, its own loss and the noise of ``seed``: a row's result is that of a fit of it alone.
    Returns the KL maps [R, K], compressions [R] and last-step targets [R]."""
    rows = int(weights.shape[0])
    free = memory_available(backend.device)
    step = rows if free is None else max(1, min(rows, free // max(1, memory_needed(backend, query, s))))
    parts = []
    for first in range(0, rows, step):
        chunk = weights[first : first + step].to(hidden.device)
        score = rows_score(backend, query, chunk, log_probs)
        parts.append(fit_once(hidden.expand(int(chunk.shape[0]), -1, -1), score, **loop_settings(s)))
    kl, compression, fit = (torch.cat([p[i] for p in parts]) for i in range(3))
    return kl, compression, fit


def loop_settings(s: AnswerM2IBSettings) -> dict[str, Any]:
    """The keyword settings of :func:`~m2ib.methods.bottleneck.fit_once`."""
    return {
        "beta": s.beta,
        "var": s.var,
        "steps": s.steps,
        "lr": s.lr,
        "samples": s.samples,
        "init_alpha": s.init_alpha,
        "seed": s.seed,
    }


def grid_scores(
    scores: torch.Tensor, cells: torch.Tensor, grid: tuple[int, int], spread: torch.Tensor | None = None
) -> torch.Tensor:
    """Token scores [K] placed on the grid [rows, cols]: summed per cell; a token at cell -1 is left out,
    unless ``spread`` [K, rows * cols] (sparse; :attr:`Query.spread`) shares its score among its cells."""
    keep = cells >= 0
    out = torch.zeros(grid[0] * grid[1], dtype=scores.dtype, device=scores.device)
    out.index_add_(0, cells[keep], scores[keep])
    if spread is not None:
        out += torch.sparse.mm(spread.t().to(scores.device, scores.dtype), scores[:, None])[:, 0]
    return out.view(grid)


def upsample(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The grid map bilinearly upsampled to ``size`` and min-max normalised (as the CLIP path does)."""
    big = F.interpolate(grid_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return minmax(big[None])[0]


# Live float tensors of the language model's width per token and noise copy in one decoder block, kept
# for the backward pass (norms, q/k/v, attention output, residuals, the gated MLP's three wide
# tensors): a generous bound, as the CLIP path's ACTIVATIONS_PER_BLOCK.
ACTIVATIONS_PER_BLOCK = 24


def memory_needed(backend: GenerativeBackend, query: Query, s: AnswerM2IBSettings) -> int:
    """Bytes one fit needs at its peak, roughly: the noise of every step, and one step's activations
    on ``samples`` copies of the whole sequence through every block of the language model."""
    text = backend.model.config.get_text_config()
    width, blocks = int(text.hidden_size), int(text.num_hidden_layers)
    length, tokens = int(query.input_ids.shape[1]), int(query.image_positions.numel())
    noise = s.steps * s.samples * tokens * width
    activations = s.samples * length * width * (ACTIVATIONS_PER_BLOCK * blocks + 4)
    logits = s.samples * int(query.answer_ids.numel()) * int(text.vocab_size) * 2
    return 4 * (noise + activations + logits)


def finite(scores: torch.Tensor, s: AnswerM2IBSettings, what: str = "the answer") -> torch.Tensor:
    """``scores``, or one line when a fit diverged."""
    if not torch.isfinite(scores).all():
        raise InputError(
            f"M2IB's fit on {what} diverged (non-finite KL): lower lr (now {s.lr}) or raise var (now {s.var})"
        )
    return scores


def maps_of(token_scores: torch.Tensor, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
    """Token scores [..., K] -> (grid maps [..., rows, cols], image maps [..., H, W] min-max)."""
    flat = token_scores.reshape(-1, token_scores.shape[-1])
    size = (int(query.display.shape[-2]), int(query.display.shape[-1]))
    grids = torch.stack([grid_scores(t, query.cells.cpu(), query.grid, query.spread) for t in flat])
    images = torch.stack([upsample(g, size) for g in grids])
    return grids.view(*token_scores.shape[:-1], *query.grid), images.view(*token_scores.shape[:-1], *size)


def fit_words(
    backend: GenerativeBackend,
    query: Query,
    hidden: torch.Tensor,
    s: AnswerM2IBSettings,
    log_probs: TokenLogProbs | None = None,
) -> WordMaps:
    """One map per answer word: rows of one batched fit, each row's target its word's tokens' log-likelihood
    (``hidden`` and ``log_probs``: the image bottleneck's site, as :func:`image_site` gives them)."""
    ids = [int(i) for i in query.answer_ids.tolist()]
    groups = word_groups(backend.tokenizer, ids, special_indices(backend, ids))
    if not groups:  # an answer of special tokens only: no word to map
        return _no_words(query)
    weights = torch.zeros(len(groups), len(ids))
    for row, (_, tokens) in enumerate(groups):
        weights[row, tokens] = 1.0
    kl, _, _ = fit_rows(backend, query, hidden, weights, s, log_probs)
    token_scores = finite(kl.detach().cpu(), s, "an answer word")
    return WordMaps([t for t, _ in groups], [g for _, g in groups], token_scores, *maps_of(token_scores, query))


def _no_words(query: Query) -> WordMaps:
    k = int(query.image_positions.numel())
    h, w = int(query.display.shape[-2]), int(query.display.shape[-1])
    return WordMaps([], [], torch.zeros(0, k), torch.zeros(0, *query.grid), torch.zeros(0, h, w))


def special_indices(backend: GenerativeBackend, ids: list[int]) -> set[int]:
    """Indices of ``ids`` that are the tokenizer's special tokens (no word holds them)."""
    special = {int(i) for i in (getattr(backend.tokenizer, "all_special_ids", None) or [])}
    return {i for i, t in enumerate(ids) if t in special}


@contextlib.contextmanager
def block_output(block: torch.nn.Module, write: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """``block``'s output hidden states passed through ``write`` for the duration (the hook removed after)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        return (write(output[0]), *output[1:]) if isinstance(output, tuple) else write(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def decoder_blocks(backend: GenerativeBackend, name: str = "prompt_layer") -> Any:
    """The language model's decoder blocks (a module list); one line when it has none."""
    decoder = backend.model.get_decoder() if hasattr(backend.model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    if blocks is None:
        raise InputError(f"{name} > 0 needs a language model with decoder blocks (.get_decoder().layers)")
    return blocks


def decoder_block(backend: GenerativeBackend, layer: int, name: str = "prompt_layer") -> torch.nn.Module:
    """Block ``layer`` (1-based) of the language model's decoder; one line when it has no such block."""
    blocks = decoder_blocks(backend, name)
    if not 1 <= layer <= len(blocks):
        raise InputError(f"{name}={layer} is past the language model's {len(blocks)} blocks")
    return blocks[layer - 1]


def prompt_positions(query: Query) -> torch.Tensor:
    """The prompt's text positions [P]: every position before the answer that is not an image token."""
    keep = torch.ones(query.answer_start, dtype=torch.bool, device=query.image_positions.device)
    keep[query.image_positions] = False
    return keep.nonzero()[:, 0]


def states_site(
    backend: GenerativeBackend, query: Query, image: torch.Tensor, layer: int, pos: torch.Tensor, name: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """R [1, P, D], the states at sequence positions ``pos`` at ``layer`` (0: the input embeddings; l:
    block l's output, the blocks below run once on the unbottlenecked input), with ``image`` [1, K, D]
    as the image tokens, and z [B, P, D] -> the answer's logits [B, A, V] with z in their place."""
    with torch.no_grad():
        base = backend.embeds_with(query, image)  # [1, L, D]
    if layer == 0:

        def at_input(z: torch.Tensor) -> torch.Tensor:
            embeds = base.expand(z.shape[0], -1, -1).clone()
            embeds[:, pos] = z.to(embeds.dtype)
            return backend.answer_logits(query, embeds)

        return base[:, pos].float(), at_input
    block, seen = decoder_block(backend, layer, name), []

    def capture(h: torch.Tensor) -> torch.Tensor:
        seen.append(h[:, pos].float())
        return h

    with torch.no_grad(), block_output(block, capture):
        backend.answer_logits(query, base)

    def in_block(z: torch.Tensor) -> torch.Tensor:
        def write(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            h[:, pos] = z.to(h.dtype)
            return h

        with block_output(block, write):
            return backend.answer_logits(query, base.expand(z.shape[0], -1, -1))

    return seen[0], in_block


def prompt_site(
    backend: GenerativeBackend, query: Query, image: torch.Tensor, layer: int
) -> tuple[torch.Tensor, Score]:
    """R [1, P, D], the prompt's text-token states at ``layer`` (0: the input embeddings; l: block
    l's output), with the image tokens as they are, and the score of z [B, P, D] in their place."""
    hidden, logits = states_site(backend, query, image, layer, prompt_positions(query), "prompt_layer")
    return hidden, lambda z: answer_log_likelihood(logits(z), query.answer_ids)


def image_site(
    backend: GenerativeBackend, query: Query, image: torch.Tensor, layer: int
) -> tuple[torch.Tensor, Score, TokenLogProbs | None]:
    """The image bottleneck's site: R [1, K, D], the score z -> log p(answer | z, prompt) [B], and z ->
    the answer's token log-probabilities [B, A] (None: at the projector site, the default of
    :func:`rows_score`). ``layer`` 0: ``image`` itself, the published place, scored by
    :meth:`GenerativeBackend.rest`; l: block l's output at the image positions, l below the last block
    (after the last block the image states reach no answer token)."""
    if layer == 0:
        return image, answer_score(backend, query), None
    depth = len(decoder_blocks(backend, "image_layer"))
    if layer >= depth:  # past the last block no attention is left: the image states reach no answer token
        raise InputError(
            f"image_layer={layer}: the image states after block {layer} of the language model's {depth} no "
            f"longer reach the answer; use 0 .. {depth - 1}"
        )
    hidden, logits = states_site(backend, query, image, layer, query.image_positions, "image_layer")
    return (
        hidden,
        lambda z: answer_log_likelihood(logits(z), query.answer_ids),
        lambda z: token_log_probs(logits(z), query.answer_ids),
    )


def fit_prompt(
    backend: GenerativeBackend, query: Query, image: torch.Tensor, s: AnswerM2IBSettings
) -> tuple[PromptScores, dict[str, float]]:
    """M2IB on the prompt's text tokens (the image tokens unbottlenecked): per prompt word the mean KL
    of its tokens, as the CLIP text side scores a word; and the fit's numbers."""
    hidden, score = prompt_site(backend, query, image, s.prompt_layer)
    kl, compression, fit = fit_once(hidden, score, **loop_settings(s))
    token_scores = finite(kl[0].detach().cpu(), s, "the prompt")
    pos = prompt_positions(query).tolist()
    index = {p: i for i, p in enumerate(pos)}
    ids = [int(i) for i in query.input_ids[0, : query.answer_start].tolist()]
    breaks = {int(p) for p in query.image_positions.tolist()} | special_indices(backend, ids)
    groups = word_groups(backend.tokenizer, ids, breaks)
    scores = torch.stack([token_scores[[index[p] for p in g]].mean() for _, g in groups]) if groups else torch.zeros(0)
    return PromptScores([t for t, _ in groups], [g for _, g in groups], scores, token_scores), {
        "prompt_compression": float(compression[0]),
        "prompt_log_likelihood_bottlenecked": float(fit[0]),
    }


def fit_answer(backend: GenerativeBackend, query: Query, s: AnswerM2IBSettings) -> AnswerFit:
    """Fit M2IB's bottleneck on ``query``'s image-token states (at ``image_layer``) for its answer's
    log-likelihood; with ``per_word``, one more per answer word (one batched fit); with ``prompt_side``,
    one on the prompt (its image tokens unbottlenecked, at the projector site)."""
    require_memory(
        memory_needed(backend, query, s),
        backend.device,
        f"M2IB on an answer with samples={s.samples} ({int(query.input_ids.shape[1])} tokens a copy)",
        "lower samples",
        settings=("samples",),
    )
    with evaluation_mode(backend.model):
        with torch.no_grad():
            states = backend.image_states(query).float()  # [1, K, D]
            plain = float(backend.rest(query, states)[0])
        hidden, score, log_probs = image_site(backend, query, states, s.image_layer)
        kl_map, compression, fit = fit_once(hidden, score, **loop_settings(s))
        token_scores = finite(kl_map[0].detach().cpu(), s)
        words = fit_words(backend, query, hidden, s, log_probs) if s.per_word else None
        prompt, prompt_info = fit_prompt(backend, query, states, s) if s.prompt_side else (None, {})
    grid_map = grid_scores(token_scores, query.cells.cpu(), query.grid, query.spread)
    image_map = upsample(grid_map, (int(query.display.shape[-2]), int(query.display.shape[-1])))
    info = {
        "log_likelihood": plain,  # the answer's log-likelihood without the bottleneck
        "log_likelihood_bottlenecked": float(fit[0]),  # at the last step, mean over the noise copies
        "compression": float(compression[0]),
        **prompt_info,
    }
    return AnswerFit(token_scores, grid_map, image_map, info, words, prompt)


__all__ = [
    "AnswerFit",
    "AnswerM2IBSettings",
    "PromptScores",
    "WordMaps",
    "answer_score",
    "answer_token_log_probs",
    "fit_answer",
    "fit_prompt",
    "fit_rows",
    "fit_words",
    "grid_scores",
    "image_site",
    "prompt_positions",
    "upsample",
    "word_groups",
]
