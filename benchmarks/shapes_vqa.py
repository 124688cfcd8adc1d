"""Accuracy of the shipped shapes-vqa model on the TEST split, and where its answer maps point.

Accuracy: for each question kind (colour, shape, exists, caption), ``--n`` questions about the
test split's scenes with 2 to 4 objects (``m2ib.training.vqa.scenes("test", ...)``: scene i asks
one question of each kind that it can ask, drawn with ``numpy.random.default_rng(--seed)``); an
answer is right when the model's greedy answer (``GenerativeBackend.generate``: the full LLaVA
forward from the image file's pixels) equals the expected one exactly.

Pointing (``--pointing N``): N test questions that name one object ("what colour is the star ?",
"what shape is red ?", alternating); each method explains the expected answer given the question
(``m2ib.explain_answer``, its defaults) and the question counts as a hit when the answer's map
peaks inside that object's mask (``m2ib.generative.metrics.pointing_game``). Chance is the
object's share of the image (``chance`` column: its mean).

    python benchmarks/shapes_vqa.py                        # accuracy, 200 questions per kind
    python benchmarks/shapes_vqa.py --n 0 --pointing 200 --sanity 200   # every answer method
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from tqdm import tqdm

import m2ib
from m2ib.generative.loading import load_generative
from m2ib.generative.metrics import pointing_game
from m2ib.training.vqa import scenes
from m2ib.training.vqa_data import QUESTION_KINDS, make_question


def questions(kinds: tuple[str, ...], n: int, seed: int) -> list:
    """(scene, question) pairs: ``n`` per kind, scene i of the test split asking one of each kind it can."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in kinds}
    items: list = []
    start = 0
    while any(len(v) < n for v in out.values()):
        if start >= len(items):
            items = scenes("test", max(2 * len(items), 64))
        scene = items[start]
        start += 1
        for kind in kinds:
            q = make_question(scene, kind, rng)
            if q is not None and len(out[kind]) < n:
                out[kind].append((scene, q))
    return [p for k in kinds for p in out[k]]


def accuracy(backend, n: int, seed: int) -> dict[str, dict]:
    rows: dict[str, dict] = {k: {"right": 0, "n": 0, "wrong": []} for k in QUESTION_KINDS}
    for scene, q in tqdm(questions(QUESTION_KINDS, n, seed), desc="accuracy"):
        got = backend.generate(scene.to_pil(), q.prompt, max_new_tokens=24)
        row = rows[q.kind]
        row["n"] += 1
        row["right"] += got == q.answer
        if got != q.answer and len(row["wrong"]) < 3:
            row["wrong"].append(f"{q.question} -> {got!r} (expected {q.answer!r})")
    return rows


def _explain(backend, scene, q, method: str):
    # the whole answer's map only: the per-word maps and the prompt side are other fits
    extra = {"per_word": False, "prompt_side": False} if method == "m2ib" else {}
    return m2ib.explain_answer(backend, scene.to_pil(), q.prompt, answer=q.answer, method=method, **extra)


def pointing(backend, n: int, seed: int, methods: list[str], sanity: int) -> dict:
    """Each method's pointing hits on ``n`` questions and, on the first ``sanity`` of them, the mean
    |Spearman| between its map and its map on a copy of the model whose language model (every block
    and the head, above the projector's output) is randomised (lower: the map depends on the model)."""
    from m2ib.metrics.sanity import spearman
    from m2ib.tuning.answer_fits import randomised_above_site

    pairs = questions(("colour", "shape"), (n + 1) // 2, seed + 1)
    pairs = [p for pair in zip(pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :], strict=True) for p in pair][:n]
    randomised = randomised_above_site(backend, 0, seed) if sanity else None
    out = {}
    for method in methods:
        hits, rhos, start = 0, [], time.perf_counter()
        for i, (scene, q) in enumerate(tqdm(pairs, desc=f"pointing {method}")):
            exp = _explain(backend, scene, q, method)
            hits += pointing_game(exp.image_map, scene.masks[q.target])
            if i < sanity:
                rhos.append(abs(spearman(exp.image_map, _explain(randomised, scene, q, method).image_map)))
        out[method] = {
            "hits": hits,
            "n": len(pairs),
            "sanity_abs_rho": float(np.nanmean(rhos)) if rhos else None,
            "sanity_n": len(rhos),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"{method}: {out[method]}", file=sys.stderr, flush=True)  # each row as it is done
    chance = float(np.mean([scene.masks[q.target].float().mean() for scene, q in pairs])) if pairs else 0.0
    return {"chance": chance, "methods": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-vqa", help="built-in name or a saved model directory")
    parser.add_argument("--n", type=int, default=200, help="questions per kind (0: no accuracy)")
    parser.add_argument("--pointing", type=int, default=0, help="pointing-game questions (0: none)")
    parser.add_argument(
        "--sanity", type=int, default=0, help="of the pointing questions, how many also get the sanity check"
    )
    parser.add_argument("--methods", default="m2ib,saliency,input_x_gradient,llava_cam,relevancy,occlusion,rise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    backend = load_generative(args.model)
    result: dict = {"model": args.model, "command": "python benchmarks/shapes_vqa.py " + " ".join(sys.argv[1:])}
    if args.n:
        rows = result["accuracy"] = accuracy(backend, args.n, args.seed)
        print("| question | example | right | accuracy |\n|---|---|---|---|")
        examples = {
            "colour": "what colour is the star ?",
            "shape": "what shape is red ?",
            "exists": "is there a blue circle ?",
            "caption": "describe the image .",
        }
        for kind, row in rows.items():
            print(f"| {kind} | {examples[kind]} | {row['right']}/{row['n']} | {row['right'] / row['n']:.1%} |")
        for kind, row in rows.items():
            for wrong in row["wrong"]:
                print(f"  wrong ({kind}): {wrong}")
    if args.pointing:
        point = result["pointing"] = pointing(backend, args.pointing, args.seed, args.methods.split(","), args.sanity)
        print(f"\n| method | pointing (chance {point['chance']:.1%}) | sanity abs rho (lower: better) | seconds |")
        print("|---|---|---|---|")
        for method, row in point["methods"].items():
            rho = f"{row['sanity_abs_rho']:.3f} ({row['sanity_n']})" if row["sanity_n"] else "-"
            print(f"| {method} | {row['hits']}/{row['n']} = {row['hits'] / row['n']:.1%} | {rho} | {row['seconds']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
