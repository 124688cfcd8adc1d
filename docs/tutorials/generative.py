# %% [markdown]
# # Explaining a generative VLM's answer
#
# A generative vision-language model (LLaVA, PaliGemma, Qwen2.5-VL, SmolVLM, InternVL, ...) answers
# a prompt about an image. `m2ib.explain_answer` asks: **which image regions does the model need to
# give this answer**, and, per answer word and per prompt word, which carry it. M2IB's bottleneck
# sits on the image tokens where they enter the language model (LLaVA: the projector's output) and
# its fit term is the teacher-forced answer's log-likelihood ([the method on answers](../generative.md)).
#
# This page runs on `shapes-vqa`, a real transformers `LlavaForConditionalGeneration` shipped with
# the package: the shipped `shapes` CLIP's vision tower (frozen), a projector and a 2-layer Llama,
# trained on questions about the synthetic shapes world. Its scenes come with exact object masks, so
# here a map can be checked against the truth. Offline, seconds on a CPU.

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import m2ib
from m2ib.generative.loading import load_generative
from m2ib.training.vqa import scenes

model = load_generative("shapes-vqa")  # loaded once; explain_answer also takes the name itself
scene = scenes("test", 3)[2]  # a test-split scene: objects, masks and boxes known
print([f"{o.colour} {o.shape}" for o in scene.objects])
scene.to_pil()

# %% [markdown]
# The prompt is in the model's own chat form (LLaVA's `USER: <image>\n... ASSISTANT:`; each family's
# form is in [the families table](../generative.md)). Without `answer=`, the model answers first
# (greedy) and that answer is explained; the result records which (`answer_source`):

# %%
target = next(i for i, o in enumerate(scene.objects) if [p.shape for p in scene.objects].count(o.shape) == 1)
question = f"what colour is the {scene.objects[target].shape} ?"
prompt = f"USER: <image>\n{question} ASSISTANT:"
exp = m2ib.explain_answer(model, scene.to_pil(), prompt)
print(exp.answer, "|", exp.answer_source, "| truth:", scene.objects[target].colour)
exp.figure(boxes=[scene.objects[target].box])

# %% [markdown]
# **Reading the figure.** The first panel is the image as the model saw it (96 x 96), the box is the
# object the question names. "whole answer" is the map of the answer's log-likelihood: how much
# information each image token must let through (the KL per token, in nats, drawn on its patch).
# Then one map per answer word (the answer's word's own log-likelihood as the target), and below,
# the prompt words' scores: which question words the answer needs (a second bottleneck, on the
# prompt's token states). The maps are tensors:

# %%
from m2ib.generative.metrics import pointing_game

print(exp.image_map.shape, exp.grid_map.shape, exp.token_scores.shape)  # [H, W], [16, 16], [256]
print("peak inside the named object:", pointing_game(exp.image_map, scene.masks[target]))
print({w: round(float(s), 3) for w, s in zip(exp.prompt_words, exp.prompt_scores, strict=True)})

# %% [markdown]
# Read the prompt scores with care: on this model the prompt side ranks function words such as
# "the" and ":" high. As on the CLIP path, M2IB's KL term grows with a token state's norm
# ([the KL-norm study](../kl_norms.md)), and the prompt's bottleneck sits on the embeddings.
#
# A caption has an answer word per object: each word's map should sit on its own object.

# %%
caption = m2ib.explain_answer(model, scene.to_pil(), "USER: <image>\ndescribe the image . ASSISTANT:")
print(caption.answer)
caption.figure(boxes=[o.box for o in scene.objects])

# %% [markdown]
# **Baselines.** The same call runs gradient saliency, input x gradient, LLaVA-CAM, LVLM-Interpret's
# relevancy, occlusion and RISE on every family (`method=`; their sources are in
# [the methods table](../generative.md)). On the same question:

# %%
for method in ("m2ib", "saliency", "relevancy", "occlusion"):
    e = m2ib.explain_answer(model, scene.to_pil(), prompt, answer=exp.answer, method=method)
    print(f"{method:10s} peak inside the named object: {pointing_game(e.image_map, scene.masks[target])}")

# %% [markdown]
# Over 200 test questions, the pointing game of each method, with the model's accuracy and the
# sanity check, is in [generative models: shapes-vqa](../generative.md#the-shipped-shapes-vqa-model).
#
# **Your own model.** Any supported family, by folder or hub id (downloaded once):
#
# ```python
# exp = m2ib.explain_answer("llava-hf/llava-1.5-7b-hf", "photo.jpg",
#                           "USER: <image>\nWhat is the man holding? ASSISTANT:")
# exp.save("out/photo")  # figure .png, maps .npz, settings and scores .json
# ```
#
# The command line does the same (`--answer` omitted: the model's own answer):
#
# ```
# m2ib explain photo.jpg "USER: <image>\nWhat is the man holding? ASSISTANT:" --answer "a kite" \
#     --model llava-hf/llava-1.5-7b-hf --out out/
# ```
#
# and `m2ib serve --model shapes-vqa` (or a model folder) opens the viewer's Answer tab. Which site
# and beta suit your model: `m2ib tune --model DIR --data questions.tsv` ([tune](../tune.md)).
