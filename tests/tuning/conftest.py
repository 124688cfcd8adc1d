from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny():
    """The built-in random-tiny model (4 + 4 blocks, 64 px) and 3 shapes pairs as tune data."""
    import m2ib
    from m2ib.datasets.tables import load_table
    from m2ib.tuning.data import tune_data

    backend = m2ib.load("random-tiny")
    rows = load_table("shapes:val:3", size=backend.geometry.image_size[0]).rows
    return backend, rows, tune_data(backend, rows, 0)
