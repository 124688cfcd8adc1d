"""The collage pointing game: the dataset (shapes-collage:SPLIT:N) and the registered metric."""

from __future__ import annotations

import pytest
import torch

from m2ib.datasets.collage import quadrant_mask, render_collage
from m2ib.datasets.shapes import COLOURS
from m2ib.datasets.tables import load_table
from m2ib.errors import InputError
from m2ib.metrics import REGISTRY as METRICS
from m2ib.metrics.base import MethodRun, PairBatch
from m2ib.metrics.collage import quadrant_scores

HAND_MAP = torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 4]])


@pytest.mark.parametrize("quadrant,mass,hit", [(3, 0.7, 1.0), (1, 0.2, 0.0), (0, 0.1, 0.0), (2, 0.0, 0.0)])
def test_hand_made_map(quadrant, mass, hit):
    # mass 10 in all; bottom-right holds 3 + 4, top-right 2, top-left 1; the maximum (4) is bottom-right
    got_mass, got_hit = quadrant_scores(HAND_MAP, quadrant_mask(4, quadrant))
    assert got_mass == pytest.approx(mass) and got_hit == hit


def test_uniform_and_empty_maps():
    assert quadrant_scores(torch.ones(6, 6), quadrant_mask(6, 2))[0] == pytest.approx(0.25)
    assert quadrant_scores(torch.zeros(6, 6), quadrant_mask(6, 3)) == (0.0, 0.0)  # constant: (0, 0) is top-left
    assert quadrant_scores(torch.zeros(6, 6), quadrant_mask(6, 0))[1] == 1.0


def test_collages_name_one_object_in_its_quadrant():
    for index in range(6):
        collage = render_collage("val", index, 96)
        assert collage.image.shape == (3, 96, 96) and collage == collage  # deterministic below
        torch.testing.assert_close(collage.image, render_collage("val", index, 96).image)
        colour = collage.caption.spans[0].word
        # pixels of the named colour (max-channel distance < 40) all lie in the named quadrant
        rgb = torch.tensor(COLOURS[colour], dtype=torch.float32)[:, None, None] / 255
        painted = (collage.image - rgb).abs().amax(0) < 40 / 255
        assert painted.sum() > 20
        assert not (painted & ~collage.mask).any()
    assert render_collage("val", 0, 96).caption != render_collage("test", 0, 96).caption or not torch.equal(
        render_collage("val", 0, 96).image, render_collage("test", 0, 96).image
    )


def test_table_rows_and_bad_specs():
    rows = load_table("shapes-collage:test:3", size=96).rows
    assert [r.id for r in rows] == [f"shapes-collage:test:{i}" for i in range(3)]
    for row in rows:
        x, y, w, h = row.boxes[0]
        assert (w, h) == (48, 48) and int(row.mask.sum()) == 48 * 48 and bool(row.mask[int(y), int(x)])
        assert [row.text[a:b] for a, b in row.relevant] == row.text.split()[1:]
    with pytest.raises(InputError, match="shapes-collage:SPLIT:N"):
        load_table("shapes-collage:test", size=96)
    with pytest.raises(InputError, match="input size"):
        load_table("shapes-collage:test:3")


def test_registered_metric_measures_collage_rows_only():
    rows = load_table("shapes-collage:val:2", size=4).rows
    maps = torch.stack([HAND_MAP, HAND_MAP])
    batch = PairBatch(backend=None, rows=rows, images=None, texts=None, seed=0, pair_seeds=[0, 0])
    measured = METRICS.get("collage")().measure(batch, MethodRun("m", {}, []), "image", maps)
    for row, values in zip(rows, measured.values):
        mass, hit = quadrant_scores(HAND_MAP, row.mask)
        assert values == {"collage_mass": pytest.approx(mass), "collage_max": hit}
    other = load_table("shapes:val:1", size=64).rows
    batch = PairBatch(backend=None, rows=other, images=None, texts=None, seed=0, pair_seeds=[0])
    assert METRICS.get("collage")().measure(batch, MethodRun("m", {}, []), "image", torch.rand(1, 64, 64)).values == [
        {}
    ]


def test_evaluate_command_reads_collages(tmp_path):
    import json

    from m2ib.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "evaluate",
                "--data",
                "shapes-collage:test:2",
                "--model",
                "random-tiny",
                "--methods",
                "saliency",
                "--metrics",
                "collage",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    values = [r["metrics"] for r in records if r.get("method") == "saliency"]
    assert len(values) == 2 and all(0 <= v["collage_mass"] <= 1 and v["collage_max"] in (0, 1) for v in values)
