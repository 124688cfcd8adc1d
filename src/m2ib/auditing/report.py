"""``report.html``: one self-contained page (figures embedded as data URLs, no external request)
with the mean map and its regions, the word table and chart, and galleries of the most and least
typical pairs, each with its explanation figure redrawn from the stored patch grid and token scores."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import Backend
from ..datasets.tables import Row
from ..explanation import Explanation
from ..fileio import atomic_write_text
from ..inputs import load_image
from ..methods.base import minmax
from .aggregate import Summary
from .control import ARTEFACT, NONE, RANDOMISED
from .image import REGION_FACTOR
from .outputs import REGION_COLUMNS, WORD_COLUMNS, region_rows

GALLERY = 6  # pairs in each gallery
CHART_WORDS = 15  # words in the chart
TABLE_WORDS = 40  # words in the table (all of them are in words.csv)
FIGURE_WIDTH = 560  # pixels of a gallery figure
DPI = 110  # resolution of the report's matplotlib figures
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#1a1a1a}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.flag td{background:#fde2e2}tr.artefact td{background:#eeeeee;color:#666}.note{color:#555;font-size:.92em;max-width:900px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;border:1px solid #ddd;padding:4px}
.gallery img{max-width:560px}figcaption{font-size:.85em;color:#444}img{max-width:100%}"""


def png_bytes(picture: Any) -> bytes:
    """A PIL image or a matplotlib Figure as PNG bytes (a Figure at the report's resolution)."""
    buffer = io.BytesIO()
    if hasattr(picture, "savefig"):
        picture.savefig(buffer, format="png", dpi=DPI)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data(picture: Any) -> str:
    """A PIL image or a matplotlib Figure as a data URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def overview_figure(summary: Summary) -> Any:
    """The report's mean map (when there is one) above its word chart, as one PIL image: what an
    :class:`~m2ib.auditing.AuditResult` shows in a notebook."""
    from PIL import Image

    parts = [prior_figure(summary)] if summary.prior is not None else []
    parts.append(word_chart(summary))
    pictures = [Image.open(io.BytesIO(png_bytes(p))).convert("RGB") for p in parts]
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def prior_figure(summary: Summary):
    """The mean map as multiples of the even share, with the regions outlined and named."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    prior = summary.prior
    if prior is None:
        raise ValueError("no image map in this audit, so no mean map to draw")
    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot()
    relative = (prior * prior.numel()).numpy()
    # a fixed floor for the top: an even map reads as even, not as hot everywhere
    shown = ax.imshow(relative, cmap="magma", vmin=0, vmax=max(1.5 * REGION_FACTOR, float(relative.max())))
    fig.colorbar(shown, ax=ax, label="times the even share")
    for region in summary.regions:
        r0, c0, r1, c1 = region.box
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="cyan", lw=1.5))
        ax.text(c0 - 0.4, r0 - 0.6, region.name, color="cyan", fontsize=9, va="bottom")
    ax.set_title("mean map over the dataset (patch grid)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def word_chart(summary: Summary):
    """Mean share and top-word share of the words with the most attribution over the data."""
    from matplotlib.figure import Figure

    words = sorted(summary.words, key=lambda w: -w.mean_share * w.count)[:CHART_WORDS][::-1]
    fig = Figure(figsize=(6.4, 0.32 * len(words) + 1.0))
    ax = fig.add_subplot()
    y = torch.arange(len(words)).numpy()
    colours = ["#d62728" if w.flag else "#999999" if w.artefact else "#1f77b4" for w in words]
    ax.barh(y + 0.2, [w.mean_share for w in words], height=0.4, color=colours, label="mean share")
    ax.barh(y - 0.2, [w.top_share for w in words], height=0.4, color="#bbbbbb", label="top-word share")
    ax.set_yticks(y, [f"{w.word} ({w.count})" for w in words])
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    title = "red: flagged" + ("; grey: method artefact" if summary.control is not None else "")
    ax.set_title(f"words by total attribution ({title}; count in brackets)", fontsize=10)
    fig.tight_layout()
    return fig


def pair_figure(backend: Backend, row: Row, record: dict[str, Any]):
    """The explanation figure of one stored pair (map upsampled from its patch grid)."""
    picture, source = load_image(row.image)
    image = backend.preprocess_images([picture], [source])
    display = image.display if image.display is not None else backend.display_images(image.pixel_values)
    grid = torch.tensor(record["grid"], dtype=torch.float32)
    upsampled = F.interpolate(grid[None, None], size=backend.geometry.image_size, mode="bilinear", align_corners=False)[
        0, 0
    ]
    scores = None if record["token_scores"] is None else torch.tensor(record["token_scores"])
    exp = Explanation(
        text=record["text"],
        tokens=record["tokens"],
        image=display[0].float().cpu(),
        image_map=minmax(upsampled[None])[0],
        image_map_raw=upsampled,
        text_map=None if scores is None else minmax(scores[None])[0],
        text_map_raw=scores,
        special_tokens=tuple(record["special"]),
        similarity=record["similarity"],
        method=record["method"],
        model=backend.name,
    )
    figure = exp.figure()
    figure.thumbnail((FIGURE_WIDTH, FIGURE_WIDTH * 4))  # the page stays light: figures at display size
    return figure


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A table; a row with a ``flag`` is shown red, one with a ``method_artefact`` only grey."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = ' class="flag"' if row.get("flag") else ' class="artefact"' if row.get("method_artefact") else ""
        cells = "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _gallery(
    backend: Backend,
    rows: dict[str, Row],
    records: dict[str, dict[str, Any]],
    chosen: Sequence[dict[str, Any]],
    element: str,
) -> str:
    items = []
    for pair in chosen:
        rank = "mass in regions" if pair["region_mass"] is not None else "concentration"
        value = pair["region_mass"] if pair["region_mass"] is not None else pair["concentration"]
        caption = html.escape(
            f"row {pair['row']} · {rank} {value:.3f} · "
            f"top word '{pair['top_word']}' · similarity {pair['similarity']:.3f}"
        )
        picture = ""
        if pair["row"] in rows:
            figure = pair_figure(backend, rows[pair["row"]], records[pair["row"]])
            picture = f'<img alt="pair {html.escape(pair["row"])}" src="{png_data(figure)}">'
        items.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="gallery" id="{element}">{"".join(items)}</div>'


def _control_note(control: str, summary: Summary) -> str:
    """Which control the flags were checked against, and what came out a method artefact."""
    if control == NONE or summary.control is None:
        return (
            "<p id='control'>No control measured (<code>--control none</code>): a flag below may be the "
            "method's, not the model's.</p>"
        )
    what = (
        "the model with its head and every block above the method's layers randomised"
        if control == RANDOMISED
        else f"the model {html.escape(control)}"
    )
    words = [w.word for w in summary.words if w.artefact]
    regions = [r.name for r in summary.regions if r.artefact]
    found = ", ".join([*(f"'{html.escape(w)}'" for w in words), *regions]) or "nothing"
    return (
        f"<p id='control'>Control: every pair explained again under {what}. {ARTEFACT.capitalize()} "
        f"(flagged as much under the control, so not a finding about the model): <b>{found}</b>.</p>"
    )


def write_report(
    out: Path,
    backend: Backend,
    summary: Summary,
    header: dict[str, Any],
    records: Sequence[dict[str, Any]],
    rows: Sequence[Row],
    bad: Sequence[dict[str, str]],
) -> Path:
    """Write ``out/report.html`` (needs matplotlib: ``pip install 'm2ib[figures]'``)."""
    by_row = {r.id: r for r in rows}
    by_record = {r["row"]: r for r in records}
    parts = [
        f"<h1>Audit of {html.escape(str(header.get('model')))} on {html.escape(str(header.get('data')))}</h1>",
        f"<p id='counts'>{len(records)} pairs explained with {html.escape(', '.join(header.get('methods', [])))}"
        f" · <b>{len(bad)} bad row(s)</b> skipped · seed {header.get('seed')}</p>",
    ]
    if bad:
        parts.append(
            "<details><summary>bad rows</summary><ul>"
            + "".join(f"<li>{html.escape(str(b['row']))}: {html.escape(b['reason'])}</li>" for b in bad[:50])
            + "</ul></details>"
        )
    control = (header.get("metrics") or {}).get("control", "none")
    parts.append(_control_note(control, summary))
    if summary.prior is not None:
        regions = region_rows(summary)
        parts += [
            "<h2>Image: where the model looks across the data</h2>",
            f'<img id="prior" alt="mean map" src="{png_data(prior_figure(summary))}">',
            _table(regions, [c for c in REGION_COLUMNS if c not in ("row0", "col0", "row1", "col1")])
            if regions
            else "<p id='no-region'>No patch holds twice the even share: no spatial prior on this data.</p>",
            "<p class='note'>The mean of every pair's map, each map first made to add up to 1 over the patch "
            "grid. Regions: connected patches with at least twice the even share. A region where no content "
            "should be (a corner, a border, where a watermark or burnt-in text sits) is a spatial prior or a "
            "shortcut: see which pairs put their mass there below. control_mass: the region's share of the "
            "control's mean map; a region it also gives twice the even share is a method artefact (grey).</p>",
        ]
    parts += [
        "<h2>Words: what the model reads</h2>",
        f'<img id="word-chart" alt="word chart" src="{png_data(word_chart(summary))}">',
        _table([w.as_dict() for w in summary.words[:TABLE_WORDS]], WORD_COLUMNS),
        "<p class='note'>share: a word's part of its pair's text attribution (sub-tokens merged, lower-cased); "
        "fair share: what an even split would give it. Flagged (red): 'everywhere' (in half the pairs or more "
        "and holding 1.5x its fair share: a constant prefix or a function word carrying the match) or 'top too "
        "often' (the top word in half its pairs or more, twice what chance gives). A reason the control's own "
        "word table flags the word for too moves to method_artefact (grey): the method, not the model, puts "
        "the word there. All words: words.csv.</p>",
    ]
    typical = summary.typical()
    if typical:
        shown = min(GALLERY, max(1, len(typical) // 2))  # the two galleries never share a pair
        ranked = "most mass in the regions" if summary.regions else "no region: the most concentrated maps"
        parts += [
            f"<h2>Most typical pairs ({ranked})</h2>",
            _gallery(backend, by_row, by_record, typical[:shown], "most-typical"),
            "<h2>Least typical pairs</h2>",
            _gallery(backend, by_row, by_record, typical[::-1][:shown], "least-typical"),
        ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>m2ib audit</title><style>{STYLE}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
    return atomic_write_text(out / "report.html", page)
