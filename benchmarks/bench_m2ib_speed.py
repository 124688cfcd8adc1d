"""Speed of M2IB's fast path against a naive path, on a ViT-B/32-shaped CLIP with random weights.

The naive path is what the public reference code does, minus its defects: at every step it
re-runs the whole bottlenecked tower on the noise copies and the other modality's tower,
with frozen weights. The fast path runs the prefix and the other tower once per pair.
Both use the same noise, so with the same seed their maps agree to float error; the table
also gives the correlation of seed-averaged maps across *different* seeds, as asked.

    python benchmarks/bench_m2ib_speed.py                   # CPU table
    python benchmarks/bench_m2ib_speed.py --device cuda     # GPU table (batch 1, 32, 128)
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch
import torch.nn.functional as F

import m2ib
from m2ib.methods.base import autocast
from m2ib.methods.m2ib import M2IB, M2IBSettings, kl_to_prior, noise_generators

REFERENCE_SECONDS = 42.0  # the public reference code, per pair, 2 CPU cores (from its issue; not re-run here)
CAPTIONS = [
    "a photo of a cat on a red car",
    "a man and a woman in a green house",
    "a blue bird on a tree",
    "a dog with a yellow star and a purple circle",
    "a picture of an orange square in the photo of a house",
    "a woman with a dog",
    "a red cross on a blue car with a photo of a tree",
    "an image of a person",
]


def naive_fit(backend, modality, images, texts, layer, beta, s: M2IBSettings):
    """M2IB re-running the whole towers at every step (one pair; same noise as the fast path)."""
    batch, other, other_batch = (images, "text", texts) if modality == "image" else (texts, "image", images)
    copies = batch.repeat_interleave(s.samples)
    device = backend.device
    with torch.no_grad():
        shape = backend.prefix(modality, batch, layer).shape
    (g,) = noise_generators(device, s.seed, 1)
    noise = torch.randn(s.steps, s.samples, *shape[1:], generator=g, device=device)
    alpha = torch.full(shape, float(s.init_alpha), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=s.lr)
    for step in range(s.steps):
        with autocast(device, s.precision):
            target = F.normalize(backend.embed(other, other_batch).float(), dim=-1)
            hidden = backend.prefix(modality, copies, layer).float()
        lam, log_one_minus = torch.sigmoid(alpha), F.logsigmoid(-alpha)
        kl = kl_to_prior(lam * hidden, log_one_minus, s.var)
        z = lam * hidden + torch.exp(log_one_minus) * s.var**0.5 * noise[step]
        with autocast(device, s.precision):
            emb = backend.suffix(modality, z, layer, copies)
        loss = beta * kl.mean() - F.cosine_similarity(emb.float(), target, eps=1e-6).mean()
        (grad,) = torch.autograd.grad(loss, alpha)
        alpha.grad = grad
        optimiser.step()
    return kl.detach()[0].sum(-1)  # [T]


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self.peak = self._rss()

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, self._rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
        return False


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


def make_inputs(backend, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 224, 224, generator=g) for _ in range(n)]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return images, texts


def run_fast(backend, images, texts, modalities, batch_size, **settings):
    return m2ib.explain(
        backend, images, texts, modalities=modalities, batch_size=batch_size, progress=False, **settings
    )


def cpu_table(backend, n_pairs: int, seeds: int) -> None:
    device = backend.device
    images, texts = make_inputs(backend, n_pairs)
    method = M2IB()
    rows = []
    fast_maps: dict[str, list] = {"image": [], "text": []}
    for precision in ("fp32", "bf16"):
        times, peak = {}, 0
        for modality in ("image", "text"):
            start = time.perf_counter()
            with PeakMemory(device) as mem:
                exps = [
                    run_fast(backend, im, tx, (modality,), 1, precision=precision, seed=0)
                    for im, tx in zip(images, texts)
                ]
            times[modality] = (time.perf_counter() - start) / n_pairs
            peak = max(peak, mem.peak)
            if precision == "fp32":
                fast_maps[modality].append(exps)
        rows.append((f"fast, {precision}", times["image"], times["text"], peak))
    # naive: same settings, the whole towers every step
    settings = method.resolved(backend, method.make_settings(backend, seed=0))
    naive_raw = {"image": [], "text": []}
    times, peak = {}, 0
    with backend.attribution_mode():
        for modality in ("image", "text"):
            layer = settings.vision_layer if modality == "image" else settings.text_layer
            beta = settings.vision_beta if modality == "image" else settings.text_beta
            start = time.perf_counter()
            with PeakMemory(device) as mem:
                for im, tx in zip(images, texts):
                    ib = backend.preprocess_images([m2ib.inputs.load_image(im)[0]])
                    tb = backend.tokenize([tx])
                    naive_raw[modality].append(naive_fit(backend, modality, ib, tb, layer, beta, settings))
            times[modality] = (time.perf_counter() - start) / n_pairs
            peak = max(peak, mem.peak)
    rows.append(("naive, fp32", times["image"], times["text"], peak))
    naive_total = rows[-1][1] + rows[-1][2]

    # exactness: same seed, fast vs naive raw maps
    same_seed = max(
        float((e.image_grid.flatten() - r[1:].cpu()).abs().max() / r.abs().max())
        for e, r in zip(fast_maps["image"][0], naive_raw["image"])
    )
    # quality: fast maps averaged over seeds 1..k vs naive maps averaged over seeds k+1..2k
    corr = {"image": [], "text": []}
    for im, tx in zip(images, texts):
        ib = backend.preprocess_images([m2ib.inputs.load_image(im)[0]])
        tb = backend.tokenize([tx])
        for modality in ("image", "text"):
            fast = torch.stack(
                [
                    run_fast(backend, im, tx, (modality,), 1, seed=s).image_map_raw
                    if modality == "image"
                    else run_fast(backend, im, tx, (modality,), 1, seed=s).text_map_raw
                    for s in range(1, seeds + 1)
                ]
            ).mean(0)
            layer = settings.vision_layer if modality == "image" else settings.text_layer
            beta = settings.vision_beta if modality == "image" else settings.text_beta
            with backend.attribution_mode():
                naive = torch.stack(
                    [
                        naive_fit(
                            backend, modality, ib, tb, layer, beta, M2IBSettings(**{**settings.as_dict(), "seed": s})
                        ).cpu()
                        for s in range(seeds + 1, 2 * seeds + 1)
                    ]
                ).mean(0)
            if modality == "image":
                grid = backend.geometry.patch_grid
                naive = F.interpolate(
                    naive[1:].reshape(1, 1, *grid),
                    size=backend.geometry.image_size,
                    mode="bilinear",
                    align_corners=False,
                )[0, 0]
            corr[modality].append(pearson(fast, naive))

    print(
        f"\nM2IB on a ViT-B/32-shaped CLIP (random weights), {n_pairs} pairs, default settings, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print("| path | image s/pair | text s/pair | total s/pair | speed-up vs naive | vs reference 42 s | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ti, tt, pk in rows:
        total = ti + tt
        print(
            f"| {name} | {ti:.2f} | {tt:.2f} | {total:.2f} | {naive_total / total:.1f}x | "
            f"{REFERENCE_SECONDS / total:.0f}x | {pk / 2**20:.0f} MB |"
        )
    print(f"\nsame seed, fast vs naive: max |difference| / max = {same_seed:.1e}")
    print(
        f"different seeds ({seeds} vs {seeds}, averaged): Pearson r image {sum(corr['image']) / n_pairs:.3f}, "
        f"text {sum(corr['text']) / n_pairs:.3f} (mean over {n_pairs} pairs)"
    )


def gpu_table(backend, batch_sizes, n_repeat: int) -> None:
    device = backend.device
    print(
        f"\nM2IB on a ViT-B/32-shaped CLIP (random weights), default settings, {torch.cuda.get_device_name(device)}, "
        f"torch {torch.__version__}"
    )
    print("| batch | precision | pairs/s | s/batch | peak GPU memory |")
    print("| --- | --- | --- | --- | --- |")
    maps = {}
    for bs in batch_sizes:
        images, texts = make_inputs(backend, bs)
        # preprocess once: the benchmark times the attribution, not JPEG decoding
        loaded = [m2ib.inputs.load_image(im)[0] for im in images]
        pixel_values = backend.preprocess_images(loaded).pixel_values
        for precision in ("fp32", "bf16"):
            kwargs = dict(pixel_values=pixel_values, batch_size=bs, progress=False, precision=precision)
            exps = m2ib.explain(backend, None, texts, **kwargs)  # warm-up
            sync(device)
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                for _ in range(n_repeat):
                    exps = m2ib.explain(backend, None, texts, **kwargs)
                sync(device)
                elapsed = (time.perf_counter() - start) / n_repeat
            maps[(bs, precision)] = exps
            print(f"| {bs} | {precision} | {bs / elapsed:.1f} | {elapsed:.3f} | {mem.peak / 2**30:.2f} GiB |")
    bs = max(batch_sizes)
    ci = [pearson(a.image_map, b.image_map) for a, b in zip(maps[(bs, "fp32")], maps[(bs, "bf16")])]
    ct = [pearson(a.text_map, b.text_map) for a, b in zip(maps[(bs, "fp32")], maps[(bs, "bf16")])]
    print(
        f"\nbf16 vs fp32 maps, same seed, batch {bs}: Pearson r image {sum(ci) / len(ci):.3f}, "
        f"text {sum(ct) / len(ct):.3f}"
    )
    # the naive loop, one pair, for scale
    images, texts = make_inputs(backend, 3)
    method = M2IB()
    settings = method.resolved(backend, method.make_settings(backend))
    with backend.attribution_mode():
        ib = backend.preprocess_images([m2ib.inputs.load_image(images[0])[0]])
        tb = backend.tokenize(texts[:1])
        naive_fit(backend, "image", ib, tb, settings.vision_layer, 0.1, settings)
        sync(device)
        start = time.perf_counter()
        for im, tx in zip(images, texts):
            ib = backend.preprocess_images([m2ib.inputs.load_image(im)[0]])
            tb = backend.tokenize([tx])
            naive_fit(backend, "image", ib, tb, settings.vision_layer, 0.1, settings)
            naive_fit(backend, "text", ib, tb, settings.text_layer, 0.1, settings)
        sync(device)
    print(f"naive loop (whole towers every step), fp32: {(time.perf_counter() - start) / 3:.3f} s per pair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=5, help="pairs for the CPU table")
    parser.add_argument("--seeds", type=int, default=3, help="seeds averaged for the correlation")
    parser.add_argument("--batch-sizes", default="1,32,128", help="GPU batch sizes")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per GPU row")
    args = parser.parse_args()
    backend = m2ib.load("random-vit-b-32", device=args.device)
    if backend.device.type == "cuda":
        gpu_table(backend, [int(b) for b in args.batch_sizes.split(",")], args.repeat)
    else:
        cpu_table(backend, args.pairs, args.seeds)


if __name__ == "__main__":
    main()
