# %% [markdown]
# # Evaluating a dataset
#
# `m2ib evaluate` runs methods and metrics over a dataset and writes `results.jsonl` as it goes:
# every finished (pair, method) record is appended and synced, so a killed run loses at most the
# batch in flight and **the same command resumes it**. The data here is the shapes world's test
# split (`shapes:test:N`: rendered scenes with exact object masks); your own data is a TSV or CSV
# of caption and image path ([Evaluating a dataset](../guide/evaluate.md)).
#
# We call the command line from Python (`m2ib.cli.main` is what the `m2ib` command runs).

# %% tags=["remove_input"]
# (hidden on the site) a notebook without ipywidgets: tqdm says so once; not part of the tutorial
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
import tqdm.auto  # noqa: E402,F401  (imported once here, its notice filtered, before the CLI resets filters)

# %%
import tempfile
from pathlib import Path

from m2ib.cli import main

out = Path(tempfile.mkdtemp()) / "run"
command = ["evaluate", "--data", "shapes:test:6", "--methods", "m2ib,chefer", "--metrics", "localisation,deletion",
           "--out", str(out)]  # fmt: skip

# Stop after the first batch, as a kill would: --time-limit starts no new batch after 1 s.
main(command + ["--time-limit", "1"])
print(sum(1 for _ in open(out / "results.jsonl")), "lines in results.jsonl (a provenance record, then one per pair and method)")

# %% [markdown]
# The same command again resumes: it skips what is done.

# %%
main(command)
from IPython.display import Markdown

print(sum(1 for _ in open(out / "results.jsonl")), "lines now")
Markdown((out / "summary.md").read_text())

# %% [markdown]
# The run ends with `summary.md` / `summary.csv` (mean and 95 % confidence interval per method and
# metric) and plots:

# %%
from IPython.display import Image

print(sorted(p.name for p in (out / "plots").iterdir()))
Image(filename=str(out / "plots" / "bar_image_pointing.png"))

# %% [markdown]
# **On a cluster.** `pip install 'm2ib[ray]'`, then add `--ray` (a local Ray instance) or
# `--ray auto` (an existing cluster) to the same command: the same rows, batches and records, as a
# Ray Data actor pool; a run started by one scheduler resumes under the other
# ([On a Ray cluster](../guide/evaluate.md#on-a-ray-cluster)). The full comparison on the shapes
# model, 200 pairs and all ten methods, is in [the evaluation tables](../research/evaluation.md).
