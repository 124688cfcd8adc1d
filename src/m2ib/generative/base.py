"""The seam between generative vision-language models and the methods that explain their answers.

A generative VLM (LLaVA, PaliGemma, Qwen2.5-VL, ...) turns the image into a few hundred *image
tokens*: vectors written into the language model's input sequence at placeholder positions. Every
family differs in how those vectors are made (tiles, pixel shuffles, merged patches) but, once
made, the rest is one causal language model over one sequence. A :class:`GenerativeBackend`
hides the family behind five things:

* :meth:`~GenerativeBackend.prepare`: image + prompt + teacher-forced answer -> a :class:`Query`
  (the model's inputs, where the image tokens sit, their map back to the image grid, the answer's span);
* :meth:`~GenerativeBackend.image_states`: the image-token states where they enter the language
  model (the projector's output for LLaVA) [1, K, D];
* :meth:`~GenerativeBackend.rest`: states [B, K, D] -> the answer's log-likelihood [B], the language
  model re-run with those states in place of the image tokens (differentiable in the states);
* :meth:`~GenerativeBackend.generate`: the model's own answer to a prompt (greedy);
* :attr:`~GenerativeBackend.image_token` and the prompt checks that need no model.

A family is one file: a backend subclass and a ``register(GenerativeFamily(...))`` line.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..registry import Description, Registry


@dataclass(frozen=True)
class Query:
    """One image, prompt and teacher-forced answer, prepared for one model (tensors on its device).

    ``inputs`` are the model's keyword inputs for the prompt followed by the answer's tokens (the
    family's own keys: ``input_ids``, ``attention_mask``, ``pixel_values``, ...). ``image_positions``
    [K] are the sequence positions of the image tokens, in the order the family fills them;
    ``cells`` [K] maps each to its cell of the ``grid`` (rows, cols; row-major), -1 for a token
    that covers no pixels (a class token, a row separator). The answer's tokens are
    ``input_ids[0, answer_start:answer_start + len(answer_ids)]``. ``display`` [3, H, W] in [0, 1]
    is the image as the model sees it (after the processor's resize and crop). ``spread``, where a
    family has tokens that each cover several cells (LLaVA-NeXT's base image), is a sparse
    [K, rows * cols] matrix: each such token's share of each cell (its area there over its whole
    area); those tokens have cell -1, so whatever reads ``cells`` alone treats them as covering no
    single cell: :func:`~m2ib.generative.m2ib.grid_scores` adds their spread scores, RISE masks
    them by the shares' weighted mean of the mask, occlusion hides them with every square they have
    a share in. None: every token is one cell or none."""

    inputs: dict[str, torch.Tensor]
    image_positions: torch.Tensor
    cells: torch.Tensor
    grid: tuple[int, int]
    answer_start: int
    answer_ids: torch.Tensor
    display: torch.Tensor
    spread: torch.Tensor | None = None

    @property
    def answer_end(self) -> int:
        return self.answer_start + int(self.answer_ids.numel())

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


def answer_log_likelihood(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Summed log-likelihood [B] of ``answer_ids`` [A] under ``logits`` [B, A, V], where row ``a``
    of the logits is the prediction made *before* answer token ``a`` (teacher forcing)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    index = answer_ids.to(logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return logp.gather(-1, index)[..., 0].sum(-1)


Extents = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def area_spread(tokens: Extents, cells: Extents, first: int, total: int) -> torch.Tensor:
    """A :attr:`Query.spread` for a block of tokens laid on their own grid over the image: token ``first
    + a * nb + b`` covers rows ``tokens[0]`` (begin, end) [a] and columns ``tokens[1]`` [b], cell ``i * cols + j``
    rows ``cells[0]`` [i] and columns ``cells[1]`` [j], all in one frame (the original image, or any linear
    map of it); a token's share of a cell is the area both cover over the token's (separable: rows times
    columns). Sparse [total, rows * cols] on the CPU."""
    shares = []
    for (begin, end), (low, high) in zip(tokens, cells):
        extent = (end - begin)[:, None]
        overlap = torch.minimum(end[:, None], high[None]) - torch.maximum(begin[:, None], low[None])
        overlap = torch.where(overlap > 1e-9 * extent, overlap, 0.0)  # edges that meet, up to rounding: no area
        shares.append((overlap / extent).float())  # [tokens, cells] along the axis
    (a, i), (b, j) = shares[0].nonzero().T, shares[1].nonzero().T
    rows = first + (a[:, None] * shares[1].shape[0] + b[None, :]).flatten()
    columns = (i[:, None] * shares[1].shape[1] + j[None, :]).flatten()
    values = (shares[0][a, i][:, None] * shares[1][b, j][None, :]).flatten()
    shape = (total, shares[0].shape[1] * shares[1].shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, columns]), values, shape, check_invariants=True).coalesce()


def whole_image_spread(tiles: tuple[int, int], n: int, tile: int, block: int, total: int) -> torch.Tensor:
    """The :attr:`Query.spread` of a whole-image view's n x n tokens, the last of ``total``, over a fine grid of
    R x C tiles' n x n tokens, both resizes of one image to ``tile`` px a tile (Idefics3's global image,
    InternVL's thumbnail), each token reading a ``block`` px square. In the stitched tiles' px (R tile x C
    tile), tile cell r n + q covers r tile + q block .. + block, and whole-image token a covers a block R ..
    (a + 1) block R (R times its own px: the whole image is R tiles high). Integers: no rounding; a tile's
    last ``tile - n block`` px, if any, are read by no token."""
    extents = []
    for count in tiles:
        q = torch.arange(count * n, dtype=torch.float64)
        start = (q // n) * tile + (q % n) * block
        a = torch.arange(n, dtype=torch.float64) * block * count
        extents.append(((a, a + block * count), (start, start + block)))
    (rows_t, rows_c), (cols_t, cols_c) = extents
    return area_spread((rows_t, cols_t), (rows_c, cols_c), total - n * n, total)


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class GenerativeBackend(ABC):
    """A generative VLM and its processor, behind the seam above. Never changes the model."""

    #: the placeholder text a prompt must contain once, where the image goes (the family's default)
    image_token: str = "<image>"

    #: the image processor's normalisation (mean, std of every channel) where it does not say its own
    default_normalisation: tuple[float, float] = (0.0, 1.0)

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model: Any = model  # a transformers model: its methods are the family's to call
        self.processor = processor
        # the processor's own placeholder wins over the family's default
        self.image_token = str(getattr(processor, "image_token", None) or type(self).image_token)

    @property
    def config(self) -> Any:
        return self.model.config

    def unnormalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` [3, H, W] as the processor normalised them, back to [0, 1]."""
        images = getattr(self.processor, "image_processor", None)
        mean0, std0 = self.default_normalisation
        mean = torch.tensor(getattr(images, "image_mean", None) or [mean0] * 3).view(3, 1, 1)
        std = torch.tensor(getattr(images, "image_std", None) or [std0] * 3).view(3, 1, 1)
        return (pixels.float().cpu() * std + mean).clamp(0, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    # --- what a family provides ----------------------------------------------------------
    @abstractmethod
    def prompt_inputs(self, image: Any, prompt: str) -> dict[str, torch.Tensor]:
        """The processor's tensors for a PIL ``image`` and a ``prompt`` (already checked), batch of one."""

    @abstractmethod
    def image_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """(positions [K], cells [K], (rows, cols)) of the image tokens in ``inputs``."""

    @abstractmethod
    def image_states(self, query: Query) -> torch.Tensor:
        """The image-token states [1, K, D] where they enter the language model, in layout order."""

    @abstractmethod
    def display_image(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image as the model sees it, [3, H, W] in [0, 1]."""

    def image_spread(
        self, inputs: dict[str, torch.Tensor], cells: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """The :attr:`Query.spread` of tokens that cover several cells, sparse [K, rows * cols] on the CPU;
        default None (every token is one cell or none)."""
        return None

    def answer_logits(self, query: Query, embeds: torch.Tensor) -> torch.Tensor:
        """Logits [B, A, V] predicting the answer's tokens from input embeddings [B, L, D].
        Default: the model's own forward on ``inputs_embeds``, logits kept for the answer only."""
        start, end = query.answer_start, query.answer_end
        mask = query.inputs["attention_mask"].expand(embeds.shape[0], -1)
        keep = embeds.shape[1] - (start - 1)  # the positions start-1 .. L-1
        out = self.model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep, use_cache=False)
        return out.logits[:, : end - start]

    # --- the seam, built on the above ----------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """A prompt with no image slot, or several, is one line (before any model work)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: give a question or instruction about the image")
        count = prompt.count(self.image_token)
        if count != 1:
            raise InputError(
                f"the prompt must contain the image placeholder {self.image_token!r} exactly once "
                f"(found {count}), e.g. 'USER: {self.image_token}\\nWhat is shown? ASSISTANT:'"
            )

    def answer_ids(self, answer: str) -> torch.Tensor:
        """The answer's token ids [A] (no special tokens added); an answer of no tokens is one line."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"] if isinstance(answer, str) else []
        if len(ids) == 0:
            raise InputError(f"the answer {answer!r} tokenizes to no token: give a non-empty answer")
        return torch.as_tensor(ids, dtype=torch.long)

    def append_answer(self, inputs: dict[str, torch.Tensor], answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``inputs`` with the answer's tokens after the prompt (a family with more per-token inputs,
        such as PaliGemma's ``token_type_ids``, extends them here)."""
        ids = answer_ids.to(inputs["input_ids"].device)[None]
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(ids)], 1)
        return out

    def prepare(self, image: Any, prompt: str, answer: str) -> Query:
        """The :class:`Query` for a PIL ``image``, a ``prompt`` with one image slot, and ``answer``."""
        self.check_prompt(prompt)
        answer_ids = self.answer_ids(answer)
        prompt_inputs = self.prompt_inputs(image, prompt)
        start = int(prompt_inputs["input_ids"].shape[1])
        inputs = {k: v.to(self.device) for k, v in self.append_answer(prompt_inputs, answer_ids).items()}
        positions, cells, grid = self.image_layout(inputs)
        if positions.numel() == 0:
            raise InputError(f"the prompt has no image token after processing: does it contain {self.image_token!r}?")
        if int(positions.max()) >= start:
            raise InputError("the answer contains the image placeholder: give the answer as plain text")
        spread = self.image_spread(inputs, cells, grid)
        display = self.display_image(inputs)
        return Query(inputs, positions, cells, grid, start, answer_ids.to(self.device), display, spread)

    def embeds_with(self, query: Query, states: torch.Tensor) -> torch.Tensor:
        """The language model's input embeddings [B, L, D] with ``states`` [B, K, D] at the image positions."""
        base = self.model.get_input_embeddings()(query.input_ids)  # [1, L, D]
        embeds = base.expand(states.shape[0], -1, -1).clone()
        embeds[:, query.image_positions] = states.to(embeds.dtype)
        return embeds

    def rest(self, query: Query, states: torch.Tensor) -> torch.Tensor:
        """The answer's summed log-likelihood [B] with ``states`` [B, K, D] as the image tokens."""
        logits = self.answer_logits(query, self.embeds_with(query, states))
        return answer_log_likelihood(logits, query.answer_ids)

    def generate(self, image: Any, prompt: str, max_new_tokens: int = 32) -> str:
        """The model's greedy answer to ``prompt`` about ``image`` (special tokens dropped)."""
        self.check_prompt(prompt)
        inputs = {k: v.to(self.device) for k, v in self.prompt_inputs(image, prompt).items()}
        with torch.no_grad(), evaluation_mode(self.model):
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        return str(self.tokenizer.decode(new, skip_special_tokens=True)).strip()


@dataclass(frozen=True)
class GenerativeFamily:
    """One generative VLM family: how its models are recognised and which backend adapts them."""

    name: str  # e.g. "llava"
    supports: str  # what an error lists as accepted, e.g. "transformers LlavaForConditionalGeneration"
    recognises: Callable[[torch.nn.Module], bool]
    backend: Callable[[torch.nn.Module, Any], GenerativeBackend]
    model_class: str | None = None  # transformers: the class a saved model's config.json names in ``architectures``


#: Every generative family, in registration order (one file each in m2ib.generative).
GENERATIVE_FAMILIES: Registry[GenerativeFamily] = Registry(
    "generative model family",
    describe=lambda f: Description("generative model family", f.name, f.supports, "", (), f.backend.__module__),
)
register = GENERATIVE_FAMILIES.register


def class_names(model: torch.nn.Module) -> set[str]:
    """The names of ``model``'s class and its bases (recognises a library's class without importing it)."""
    return {c.__name__ for c in type(model).__mro__}


def is_class(name: str) -> Callable[[torch.nn.Module], bool]:
    """A family's ``recognises``: the model's class, or one of its bases, is named ``name``."""
    return lambda model: name in class_names(model)


def generative_backend(model: torch.nn.Module | GenerativeBackend, processor: Any = None) -> GenerativeBackend:
    """The backend of the first family that recognises ``model``; one line naming the supported ones otherwise."""
    if isinstance(model, GenerativeBackend):
        return model
    family = next((f for f in GENERATIVE_FAMILIES.values() if f.recognises(model)), None)
    if family is None:
        supported = "; ".join(f.supports for f in GENERATIVE_FAMILIES.values())
        raise InputError(f"{type(model).__name__} is not a supported generative model: supported are {supported}")
    if processor is None:
        raise InputError(
            f"a {type(model).__name__} needs its processor: pass processor=AutoProcessor.from_pretrained(...)"
        )
    return family.backend(model, processor)


__all__ = [
    "GENERATIVE_FAMILIES",
    "GenerativeBackend",
    "GenerativeFamily",
    "Query",
    "answer_log_likelihood",
    "area_spread",
    "class_names",
    "is_class",
    "evaluation_mode",
    "generative_backend",
    "register",
    "whole_image_spread",
]
