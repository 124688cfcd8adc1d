# %% [markdown]
# # Auditing a model without labels
#
# M2IB needs no labels: the other modality is the target. `m2ib.audit` uses that to answer an
# auditor's question about a whole dataset: *what does this model look at and read across my
# data, and where does it take a shortcut?* It explains every pair (resumable, like `m2ib
# evaluate`), then aggregates: a mean map over the dataset with its hot regions, and a word table
# that flags words carrying the match everywhere. The full description of the outputs is in
# [Auditing a model](../guide/audit.md).
#
# ## A first look at the shipped model

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import tempfile
from pathlib import Path

import m2ib

work = Path(tempfile.mkdtemp())
result = m2ib.audit("shapes", "shapes:test:8", work / "audit-shapes", progress=False)
result  # the mean map and its regions above the word chart: the figures report.html embeds

# %%
print(sorted(p.name for p in result.out.iterdir()))
for word in result.summary.words[:5]:
    print(word.word, word.count, round(word.mean_share, 3), word.flag or "-")

# %% [markdown]
# On this model the article "a" tops the word table: M2IB's text maps rank tokens by their hidden
# state's norm ([the KL-norm study](../kl_norms.md)); the flag says where to look, not that it is
# wrong.
#
# ## The planted shortcut
#
# `benchmarks/research/` ships two fine-tuned copies of the shapes model, as small float16 deltas:
# `shortcut`, which learnt that a mark in the bottom-right corner (a white X on black) means
# "red", and `clean`, the identical recipe without the mark ([the planted
# shortcut](../research/planted-shortcut.md): how they were trained, and the planting checks). We
# audit both on held-out scenes that all carry the mark, with no labels, and ask whether the
# audit finds the mark. (The research page uses 24 scenes, 4 per colour; here 12, to keep the
# build short, so the numbers differ a little from its table.)

# %%
import sys

sys.path.insert(0, "benchmarks")  # the research code is not shipped in the package
from research.planted import materialise
from research.shortcut import marked_table, mark_box

from m2ib.auditing.image import box_cover, mass_in

scenes = marked_table(120, 96, per_colour=2)  # 12 held-out test scenes, each with the mark
cover = box_cover((16, 16), mark_box(96), (96, 96))  # the mark's patches on the 16 x 16 grid
audits = {}
for name in ("shortcut", "clean"):
    model = m2ib.load(materialise(name, work / f"model-{name}"))
    audits[name] = m2ib.audit(model, scenes, work / f"audit-{name}", batch_size=6, progress=False)
    share = float(mass_in(audits[name].summary.prior, cover))
    print(f"{name:8s}: the mark's box holds {share:.3f} of the mean map's mass (an even map: {cover.float().mean():.3f})")
    for region in audits[name].summary.regions[:3]:
        print(f"    {region.name}: {region.where((16, 16))}, {region.mass:.3f} of the mass")

# %%
audits["shortcut"]

# %%
audits["clean"]

# %% [markdown]
# Read the printed shares: the mark's box holds many times more of the mean map's mass under the
# shortcut model than under the control (on the research page's 24 scenes: 0.196 against 0.002,
# 86x), and the regions list says where the mass sits. The audit found the shortcut from the maps
# alone, with no labels. What it does not do (see the research page): rank the red pairs first in
# the gallery, or find the planted *text* token with M2IB (gradient saliency's word table does:
# `m2ib audit --method saliency`).
#
# The command line does the same: `m2ib audit --data pairs.tsv --model DIR --out out/audit`, and
# writes `report.html`, a self-contained page with the galleries of the most and least typical pairs.
