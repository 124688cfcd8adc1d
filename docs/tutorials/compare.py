# %% [markdown]
# # Comparing methods
#
# Every method takes the same inputs and returns the same `Explanation`, so methods compare in one
# call: `m2ib.compare` gives a `Comparison`, one row per method (`m2ib explain IMAGE TEXT --method
# all` on the command line). The methods, their papers and exact definitions are in
# [Methods](../guide/methods.md); how they score on the shapes world is in
# [the evaluation tables](../research/evaluation.md).

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import m2ib

model = m2ib.load("shapes")
print(m2ib.list_methods())

# %%
cmp = m2ib.compare(model, "examples/scene1.png", "a yellow star", methods="m2ib,chefer,gradcam,saliency,legrad")
cmp  # one row per method: the same figure as cmp.save(folder, stem)

# %% [markdown]
# Each method's `Explanation` is inside, with its settings:

# %%
for name, exp in cmp.explanations.items():
    row, col = divmod(int(exp.image_map.argmax()), exp.image_map.shape[1])
    print(f"{name:9s} peak at ({col:2d}, {row:2d})  settings: {sorted(exp.settings)[:4]} ...")

# %% [markdown]
# Settings go to each method by name. Image-only methods (RISE) show "n/a" for the text; RISE's
# default is 2,000 masks, so here we ask for fewer to keep the build fast.

# %%
m2ib.compare(model, "examples/scene1.png", "a yellow star", methods="m2ib,rise", settings={"rise": {"masks": 300}})

# %% [markdown]
# **Contrast.** `negatives=[...]` makes the target the margin between the text and the mean of
# the negative texts, for every method that has a target:

# %%
contrast = m2ib.explain(
    model, "examples/scene1.png", "a yellow star", method="gradcam", negatives=["a yellow circle", "a red star"]
)
print("margin:", round(contrast.info["margin"], 4))
contrast
