# %% [markdown]
# # Quickstart
# %%
import os
print(os.getcwd())
import m2ib
print(m2ib.__file__)
