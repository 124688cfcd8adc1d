"""Published vs standardised M2IB bottleneck on the shapes model's VALIDATION split (issue 17).

For each setting (``--configs``, ``name:key=value,key=value``; the model's recommended settings
fill in the rest) prints, on N validation pairs each:

* image pointing / energy inside on single captions of 2-4 object scenes (m2ib_pointing),
* text pointing: share of single captions whose top-scoring word token (start/end excluded) is
  the colour or shape word,
* mixed captions: present object's words above the absent one's (m2ib_mixed),
* collage quadrant mass / max on ``shapes-collage:val:N``.

    python benchmarks/shapes_bottlenecks.py --n 24
"""

from __future__ import annotations

import argparse
import time

import torch

import m2ib
from m2ib.datasets.tables import load_table
from m2ib.evaluation.shapes_attribution import _mixed_on, _pointing_on
from m2ib.evaluation.shapes_pairs import _attribution_pairs, _explain, token_word_alignment
from m2ib.metrics.collage import quadrant_scores

REFERENCE = "shapes:train:64"
CONFIGS = (
    "published:",
    f"standardised:bottleneck=standardised,reference={REFERENCE}",
    f"standardised-b1:bottleneck=standardised,reference={REFERENCE},vision_beta=1,text_beta=1",
    f"standardised-L2:bottleneck=standardised,reference={REFERENCE},vision_layer=2,text_layer=2,vision_beta=1,"
    "text_beta=1",
)


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    out: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return name, out


def text_pointing(backend, pairs, settings, batch_size) -> float:
    exps = _explain(backend, pairs, "text", settings, batch_size, False)
    hits = []
    for exp, caption in zip(exps, pairs.captions):
        spans = token_word_alignment(backend, caption)
        words = list(range(1, len(spans) - 1))
        best = max(words, key=lambda t: float(exp.text_map[t]))
        hits.append(spans[best] is not None and spans[best].present)
    return sum(hits) / len(hits)


def collage(backend, n, settings, batch_size) -> tuple[float, float]:
    rows = load_table(f"shapes-collage:val:{n}", size=backend.geometry.image_size[0]).rows
    exps = m2ib.explain(backend, [r.image for r in rows], [r.text for r in rows], modalities=("image",),
                        batch_size=batch_size, progress=False, **settings)
    scores = [quadrant_scores(e.image_map, r.mask) for e, r in zip(exps, rows)]
    return sum(s[0] for s in scores) / n, sum(s[1] for s in scores) / n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    backend = m2ib.load(args.model)
    single = _attribution_pairs(backend, args.n, "val", "single")
    mixed = _attribution_pairs(backend, args.n, "val", "mixed")
    print(f"model {args.model}, {args.n} validation pairs per column; recommended: {backend.recommended.get('m2ib')}\n")
    print("| setting | image pointing | energy inside | text pointing | mixed captions | collage mass | collage max "
          "| seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in args.configs:
        name, settings = parse_config(config)
        start = time.perf_counter()
        point = _pointing_on(backend, single, settings, args.batch_size, False)
        text = text_pointing(backend, single, settings, args.batch_size)
        mix = _mixed_on(backend, mixed, settings, args.batch_size, False)
        mass, hit = collage(backend, args.n, settings, args.batch_size)
        print(f"| {name} `{config.partition(':')[2] or 'recommended'}` | {point['pointing']:.2f} | "
              f"{point['energy']:.2f} | {text:.2f} | {mix['mixed']:.2f} | {mass:.2f} | {hit:.2f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
