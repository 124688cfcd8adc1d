"""``m2ib tune``: choose M2IB's layer, beta and bottleneck per tower on the user's own pairs.

:mod:`.grid` (flags, variants, points), :mod:`.data` (the pairs as model inputs), :mod:`.fits`
(maps of a layer's points, shared work), :mod:`.criteria`, :mod:`.rule` (the selection rule, pure),
:mod:`.store` (resumable records), :mod:`.run` (scoring the grid), :mod:`.choice`, :mod:`.outputs`
(m2ib.json), :mod:`.report` (report.html), :mod:`.tune` (the command as a function).
Generative VLMs (site x beta of M2IB on an answer): :mod:`.answer_data` (VQA rows), :mod:`.answer_fits`
(fits, randomised copy, criteria, scoring), :mod:`.answer_tune` (the command as a function).
"""
