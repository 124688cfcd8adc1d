"""The shapes world's vocabulary, noise model and the scene it describes.

Everything a scene is made of: the colour and shape names, the sizes and gaps of the layout,
the noise bounds that make the masks exact, and the :class:`Scene` / :class:`ShapeObject`
records that :func:`~m2ib.datasets.shapes.render_scene` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

#: Object colours, name -> RGB (0..255).  Insertion order is canonical.
#: All are strongly saturated (max - min channel >= 150) and pairwise at least
#: 90 apart in their most different channel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 180, 40),
    "blue": (35, 75, 230),
    "yellow": (235, 215, 25),
    "orange": (245, 130, 20),
    "purple": (150, 40, 210),
}

#: Shapes, canonical order.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Object side length as a fraction of the image side.
SIZE_FRACTION: tuple[float, float] = (0.18, 0.32)
# Minimum number of background pixels between two objects' boxes.
OBJECT_GAP = 3
# Minimum number of pixels between an object's box and the image border.
BORDER = 1

# Noise model (all in [0, 1] intensity units).
OBJECT_NOISE_SD = 0.015
#: Largest per-channel deviation of an object pixel from its nominal colour
#: (before the final quantisation to multiples of 1/255, which adds <= 0.5/255).
OBJECT_NOISE_MAX = 10 / 255
# Background pixels are forced to have chroma (max - min channel) <= this.
_BACKGROUND_MAX_CHROMA = 60 / 255
#: Lower bound on the max-channel distance between any background pixel and
#: any object colour: (min object chroma - max background chroma) / 2.
BACKGROUND_MIN_DISTANCE = (min(max(c) - min(c) for c in COLOURS.values()) / 255 - _BACKGROUND_MAX_CHROMA) / 2


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.  Its exact mask is ``scene.masks[index]``."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x, y, w, h: tight box of the mask


# eq=False: the tensors make field-wise equality meaningless; scenes compare
# (and hash) by identity.
@dataclass(frozen=True, eq=False)
class Scene:
    seed: int
    size: int
    image: torch.Tensor  # float32 [3, size, size] in [0, 1], multiples of 1/255
    masks: torch.Tensor  # bool [n_objects, size, size]
    objects: tuple[ShapeObject, ...]

    def to_pil(self) -> Image.Image:
        """The image as an RGB uint8 PIL image (lossless: pixels are k/255)."""
        arr = (self.image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
        return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)

    def index_of(self, colour: str, shape: str) -> int:
        """Index of the object with this (colour, shape), or -1."""
        for i, o in enumerate(self.objects):
            if o.colour == colour and o.shape == shape:
                return i
        return -1

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((o.colour, o.shape) for o in self.objects)
