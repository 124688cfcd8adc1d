# %% [markdown]
# # Choosing settings for your own model
#
# M2IB's maps hinge on two knobs per tower: the block whose output is bottlenecked and beta, the
# weight of the compression term. The paper chose them by hand for CLIP ViT-B/32 (block 9, beta
# 0.1); for any other model nobody knows them. `m2ib tune` searches them on **your own pairs, with
# no labels**: every grid point is scored by the sanity check (the map must change when the blocks
# above the bottleneck are randomised), faithfulness on the model's own similarity, the agreement
# of two seeds and the share of constant maps, plus ground-truth criteria where the data has them.
# A written rule picks the point: the Pareto front first, then only points that are both sane and
# right; when none is, **no recommendation** (the rule and every criterion: [`m2ib tune`](../tune.md)).
#
# Here a small grid on the shipped `shapes` model's text tower, so that the page builds in seconds.
# The real run (4 blocks x 5 betas x 3 bottlenecks, 32 pairs) is in
# [the shipped model re-tuned](../tune.md#the-shipped-model-re-tuned-issue-29-text-tower).

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import json
import tempfile
from pathlib import Path

from m2ib.cli import main

out = Path(tempfile.mkdtemp()) / "tune"
main(["tune", "--model", "shapes", "--data", "shapes:val:8", "--towers", "text", "--layers", "0,2",
      "--betas", "0.1,1", "--bottlenecks", "published,standardised", "--out", str(out), "--no-progress"])  # fmt: skip

# %% [markdown]
# Each finished point is one synced line of `points.jsonl`, so a killed run resumes where it
# stopped. The verdict is in `m2ib.json`, in the format the shipped models use; `recommended` is
# empty for a tower where no point is both sane and right:

# %%
doc = json.loads((out / "m2ib.json").read_text())
print("recommended:", doc["recommended"])
text = doc["tune"]["towers"]["text"]
print("why:", text["why"])
for line in (out / "points.jsonl").read_text().splitlines()[1:]:
    point = json.loads(line)
    c = point["criteria"]
    print(f"{point['key']:<28} sanity {c['sanity']:.2f}  faithfulness {c['faithfulness']:+.3f}  "
          f"text pointing {c['text_pointing']:.2f}")  # fmt: skip

# %% [markdown]
# `report.html` (self-contained) has the tables, the sanity-against-faithfulness front and maps at
# the chosen and the published settings. Its front plot:

# %%
import base64
import re

from IPython.display import Image

figures = re.findall(r'src="data:image/png;base64,([^"]+)"', (out / "report.html").read_text())
Image(data=base64.b64decode(figures[0]))

# %% [markdown]
# **Using the result.** When a tower gets a recommendation, pass the file to any command:
# `m2ib explain IMAGE TEXT --settings out/tune/m2ib.json` (also `evaluate`, `audit`, `serve`), or
# `m2ib.load(model, settings="out/tune/m2ib.json")` in Python ([settings files](../settings_files.md)).
# A local model folder that holds an `m2ib.json` picks it up by itself, as the shipped model does.
#
# On this model the text tower has no sane point, in this small grid and in the full one: the
# standardised bottleneck points at the right words but its map barely changes when the blocks
# above are randomised, and the published one ranks the article first (the norm effect of
# [the KL-norm study](../kl_norms.md)). That is a finding about the method on this model, and the
# rule reports it instead of recommending a point that fails.
