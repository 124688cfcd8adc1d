"""A third-party m2ib plugin, as a user would write one (tests/cli/test_plugins.py installs it from outside
the package through the entry-point group ``m2ib.plugins``): one method, one interaction method, one
metric and one model family, each one class or record plus one registration.

With the environment variable M2IB_TOY_PLUGIN_BROKEN set, importing it fails, as a plugin with a bug would.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from m2ib.backends.registry import Family, register as register_family
from m2ib.errors import InputError
from m2ib.interactions.base import InteractionMethod, new_interaction, register as register_interaction
from m2ib.methods.base import Method, RawScores, Settings, register as register_method, setting
from m2ib.metrics.base import Key, Measured, Metric, MetricSettings, number, register as register_metric

if os.environ.get("M2IB_TOY_PLUGIN_BROKEN"):
    raise RuntimeError("the toy plugin is broken on purpose")


@dataclass(frozen=True)
class CentreSettings(Settings):
    width: float = setting(0.5, "share of the image the centre box covers (0 < width <= 1)")

    def validate(self) -> None:
        if not 0 < self.width <= 1:  # m2ib's InputError: the CLI prints it as one line, exit 2
            raise InputError(f"width={self.width}: must be in (0, 1]")


@register_method
class CentreBias(Method):
    """A deliberately naive method: the image's centre box is relevant, and every word equally."""

    name = "toy-centre"
    title = "Centre bias (toy plugin)"
    paper = "https://example.org/toy"
    Settings = CentreSettings

    def attribute(self, backend, modality, images, texts, target, settings) -> RawScores:
        if modality == "text":
            return RawScores(texts.attention_mask.float())
        h, w = backend.geometry.image_size
        maps = torch.zeros(len(images), h, w)
        dh, dw = int(h * settings.width / 2), int(w * settings.width / 2)
        maps[:, h // 2 - dh : h // 2 + dh, w // 2 - dw : w // 2 + dw] = 1.0
        return RawScores(maps)


@register_interaction
class Outer(InteractionMethod):
    """Every token with every patch, scored 1 (a toy interaction)."""

    name = "toy-outer"
    title = "Outer product of ones (toy plugin)"

    def interact(self, backend, image, text, settings):
        rows, cols = backend.geometry.patch_grid
        return new_interaction(self, backend, image, text, torch.ones(len(text.tokens[0]), rows, cols), settings, {})


@dataclass(frozen=True)
class MapMeanSettings(MetricSettings):
    scale: float = setting(1.0, "factor the mean is multiplied by")  # m2ib evaluate --toy-map-mean-scale X


@register_metric
class MapMean(Metric):
    """The mean of each normalised image map, times the option ``scale``."""

    name = "toy-map-mean"
    title = "Mean of the image map (toy plugin)"
    sides = ("image",)
    keys = (Key("toy_image_map_mean", "lower"),)
    Settings = MapMeanSettings

    def measure(self, batch, run, side, maps) -> Measured:
        out = Measured.empty(len(batch))
        for i in range(len(batch)):
            out.values[i]["toy_image_map_mean"] = number(maps[i].float().mean() * self.settings.scale)
        return out


class ToyModel(torch.nn.Module):
    """A 'library' model: it holds a backend's model (here m2ib's random-tiny CLIP)."""


def _load(spec: str, *, name: str, **_: Any):
    from m2ib.backends import load_backend

    return dataclasses.replace(load_backend("random-tiny"), name=name)


register_family(
    Family(
        name="Toy",
        supports="toy ToyModel",
        recognises=lambda m: isinstance(m, ToyModel),
        wrap=lambda model, name, tokenizer, processor, info: _load("", name=name),
        prefix="toy:",
        load=_load,
    )
)
