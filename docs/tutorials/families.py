# %% [markdown]
# # Using another family: OpenCLIP, SigLIP, BiomedCLIP
#
# `m2ib.load` (and `--model`) takes a name whose prefix picks the family; every method then runs
# unchanged. The families, their names and what each changes for the attribution are in
# [Model families](../guide/families.md).
#
# ## By name (needs the weights)
#
# This is the code for real checkpoints. It is shown, not run here: this site is built offline,
# and these weights are not in the package.
#
# ```python
# import m2ib
#
# clip = m2ib.load("openai/clip-vit-base-patch32")                  # transformers CLIP, a hub id
# siglip = m2ib.load("hf:google/siglip-base-patch16-224")           # transformers SigLIP (pip install 'm2ib[siglip]')
# openclip = m2ib.load("open_clip:ViT-B-32@laion2b_s34b_b79k")      # OpenCLIP ARCH@TAG (pip install 'm2ib[open_clip]')
# biomed = m2ib.load("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
# exp = m2ib.explain(biomed, "chest_xray.png", "left lower lobe consolidation")
# ```
#
# OpenCLIP and OpenAI's `clip` need a torchvision built for your torch (e.g. `pip install
# torch==2.14.1 torchvision==0.29.1`, then `pip install -e ".[open_clip,clip]"`).
#
# ## Offline
#
# Named weights come from the local cache (the Hugging Face cache, or `~/.cache/clip`) or are
# downloaded. Offline, a model that is not cached fails at once with one line saying how to get it;
# a missing extra fails with one line naming the `pip install`:

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import os

os.environ["HF_HUB_OFFLINE"] = "1"
import m2ib

try:
    m2ib.load("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
except m2ib.M2IBError as error:
    print(error)

# %% [markdown]
# Download where there is internet (`hf download ORG/NAME --local-dir DIR`), copy the folder, and
# pass the folder: `--model open_clip:local-dir:DIR` for OpenCLIP, a directory saved with
# `save_pretrained` for transformers models. For smoke tests, every family builds random weights
# offline: `open_clip:ViT-B-32@random`, `clip:ViT-B/32@random`.
#
# ## A model object: SigLIP from a config
#
# `m2ib.load` also takes a model object with its tokenizer. Here a small SigLIP with random
# weights, built from a config (the same code takes `SiglipModel.from_pretrained(DIR)`), and the
# offline word-list tokenizer of the built-in models:

# %%
import torch
from transformers import SiglipConfig, SiglipModel

from m2ib.models import DEMO_WORDS
from m2ib.tokenizer import build_word_tokenizer

tok = build_word_tokenizer(DEMO_WORDS)
config = SiglipConfig(
    text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                     num_attention_heads=2, max_position_embeddings=20, pad_token_id=tok.pad_token_id,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id),
    vision_config=dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=2),
)  # fmt: skip
torch.manual_seed(0)
siglip = m2ib.load(SiglipModel(config).eval(), tokenizer=tok)
exp = m2ib.explain(siglip, "examples/scene1.png", "a yellow star", steps=4)
print("bottleneck after blocks", exp.settings["vision_layer"], exp.settings["text_layer"], "of 4")
exp  # random weights: the map shows the plumbing works, not what a trained SigLIP sees
