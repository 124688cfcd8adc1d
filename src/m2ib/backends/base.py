"""The backend interface: everything a method needs from a model, whatever library made it.

A backend turns inputs into tensors, runs a tower up to the output of one of its blocks
(`prefix`), runs the rest of that tower from hidden states there (`suffix`, with the
tower's own masks, pooling and projection), and embeds whole inputs (`embed`). Methods,
metrics, the CLI and the viewer only talk to this interface.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from PIL import Image

from ..errors import InputError

Modality = Literal["image", "text"]
MODALITIES: tuple[Modality, ...] = ("image", "text")


@dataclass(frozen=True)
class Geometry:
    """Shapes a method needs to turn token scores into maps; read from the model's config.

    Attributes:
        image_size: (height, width) of the model's input in pixels.
        patch_grid: (rows, cols) of image patches (ViTs; ResNet stages: that of the last stage).
        image_prefix_tokens: tokens before the patches in the image tower (CLS, registers).
        vision_layers: number of blocks in the image tower.
        text_layers: number of blocks in the text tower.
        context_length: most text tokens the text tower reads, start/end included.
    """

    image_size: tuple[int, int]  # (height, width) of the model's input in pixels
    patch_grid: tuple[int, int]  # (rows, cols) of image patches
    image_prefix_tokens: int  # tokens before the patches in the image tower (CLS, registers)
    vision_layers: int  # number of blocks in the image tower
    text_layers: int  # number of blocks in the text tower
    context_length: int  # most text tokens the text tower reads, start/end included

    def layers(self, modality: Modality) -> int:
        """The number of blocks of ``modality``'s tower."""
        return self.vision_layers if modality == "image" else self.text_layers


@dataclass(frozen=True)
class ImageBatch:
    """Preprocessed images."""

    pixel_values: torch.Tensor  # [N, 3, H, W], normalised as the model expects
    display: torch.Tensor | None = None  # [N, 3, H, W] in [0, 1]: the same pixels before normalising
    sources: tuple[str, ...] = ()  # where each image came from (path or a description)

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> ImageBatch:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageBatch(
            self.pixel_values[index.to(self.pixel_values.device)],
            None if self.display is None else self.display[index.to(self.display.device)],
            tuple(self.sources[i] for i in index.tolist()) if self.sources else (),
        )

    def repeat_interleave(self, k: int) -> ImageBatch:
        return self.select(torch.arange(len(self)).repeat_interleave(k))

    def to(self, device: torch.device | str) -> ImageBatch:
        return replace(self, pixel_values=self.pixel_values.to(device))


@dataclass(frozen=True)
class TextBatch:
    """Tokenised texts, padded on the right to the longest one."""

    input_ids: torch.Tensor  # [N, T] token ids
    attention_mask: torch.Tensor  # [N, T], 1 for real tokens (start/end included), 0 for padding
    texts: tuple[str, ...] = ()  # the texts as given
    tokens: tuple[tuple[str, ...], ...] = ()  # readable tokens per text, without padding
    special: tuple[tuple[int, ...], ...] = ()  # per text, indices of start/end tokens
    words: tuple[tuple[int, ...], ...] = ()  # per text, each token's word index (-1: start/end), for display

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    def select(self, index: torch.Tensor | Sequence[int]) -> TextBatch:
        index = torch.as_tensor(index, dtype=torch.long)
        rows = index.tolist()
        return TextBatch(
            self.input_ids[index.to(self.input_ids.device)],
            self.attention_mask[index.to(self.attention_mask.device)],
            tuple(self.texts[i] for i in rows) if self.texts else (),
            tuple(self.tokens[i] for i in rows) if self.tokens else (),
            tuple(self.special[i] for i in rows) if self.special else (),
            tuple(self.words[i] for i in rows) if self.words else (),
        )

    def repeat_interleave(self, k: int) -> TextBatch:
        return self.select(torch.arange(len(self)).repeat_interleave(k))

    def to(self, device: torch.device | str) -> TextBatch:
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device))


Batch = ImageBatch | TextBatch
Part = tuple[str, list[Any]]  # (label, modules or parameters): one step of the sanity check's cascade

# Layer index for prefix/suffix meaning "the input of block 0" (token or patch embeddings after
# any pre-norm): prefix(m, batch, EMBEDDINGS) returns it, suffix(m, hidden, EMBEDDINGS, batch) runs
# every block. Used by gradient methods that differentiate w.r.t. the embeddings.
EMBEDDINGS = -1


@dataclass
class AttentionRecord:
    """One block's self-attention during a recorded forward pass (tensors stay in the graph)."""

    probs: torch.Tensor  # [N, heads, T, T] softmax attention probabilities (masks applied)
    query: torch.Tensor  # [N, heads, T, head_dim]
    key: torch.Tensor  # [N, heads, T, head_dim]
    value: torch.Tensor  # [N, heads, T, head_dim]
    output: torch.Tensor  # [N, T, width] attention output after the out-projection, before the residual
    hidden: torch.Tensor | None = None  # [N, T, width] the block's output (residual stream after the MLP)


@dataclass
class Backend(ABC):
    """Adapter between one model family and m2ib's methods (what :func:`m2ib.load` returns).

    Subclasses implement the abstract methods; everything else is shared. A backend
    never changes the model it wraps outside :meth:`attribution_mode`, which restores
    the training flags and ``requires_grad`` flags it touched.

    Shapes: N inputs; images [N, 3, H, W] (``geometry.image_size``), texts [N, T] token ids;
    hidden states [N, tokens, width] (image: ``image_prefix_tokens`` + rows * cols tokens);
    embeddings [N, embed_dim], projected, not normalised.

    Attributes:
        model: the wrapped ``torch.nn.Module`` (never modified).
        name: how the model was named when loaded (hub id, directory, built-in name).
        recommended: settings the model ships with, per method (``{"m2ib": {"vision_layer": 2}}``);
            :func:`m2ib.explain` fills the settings you do not give from them.
        settings_source: where ``recommended`` was replaced from (:meth:`with_settings`), or None.
        dtype_copies: copies of this backend in other dtypes (:meth:`in_dtype`).

    Examples:
        >>> import m2ib
        >>> model = m2ib.load("shapes")
        >>> model.geometry
        Geometry(image_size=(96, 96), patch_grid=(16, 16), image_prefix_tokens=1, vision_layers=6,
                 text_layers=4, context_length=32)
        >>> texts = model.tokenize(["a red circle"])
        >>> texts.input_ids.shape, texts.tokens[0]
        (torch.Size([1, 5]), ('<|startoftext|>', 'a', 'red', 'circle', '<|endoftext|>'))
        >>> hidden = model.prefix("text", texts, 2)  # the output of block 2: [N, T, width]
        >>> hidden.shape, model.suffix("text", hidden, 2, texts).shape  # the rest: [N, embed_dim]
        (torch.Size([1, 5, 128]), torch.Size([1, 128]))
        >>> from PIL import Image
        >>> images = model.preprocess_images([Image.open("examples/scene3.png").convert("RGB")])
        >>> images.pixel_values.shape, model.prefix("image", images, 4).shape  # CLS + 16 x 16 patches
        (torch.Size([1, 3, 96, 96]), torch.Size([1, 257, 192]))
    """

    model: torch.nn.Module
    name: str = "model"  # how the model was named when loaded (hub id, directory, built-in name)
    # Settings a model ships with (e.g. the layers chosen on a validation split), per method.
    recommended: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where ``recommended`` was replaced from (:meth:`with_settings`): a settings file's path, "mapping"; None: never.
    settings_source: str | None = None
    # Copies of this backend with the weights in another dtype (for opt-in reduced precision).
    dtype_copies: dict[torch.dtype, Backend] = field(default_factory=dict, repr=False, compare=False)
    # modality -> the list an open record_attention() fills; family adapters read it in their forward.
    _recording: dict[Modality, list[AttentionRecord]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    # --- what a family adapter implements -------------------------------------------
    @property
    @abstractmethod
    def geometry(self) -> Geometry:
        """The model's shapes: input size, patch grid, prefix tokens, blocks per tower, context length."""

    @abstractmethod
    def preprocess_images(self, images: Sequence[Image.Image], sources: Sequence[str] = ()) -> ImageBatch:
        """RGB PIL images -> the model's input tensors (resized, cropped, normalised)."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        """Texts -> token ids with start/end tokens, truncated to the context length."""

    def with_settings(self, values: Mapping[str, Mapping[str, Any]], source: str) -> Backend:
        """A copy of this backend (the same model) whose recommended settings are ``values`` in place of
        its own, setting by setting, for the methods ``values`` names (checked by the caller:
        :func:`m2ib.settings_file.read_settings`); this backend is left as it was."""
        from ..settings_file import overlay

        return replace(self, recommended=overlay(self.recommended, values), settings_source=source, dtype_copies={})

    def at_grid_of(self, images: Sequence[Any]) -> Backend:
        """This backend at the patch grid of ``images``, for models whose grid follows each image
        (SigLIP 2 NaFlex); every other backend has one grid and returns itself."""
        return self

    def text_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, texts: Sequence[str] = ()
    ) -> TextBatch:
        """A TextBatch from token ids the user made (readable tokens, start/end positions)."""
        raise NotImplementedError(f"{type(self).__name__} does not accept input_ids; pass texts")

    @abstractmethod
    def prefix(self, modality: Modality, batch: Batch, layer: int) -> torch.Tensor:
        """Hidden states at the output of block ``layer`` (0-based; ``EMBEDDINGS`` for the
        input of block 0): [N, tokens, width]. Differentiable w.r.t. the pixels unless called
        under ``torch.no_grad()``."""

    @abstractmethod
    def suffix(self, modality: Modality, hidden: torch.Tensor, layer: int, batch: Batch) -> torch.Tensor:
        """Run blocks ``layer + 1 ...`` on ``hidden``, then pool and project: [N, embed_dim].

        ``hidden`` may hold ``k`` copies of each item of ``batch`` (``N * k`` rows, copies of
        one item adjacent); masks and pooling positions are repeated to match.
        """

    # --- optional capabilities -------------------------------------------------------------
    @property
    def supports_attention(self) -> bool:
        """Whether :meth:`record_attention` works (attention-based methods need it)."""
        return False

    def can_record_attention(self, modality: Modality) -> bool:
        """Whether ``modality``'s tower has attention blocks to record (hook)."""
        return self.supports_attention

    @contextlib.contextmanager
    def record_attention(self, modality: Modality) -> Iterator[list[AttentionRecord]]:
        """Context manager: while open, every forward pass of ``modality``'s tower appends one
        :class:`AttentionRecord` per block, in order, to the list it yields (full attention, no
        shortcuts). Nothing stays installed after it closes."""
        if not self.can_record_attention(modality):
            raise NotImplementedError(f"the {modality} tower of {self.name!r} has no attention blocks to record")
        if modality in self._recording:
            raise RuntimeError(f"already recording the {modality} tower's attention")
        records: list[AttentionRecord] = []
        self._recording[modality] = records
        try:
            yield records
        finally:
            del self._recording[modality]

    def pooled_positions(self, modality: Modality, batch: Batch) -> torch.Tensor | None:
        """Index [N] of the token whose final hidden state the tower's head turns into the
        embedding (the class token, the end-of-text token, SigLIP's last text position), or
        ``None`` when the head reads every token (average or attention pooling). Attention-based
        methods read this token's row, so a family answers it from the same rule its head uses."""
        raise NotImplementedError(f"{type(self).__name__} does not say which token its {modality} head pools")

    def cascade_parts(self, modality: Modality) -> list[Part]:
        """``modality``'s tower from the top down, as the sanity check randomises it: ``("head",
        [...])``, ``("block L-1", [block])`` ... ``("block 0", [block])``, ``("embeddings", [...])``."""
        raise InputError(f"the sanity check does not know the towers of {type(self).__name__}")

    def can_pool(self, modality: Modality, rule: str) -> bool:
        """Whether :meth:`pooling` can make ``modality``'s head read the token ``rule`` picks
        (``"argmax"``: the largest id; ``"eos"``, ``"first"``, ``"last"``)."""
        return False

    def pooling(self, modality: Modality, rule: str) -> contextlib.AbstractContextManager[None]:
        """A context in which ``modality``'s head (and :meth:`pooled_positions`) read the token
        ``rule`` picks instead of the model's own; restored after. Never changes the model."""
        raise InputError(f"the {modality} tower of {self.name!r} ({type(self).__name__}) cannot pool by {rule!r}")

    # --- shared ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype

    def num_layers(self, modality: Modality) -> int:
        """The number of blocks of ``modality``'s tower (``geometry.layers``)."""
        return self.geometry.layers(modality)

    def token_grid(self, modality: Modality, layer: int) -> tuple[int, int]:
        """(rows, cols) of the image tokens that follow the ``image_prefix_tokens`` in the hidden
        states at the output of block ``layer`` (``EMBEDDINGS``: the input of block 0).

        ViTs keep one patch grid at every layer (this default: ``geometry.patch_grid``); towers
        whose grid shrinks with depth (ResNet stages) override it.
        """
        return self.geometry.patch_grid

    def image_grid_of(self, tokens: int) -> tuple[int, int] | None:
        """The grid of image-token scores [N, ``tokens``] (prefix tokens included): that of the
        first layer whose hidden states have that many tokens, else ``None``."""
        prefix = self.geometry.image_prefix_tokens
        for layer in (EMBEDDINGS, *range(self.num_layers("image"))):
            rows, cols = self.token_grid("image", layer)
            if prefix + rows * cols == tokens:
                return rows, cols
        return None

    def resolve_layer(self, modality: Modality, layer: int, setting: str = "layer") -> int:
        """A layer index (negative counts from the end) -> a checked non-negative index."""
        n = self.num_layers(modality)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InputError(f"{setting}={layer!r} must be an integer block index")
        if not -n <= layer < n:
            tower = "image" if modality == "image" else "text"
            raise InputError(
                f"{setting}={layer} is outside the {tower} encoder's {n} blocks: "
                f"use 0..{n - 1} (or -{n}..-1 from the end)"
            )
        return layer % n

    def display_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed inputs [N, 3, H, W] -> the pictures in [0, 1] (for figures). Hook;
        families that know their normalisation override it, the default is grey."""
        return torch.full_like(pixel_values, 0.5, dtype=torch.float32)

    def in_dtype(self, dtype: torch.dtype) -> Backend:
        """This backend with a copy of the weights in ``dtype`` (made once, then cached)."""
        if dtype == self.dtype:
            return self
        if dtype not in self.dtype_copies:
            model = copy.deepcopy(self.model).to(dtype)
            self.dtype_copies[dtype] = replace(self, model=model, dtype_copies={})
        return self.dtype_copies[dtype]

    def embed(self, modality: Modality, batch: Batch) -> torch.Tensor:
        """Projected (not normalised) embeddings [N, embed_dim] of whole inputs."""
        last = self.num_layers(modality) - 1
        return self.suffix(modality, self.prefix(modality, batch, last), last, batch)

    @contextlib.contextmanager
    def attribution_mode(self) -> Iterator[None]:
        """Eval mode and frozen weights for the duration; the model's flags are restored after."""
        modules = list(self.model.modules())
        training = [m.training for m in modules]
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            self.model.eval()
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            for p in params:
                p.requires_grad_(True)
            for m, flag in zip(modules, training):
                m.training = flag
