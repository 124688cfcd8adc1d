"""Reading user inputs: images from paths, PIL images or tensors; texts. Errors are one line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# One image for certain: a tensor is one image [3, H, W] or a batch [N, 3, H, W], known only at run time.
OneImage = str | os.PathLike | Image.Image
ImageInput = OneImage | torch.Tensor


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float greyscale rescaled, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            array = array / 65535.0
        else:  # 32-bit int or float: stretch its own range
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
        grey = np.nan_to_num(np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageInput) -> tuple[Image.Image, str]:
    """An RGB PIL image (EXIF orientation applied) and a name for it.

    Tensors are read as unnormalised images: [3, H, W] or [1, H, W] (or [H, W]) with values
    in [0, 1] for floats or 0..255 for uint8.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source)), "<PIL image>"
    if isinstance(source, torch.Tensor):
        return _tensor_to_pil(source), "<tensor>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: image file not found")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not an image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = _to_rgb(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"{path}: cannot read image ({reason}); pass a PNG, JPEG or another format Pillow reads"
            ) from None
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: image too large ({exc})") from None
        return image, str(path)
    raise InputError(f"cannot use {type(source).__name__} as an image: pass a file path, a PIL image or a tensor")


def _tensor_to_pil(t: torch.Tensor) -> Image.Image:
    t = t.detach().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise InputError(
            f"image tensor of shape {tuple(t.shape)}: expected [3, H, W], [1, H, W] or [H, W]"
            " (for preprocessed model inputs use pixel_values=)"
        )
    if t.dtype == torch.uint8:
        array = t.numpy()
    else:
        t = t.float()
        if not torch.isfinite(t).all():
            raise InputError("image tensor contains NaN or inf values")
        if t.min() < 0 or t.max() > 1:
            raise InputError(
                "float image tensor has values outside [0, 1]; pass an unnormalised image"
                " (or preprocessed model inputs with pixel_values=)"
            )
        array = (t * 255).round().to(torch.uint8).numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")


def check_texts(texts: Sequence[str]) -> list[str]:
    out = []
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"texts must be strings, got {type(text).__name__}")
        if not text.strip():
            raise InputError("empty text: give the words to explain (e.g. 'a photo of a cat')")
        out.append(text)
    return out


@dataclass(frozen=True)
class ImagePreprocessing:
    """CLIP-style preprocessing: resize the shorter side, centre-crop, scale, normalise.

    ``resize_mode="squash"`` resizes to the crop size whatever the aspect ratio, with no crop
    (SigLIP, OpenCLIP's ``squash``). ``crop_rounding="round"`` places the centre crop as
    torchvision does (``round((h - ch) / 2)``, OpenCLIP and OpenAI ``clip``); ``"floor"`` as
    transformers does.
    """

    shortest_edge: int  # the shorter side is resized to this many pixels
    crop: tuple[int, int]  # (height, width) of the centre crop: the model's input size
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel standard deviation divided by
    resample: int = Image.Resampling.BICUBIC  # PIL filter for the resize
    resize_mode: str = "shortest"  # "shortest" (then centre-crop) or "squash" (to the crop size)
    crop_rounding: str = "floor"  # "floor" (transformers) or "round" (torchvision)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise InputError(f"image resize mode {self.resize_mode!r} is not supported (use shortest or squash)")
        if self.crop_rounding not in ("floor", "round"):
            raise InputError(f"crop_rounding={self.crop_rounding!r}: use floor or round")

    def __call__(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB images -> (normalised [N, 3, H, W], display [N, 3, H, W] in [0, 1])."""
        display = torch.stack([self._resize_crop(im) for im in images])
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (display - mean) / std, display

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        if self.resize_mode == "squash":
            return self.crop[1], self.crop[0]
        s = self.shortest_edge
        # Same rounding as transformers' shortest-edge resize (and torchvision's Resize).
        if w <= h:
            return s, max(1, int(s * h / w))
        return max(1, int(s * w / h)), s

    def map_box(
        self, box: tuple[float, float, float, float], original_size: tuple[int, int]
    ) -> tuple[float, float, float, float]:
        """A box (x, y, w, h) in the original image's pixels -> in the model's input pixels."""
        w0, h0 = original_size
        w1, h1 = self._resized_size(w0, h0)
        ch, cw = self.crop
        left = self._offset(max(w1, cw) - cw) - (max(w1, cw) - w1) // 2
        top = self._offset(max(h1, ch) - ch) - (max(h1, ch) - h1) // 2
        x, y, w, h = box
        sx, sy = w1 / w0, h1 / h0
        return x * sx - left, y * sy - top, w * sx, h * sy

    def _resize_crop(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        size = self._resized_size(w, h)
        if size != (w, h):
            image = image.resize(size, resample=self.resample)
        ch, cw = self.crop
        w, h = image.size
        if w < cw or h < ch:  # pad like transformers' center_crop does
            canvas = Image.new("RGB", (max(w, cw), max(h, ch)), (0, 0, 0))
            canvas.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
            image, (w, h) = canvas, canvas.size
        top, left = self._offset(h - ch), self._offset(w - cw)
        image = image.crop((left, top, left + cw, top + ch))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def _offset(self, extra: int) -> int:
        """Start of a centre crop that leaves ``extra`` pixels out."""
        return int(round(extra / 2.0)) if self.crop_rounding == "round" else extra // 2
