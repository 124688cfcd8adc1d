# %% [markdown]
# # Quickstart: explain one pair, read the maps
#
# This page is a notebook executed at every build of the site, on the `shapes` model that ships
# inside the package (offline, about 3 s on a CPU). Run it yourself from the repository root
# (the example scenes live in `examples/`) after `pip install -e ".[figures]"`.
#
# M2IB (Wang, Rudner and Wilson, [NeurIPS 2023](https://arxiv.org/abs/2312.17174)) fits an
# information bottleneck on one block of each tower: it keeps the part of the hidden states that
# the *other* modality's embedding needs, and the map is how much information each patch or token
# lets through (a KL divergence, in nats).

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import m2ib

model = m2ib.load("shapes")  # the embedded model, with its recommended settings
exp = m2ib.explain(model, "examples/scene3.png", "an orange triangle")
exp  # a notebook shows the same figure that exp.save(...) writes

# %% [markdown]
# **Reading the figure.** The left panel overlays the image map on the image *as the model saw it*
# (resized and cropped to 96 x 96). The text panel shades each word by its score, normalised over
# the words (a word split into pieces gets their mean); start and end tokens are grey. On this
# model M2IB's text maps put the first word on top whatever it says: its KL term grows with the
# hidden state's norm ([the KL-norm study](../kl_norms.md)).
#
# The maps are tensors:

# %%
print(exp.image_map.shape, float(exp.image_map.min()), float(exp.image_map.max()))  # [H, W] in [0, 1]
print(exp.tokens)
print([round(float(s), 3) for s in exp.text_map])  # one score per token, start and end included
print("cosine similarity:", round(exp.similarity, 4))
print("raw KL of the 16 x 16 patch grid, in nats:", round(float(exp.image_grid.sum()), 2))

# %% [markdown]
# Every setting actually used is recorded, layers resolved (here the model's recommended ones,
# chosen on its validation split: [settings selection](../shapes_selection.md)):

# %%
{k: exp.settings[k] for k in ("vision_layer", "text_layer", "vision_beta", "text_beta", "steps", "samples", "seed")}

# %% [markdown]
# Where does the map's maximum fall, and how much of the map is on the triangle? The shapes
# world renders scenes with exact masks; here we just look at the peak.

# %%
import torch

row, col = divmod(int(torch.argmax(exp.image_map)), exp.image_map.shape[1])
print(f"peak at x={col}, y={row} (the triangle's box is x 46..73, y 65..89)")

# %% [markdown]
# Save the figure, the maps and the settings (each written atomically, the JSON last):

# %%
import tempfile

paths = exp.save(tempfile.mkdtemp(), "scene3")
sorted(p.name for p in paths.values())

# %% [markdown]
# The same from the command line: `m2ib explain examples/scene3.png "an orange triangle" --out out`.
# Next: [comparing methods](compare.py), or the [Python API](../guide/python-api.md) in full.
