"""The example scenes the page offers (one click fills in the image and its caption)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("m2ib.serve")


def example_scenes(workdir: str | os.PathLike, both: bool = False) -> list[tuple[str, str]]:
    """(image path, caption) of the shipped example scenes, copied into ``workdir``; ``both``:
    captioned with both objects, "a C1 S1 and a C2 S2" (for the interactions tab).

    They come from ``examples/scenes.json`` in a source checkout (or the current folder);
    an installed package without it renders three scenes of the shapes world instead.
    """
    from ..datasets.shapes import phrase

    out = Path(workdir) / "examples"
    out.mkdir(parents=True, exist_ok=True)
    for folder in (Path(__file__).resolve().parents[3] / "examples", Path.cwd() / "examples"):
        index = folder / "scenes.json"
        if not index.is_file():
            continue
        try:
            entries = json.loads(index.read_text())
            scenes = []
            for entry in entries:
                source = folder / Path(entry["image"]).name
                if source.is_file():
                    target = out / source.name
                    shutil.copyfile(source, target)
                    caption = (
                        " and ".join(phrase(c, s) for c, s, _ in entry["objects"]) if both else str(entry["caption"])
                    )
                    scenes.append((str(target), caption))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the example scenes in %s: %s", folder, exc)
            continue
        if scenes:
            return scenes
    from ..datasets.shapes import render_scene, split_seed

    scenes = []
    for i in range(3):
        scene = render_scene(split_seed("test", i), size=96, n_objects=(2, 2))
        target = out / f"scene{i + 1}.png"
        scene.to_pil().save(target)
        pairs = scene.pairs if both else scene.pairs[:1]
        scenes.append((str(target), " and ".join(phrase(*pair) for pair in pairs)))
    return scenes
