"""The interaction figure: the image once per phrase, each with that phrase's signed map.

Red where the phrase and the region raise the similarity together, blue where they lower it;
one colour scale for all panels (the largest |score| of any panel), so panels compare. Default
phrases: each word of the caption but articles and conjunctions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .canvas import load_mpl, quiet_missing_glyphs
from .overlay import to_pil

if TYPE_CHECKING:
    from ..interactions.result import Interaction

#: Words the default figure leaves out: they name nothing in the image.
FUNCTION_WORDS = frozenset({"a", "an", "the", "and", "of", "with", "in", "on", ",", "."})


def content_words(interaction: Interaction) -> list[str | list[int]]:
    """The caption's words that name something (as text; tokens by position without offsets)."""
    if interaction.offsets is None:
        return [[i] for i in interaction.words]
    words: list[str | list[int]] = []
    for word in interaction.text.split():
        stripped = word.strip(",.;:!?")
        if stripped and stripped.lower() not in FUNCTION_WORDS and stripped not in words:
            words.append(stripped)
    return words


def signed_overlay(image: torch.Tensor, signed: torch.Tensor, scale: float) -> torch.Tensor:
    """[3, H, W] in [0, 1]: the image dimmed (colours kept: they are what captions name), red for
    positive and blue for negative scores."""
    grey = image.float() * 0.55 + 0.2
    level = (signed.float() / max(scale, 1e-12)).clamp(-1, 1)
    red = torch.tensor([0.85, 0.1, 0.1])[:, None, None]
    blue = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    colour = torch.where(level >= 0, red, blue)
    alpha = level.abs()[None] * 0.8
    return grey * (1 - alpha) + colour * alpha


@quiet_missing_glyphs
def interaction_figure(interaction: Interaction, phrases: Sequence[str | Sequence[int]] | None = None,
                       panel_inches: float = 2.0, dpi: int = 100):
    """A PIL image: one panel per phrase (default :func:`content_words`), titled with the phrase
    and the sum of its scores."""
    mpl = load_mpl()
    chosen: Sequence[str | Sequence[int]] = list(phrases) if phrases is not None else content_words(interaction)
    if not chosen:
        chosen = [interaction.words or list(range(len(interaction.tokens)))]
    maps = [interaction.span_map(p if isinstance(p, str) else list(p)) for p in chosen]
    scale = max(float(m.abs().max()) for m in maps)
    n = len(chosen) + 1
    head = 0.5  # inches of title above the panels
    fig = mpl.Figure(figsize=(panel_inches * n, panel_inches + head), dpi=dpi)
    canvas = mpl.FigureCanvasAgg(fig)
    fig.text(0.5, 1 - 0.08 / (panel_inches + head), f"{interaction.text}\n{interaction.method} · {interaction.model}"
             f" · cosine {interaction.similarity:.3f} · red +, blue −, one scale ±{scale:.3g}", fontsize=8,
             ha="center", va="top")
    box = panel_inches * 0.8 / (panel_inches + head)  # panel height as a share of the figure's
    for k, (phrase, signed) in enumerate([("image", None), *zip(chosen, maps)]):
        ax = fig.add_axes((k / n + 0.1 / n, 0.03, 0.8 / n, box))
        ax.set_axis_off()
        if signed is None:
            ax.imshow(interaction.image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title("image", fontsize=8)
            continue
        picture = signed_overlay(interaction.image, signed, scale)
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        label = phrase if isinstance(phrase, str) else " ".join(interaction.tokens[i] for i in phrase)
        ax.set_title(f"{label} (sum {_grid_sum(interaction, phrase):+.3g})", fontsize=8)
    canvas.draw()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8)
    width, height = canvas.get_width_height()
    return to_pil(rgba.reshape(height, width, 4)[..., :3].permute(2, 0, 1).float() / 255)


def _grid_sum(interaction: Interaction, phrase: str | Sequence[int]) -> float:
    return float(interaction.span_grid(phrase if isinstance(phrase, str) else list(phrase)).sum())
