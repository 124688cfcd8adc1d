# %% [markdown]
# # Word-region interactions
#
# A first-order map gives one map over the image and one over the words; it cannot say which
# region goes with "orange triangle" and which with "yellow circle". An interaction method gives a
# score for every (caption token, image patch): an `m2ib.interactions.Interaction`. The methods
# (exCLIP, FIxLIP, and the phrase-alone baseline), their tests and their scores on the shapes world
# are in [Interactions](../guide/interactions.md).

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import m2ib
from m2ib.interactions import REGISTRY, interact

print(REGISTRY.names())
model = m2ib.load("shapes")
pair = interact(model, "examples/scene3.png", "an orange triangle and a yellow circle", method="exclip", text_layer=0)
pair  # one panel per content word; red: the word and the region raise the similarity together

# %% [markdown]
# A phrase's signed image map, and each token's score for a box (x, y, w, h in the model's input
# pixels):

# %%
triangle = pair.span_map("orange triangle")  # [96, 96]
row, col = divmod(int(triangle.argmax()), 96)
print("phrase map", tuple(triangle.shape), "peak at", (col, row))
scores = pair.region_scores((46, 65, 27, 24))  # the triangle's box
for token, score in zip(pair.tokens, scores.tolist()):
    print(f"{token:18s} {score:+.4f}")

# %% [markdown]
# exCLIP's matrix sums to the similarity difference between the pair and its references (the
# completeness terms are recorded):

# %%
{k: round(v, 5) for k, v in pair.info.items() if isinstance(v, float)}

# %% [markdown]
# The baseline to beat has no interaction at all: a first-order method explains the image against
# the phrase's own text.

# %%
interact(model, "examples/scene3.png", "an orange triangle and a yellow circle", method="phrase-alone")
