"""``DIR/report.html``: one self-contained page (figures embedded as base64 PNG): per tower the
criteria table (front, qualifying and chosen points marked), the sanity-against-faithfulness plot
and the first pairs' maps at the chosen and at the published settings."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from .choice import TowerChoice
from .criteria import directions_of
from .rule import SANITY_LIMIT

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}tr.chosen{background:#d9f2d9;font-weight:bold}"
    "tr.front td:first-child{border-left:4px solid #4a7}"
)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _fmt(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def table(c: TowerChoice) -> str:
    keys = list(directions_of(c.tower))  # type: ignore[arg-type]
    keys = [k for k in keys if any(k in r["criteria"] for r in c.records)]
    head = "".join(f"<th>{k} ({directions_of(c.tower)[k]})</th>" for k in keys)  # type: ignore[arg-type]
    rows = []
    for i, r in enumerate(c.records):
        cls = "chosen" if c.chosen is r else ("front" if i in c.choice.front else "")
        mark = "chosen" if c.chosen is r else c.choice.reasons.get(i, "qualifies" if i in c.choice.qualifying else "")
        mark = mark or ("" if i in c.choice.front else "dominated")
        cells = "".join(f"<td>{_fmt(r['criteria'].get(k))}</td>" for k in keys)
        rows.append(
            f'<tr class="{cls}"><td>{r["variant"]}</td><td>{r["layer"]}</td><td>{r["beta"]:g}</td>{cells}'
            f"<td>{_fmt(r['criteria'].get('deletion'))} / {_fmt(r['criteria'].get('insertion'))}</td>"
            f"<td>{r.get('seconds', 0):.1f}</td><td style='text-align:left'>{html.escape(mark)}</td></tr>"
        )
    return (
        f"<table><tr><th>bottleneck</th><th>layer</th><th>beta</th>{head}<th>deletion / insertion AUC</th>"
        f"<th>s</th><th>rule</th></tr>{''.join(rows)}</table>"
    )


def front_plot(c: TowerChoice, published: str | None) -> str:
    fig = _figure((6.0, 4.2))
    ax = fig.subplots()
    markers = ["o", "s", "^", "D", "v"]
    variants = list(dict.fromkeys(r["variant"] for r in c.records))
    for j, v in enumerate(variants):
        mine = [(i, r) for i, r in enumerate(c.records) if r["variant"] == v]
        xs = [r["criteria"].get("sanity") for _, r in mine]
        ys = [r["criteria"].get("faithfulness") for _, r in mine]
        face = ["C2" if i in c.choice.front else "none" for i, _ in mine]
        ax.scatter(xs, ys, marker=markers[j % len(markers)], edgecolors="C0", facecolors=face, label=v, s=45)
        for (_, r), x, y in zip(mine, xs, ys):
            ax.annotate(f"L{r['layer']} b{r['beta']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if c.chosen is not None:
        ch = c.chosen["criteria"]
        ax.scatter([ch.get("sanity")], [ch.get("faithfulness")], marker="*", s=260, c="C3", label="chosen", zorder=3)
    pub = next((r for r in c.records if r["key"] == published), None)
    if pub is not None:
        pc = pub["criteria"]
        label = "M2IB with no setting (published)"
        ax.scatter([pc.get("sanity")], [pc.get("faithfulness")], marker="x", s=120, c="k", label=label, zorder=3)
    ax.axvline(SANITY_LIMIT, color="grey", ls="--", lw=1)
    ax.axhline(0.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("sanity: |Spearman| with the randomised-above map (lower is better)")
    ax.set_ylabel("faithfulness: insertion - deletion AUC (higher)")
    verdict = "no recommendation" if c.chosen is None else "star = chosen"
    ax.set_title(f"{c.tower} tower: filled = Pareto front (all criteria); {verdict}", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def image_maps(c: TowerChoice, published: str | None, pictures: Any, captions: list[str]) -> str:
    pub = next((r for r in c.records if r["key"] == published), None)
    columns: list[tuple[str, dict[str, Any]]] = [
        (name, r) for name, r in (("no setting", pub), ("chosen", c.chosen)) if r is not None
    ]
    n = min(len(pictures), *(len(r["preview"]) for _, r in columns)) if columns else 0
    if not n:
        return "<p>(no maps to show)</p>"
    fig = _figure((2.2 * (1 + len(columns)), 2.2 * n))
    axes = fig.subplots(n, 1 + len(columns), squeeze=False)
    for i in range(n):
        picture = pictures[i].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[i][0].imshow(picture)
        axes[i][0].set_title(captions[i] if i < len(captions) else "", fontsize=8)
        for j, (name, r) in enumerate(columns, 1):
            axes[i][j].imshow(picture)
            extent = (-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5)
            axes[i][j].imshow(r["preview"][i], cmap="jet", alpha=0.5, extent=extent, interpolation="bilinear")
            if i == 0:
                axes[i][j].set_title(f"{name}: {r['variant']}\nlayer {r['layer']}, beta {r['beta']:g}", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    return _png(fig)


def text_maps(c: TowerChoice, published: str | None, tokens: list[list[str]]) -> str:
    pub = next((r for r in c.records if r["key"] == published), None)
    parts = []
    for name, r in (("M2IB with no setting", pub), ("chosen", c.chosen)):
        if r is None:
            continue
        parts.append(f"<p><b>{name}</b>: {r['variant']}, layer {r['layer']}, beta {r['beta']:g}</p>")
        for toks, scores in zip(tokens, r["preview"]):
            spans = "".join(
                f'<span style="background:rgba(220,40,40,{float(s):.2f});padding:1px">{html.escape(t)}</span> '
                for t, s in zip(toks, scores)
            )
            parts.append(f"<div>{spans}</div>")
    return "".join(parts)


def write_report(
    out: Path,
    choices: list[TowerChoice],
    run: dict[str, Any],
    published: dict[str, str],
    pictures: Any,
    tokens: Any,
    captions: list[str],
) -> Path:
    body = [f"<h1>m2ib tune</h1><p><code>{html.escape(run.get('command', ''))}</code></p>"]
    body.append(
        f"<p>model {html.escape(str(run.get('model')))}, data {html.escape(str(run.get('data')))}, "
        f"{run.get('pairs')} pairs, seed {run.get('seed')}. Rule: docs/tune.md.</p>"
    )
    for c in choices:
        verdict = (
            "no recommendation: the defaults stay"
            if c.chosen is None
            else f"chosen: {c.chosen['variant']}, layer {c.chosen['layer']}, beta {c.chosen['beta']:g}"
        )
        body.append(f"<h2>{c.tower} tower</h2><p><b>{html.escape(verdict)}</b> ({html.escape(c.choice.why)})</p>")
        if c.note:
            body.append(f"<p>note: {html.escape(c.note)}</p>")
        if c.chance:
            body.append(f"<p>chance levels: {html.escape(', '.join(f'{k} {v:.3f}' for k, v in c.chance.items()))}</p>")
        body.append(table(c))
        body.append(front_plot(c, published.get(c.tower)))
        body.append(
            image_maps(c, published.get(c.tower), pictures, captions)
            if c.tower == "image"
            else text_maps(c, published.get(c.tower), tokens)
        )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>m2ib tune</title><style>{STYLE}</style></head>"
    return atomic_write_text(out / "report.html", page + "<body>" + "\n".join(body) + "</body></html>\n")
