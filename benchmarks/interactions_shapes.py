"""Phrase grounding of interaction methods on two-object shapes captions (issue 20).

For test scenes with exactly two objects, captioned "a C1 S1 and a C2 S2", each method maps each
object's phrase ("C1 S1"); the table gives phrase pointing and right-object mass share
(:mod:`m2ib.metrics.grounding`) and seconds per pair. Targets: pointing >= 0.90, share >= 0.80.

    python benchmarks/interactions_shapes.py --n 50 --methods exclip,phrase-alone
    python benchmarks/interactions_shapes.py --n 20 --methods exclip --setting exclip:image_layer=3
    python benchmarks/interactions_shapes.py --n 20 --methods fixlip --setting fixlip:budget=2048 \
        --setting fixlip:patch_group=4

Besides the two scores: where the maxima that miss fall (on the other object, on the background).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tqdm import tqdm

import m2ib
from m2ib.datasets.shapes import make_caption, render_scene, split_seed
from m2ib.interactions import REGISTRY as INTERACTIONS
from m2ib.metrics.grounding import grounding_scores, two_object_phrases


def two_object_pairs(n: int, size: int):
    """Test scenes ``render_scene(split_seed("test", i), size, n_objects=(2, 2))`` with "all" captions."""
    for i in range(n):
        scene = render_scene(split_seed("test", i), size=size, n_objects=(2, 2))
        yield scene, make_caption(scene, "all")


def parse_settings(items: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for item in items:
        method, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        out.setdefault(method, {})[key] = json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
    return out


def where_maxima_fall(maps: torch.Tensor, masks) -> dict[str, float]:
    """Of the two phrases' maxima (first argmax, as phrase pointing), the share on the other object
    and the share on neither object (the background)."""
    other = background = 0.0
    for k in range(2):
        flat = torch.nan_to_num(maps[k].detach().float().flatten(), nan=float("-inf"))
        top = int(torch.argmax(flat))
        in_own, in_other = bool(masks[k].flatten()[top]), bool(masks[1 - k].flatten()[top])
        other += in_other and not in_own
        background += not (in_own or in_other)
    return {"max_on_other": other / 2, "max_on_background": background / 2}


def measure(backend, name: str, settings: dict, n: int) -> dict[str, float]:
    method = INTERACTIONS.get(name)()
    chosen = method.make_settings(**settings)
    size = backend.geometry.image_size[0]
    totals = {"phrase_pointing": 0.0, "right_object_share": 0.0, "max_on_other": 0.0, "max_on_background": 0.0}
    start = time.perf_counter()
    for scene, caption in tqdm(two_object_pairs(n, size), total=n, desc=name, unit="pair"):
        phrases = two_object_phrases(caption)
        maps = method.phrase_maps(
            backend,
            backend.preprocess_images([scene.to_pil()]),
            backend.tokenize([caption.text]),
            [span for span, _ in phrases],
            chosen,
        )
        masks = [scene.masks[obj] for _, obj in phrases]
        scores = {**grounding_scores(maps, masks), **where_maxima_fall(maps, masks)}
        for key in totals:
            totals[key] += scores[key]
    seconds = (time.perf_counter() - start) / n
    return {**{k: v / n for k, v in totals.items()}, "seconds_per_pair": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="two-object test pairs")
    parser.add_argument("--methods", default="exclip,phrase-alone")
    parser.add_argument("--setting", action="append", default=[], help="METHOD:KEY=VALUE (repeatable)")
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    backend = m2ib.load(args.model)
    settings = parse_settings(args.setting)
    torch.manual_seed(0)
    print(f"{args.n} two-object test pairs, model {args.model}, torch threads {torch.get_num_threads()}")
    print(
        "| method | settings | phrase pointing | right-object share | max on other object | max on background "
        "| s/pair |\n|---|---|---|---|---|---|---|"
    )
    for name in args.methods.split(","):
        r = measure(backend, name, settings.get(name, {}), args.n)
        print(
            f"| {name} | {settings.get(name, {}) or 'defaults'} | {r['phrase_pointing']:.3f} | "
            f"{r['right_object_share']:.3f} | {r['max_on_other']:.3f} | {r['max_on_background']:.3f} | "
            f"{r['seconds_per_pair']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
