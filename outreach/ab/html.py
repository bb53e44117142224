"""The A/B report as one static HTML file: a table and a chart per step, no server, no script.

Pure: it turns the document of :func:`outreach.ab.report.report` into a string. Each table
gives every variant's words (its subject line, or its body's first line, as the sample
prospect reads them) beside its id and numbers; each chart shows every variant's reply rate at
each review (and now) with its 95 % credible interval as a band, on labelled axes with dates,
and a mark at each review saying what it decided, so a marketer sees a variant settle,
overtake or fall behind. Steps nothing was sent for are folded into one line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

from outreach.ab.registry import plural

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP, PAD_RIGHT = 720, 280, 64, 48, 30, 16

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2.2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .25em .7em; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
.retired, .removed { color: #888; } .short { color: #b00; font-weight: 600; }
.note { color: #555; max-width: 60em; } svg { background: #fafafa; border: 1px solid #eee; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .4em; }
td.words, th.words { text-align: left; max-width: 26em; font-style: italic; }
details.segments { margin: .4em 0 1em; } details.segments table { font-size: .92em; }
"""


def render(data: dict[str, Any]) -> str:
    """The whole page."""
    last = data.get("last_review")
    reviewed = f"{last['at'][:16]} UTC ({last['trigger']})" if last else "none yet"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>outreach A/B report</title>",
        '<link rel="icon" href="data:,">',  # no favicon request: the file is all there is
        f"<style>{STYLE}</style></head><body>",
        "<h1>A/B report</h1>",
        f'<p class="note">Generated {escape(data["generated_at"][:16])} UTC. '
        f"Last review: {escape(reviewed)}."
        f"<br>Metric: {escape(data['metric_means'])}.<br>{escape(data['attribution'])}</p>",
    ]
    parts.append(
        f'<p class="note">Subjects and first lines as {escape(data["sample_prospect"])} '
        "would read them ([sample_prospect]).</p>"
    )
    unsent = []
    for step in data["steps"]:
        if not step["sends"]:  # nothing to read yet: folded into one line below
            unsent.append(f"{step['sequence']} / {step['step']}: {plural(step['kind'])}")
            continue
        parts.append(_section(step, data["generated_at"]))
    if unsent:
        parts.append(
            '<details class="unsent"><summary>Not sent yet: '
            f"{len(unsent)} step factor(s)</summary><ul>"
            + "".join(f"<li>{escape(u)}</li>" for u in unsent)
            + "</ul></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _section(step: dict[str, Any], now: str) -> str:
    title = f"{step['sequence']} / {step['step']}: {plural(step['kind'])}"
    short = step["active"] < step["wanted"]
    out = [f"<h2>{escape(title)}</h2>"]
    out.append(
        f'<p class="note">{escape(step["template"])}: {step["active"]} active'
        + (
            f' <span class="short">({step["wanted"]} wanted: write new copy)</span>'
            if short
            else f" ({step['wanted']} wanted)"
        )
        + "</p>"
    )
    words = "subject" if step["kind"] == "subject" else "first line"
    factor = f"{step['sequence']}/{step['step']}/{step['kind']}"
    out.append(
        f'<table class="variants" data-factor="{escape(factor)}">'
        f'<tr><th>variant</th><th class="words">{words}</th><th>sends</th><th>replies</th>'
        "<th>rate</th>"
        "<th>95 % interval</th><th>P(best)</th><th>status</th></tr>"
    )
    for i, v in enumerate(step["variants"]):
        status = v["status"] + (f" ({v['retired']})" if v["retired"] else "")
        text = v["text"] if v["text"] is not None else "(not in the template file)"
        out.append(
            f'<tr class="{escape(v["status"])}" data-variant="{escape(v["variant"])}">'
            f'<td><span class="swatch" style="background:{COLORS[i % len(COLORS)]}"></span>'
            f'{escape(v["variant"])}</td><td class="words">{escape(text)}</td>'
            + _cells(v)
            + f"<td>{escape(status)}</td></tr>"
        )
    out.append("</table>")
    if step["segments"]:
        out.append(_segments(step))
    out.append(chart(step, now))
    return "\n".join(out)


def _cells(v: dict[str, Any]) -> str:
    """sends, replies, rate, interval and P(best) cells (no rate before the first send)."""
    low, high = v["interval"]
    p_best = f"{v['p_best']:.3f}" if v["p_best"] is not None else "–"
    return (
        f'<td class="sends">{v["sends"]}</td><td class="replies">{v["replies"]}</td>'
        + (
            f'<td class="rate">{100 * v["rate"]:.1f} %</td>'
            f"<td>{100 * low:.1f}–{100 * high:.1f} %</td>"
            if v["sends"]
            else '<td class="rate">–</td><td>–</td>'
        )
        + f'<td class="p_best">{p_best}</td>'
    )


def _segments(step: dict[str, Any]) -> str:
    """The active variants per language and persona, folded under the main table."""
    out = [
        '<details class="segments"><summary>By language and persona</summary>',
        '<p class="note">The review decides on all prospects together; P(best) is shown for a '
        "segment only where every active variant has the minimum sends there.</p>",
    ]
    for segment in step["segments"]:
        who = " / ".join(x for x in (segment["language"], segment["persona"]) if x) or "–"
        out.append(
            f'<table class="segment"><tr><th>{escape(who)}</th><th>sends</th><th>replies</th>'
            "<th>rate</th><th>95 % interval</th><th>P(best)</th></tr>"
        )
        for v in segment["variants"]:
            out.append(f"<tr><td>{escape(v['variant'])}</td>{_cells(v)}</tr>")
        out.append("</table>")
    out.append("</details>")
    return "\n".join(out)


def _points(variant: dict[str, Any], now: str) -> list[tuple[datetime, float, float, float]]:
    """(time, rate, low, high) at each review, and now for a variant still in the test."""
    points = [
        (datetime.fromisoformat(h["at"]), h["rate"], h["interval"][0], h["interval"][1])
        for h in variant["history"]
        if h["sends"]  # nothing sent yet: nothing known, nothing to draw
    ]
    if variant["status"] == "active" and variant["sends"]:
        low, high = variant["interval"]
        points.append((datetime.fromisoformat(now), variant["rate"], low, high))
    return sorted(points)


def chart(step: dict[str, Any], now: str) -> str:
    """An SVG line chart of each variant's reply rate over time, with its interval band, axes
    labelled (reply rate; date) and a dashed mark at each review with what it decided."""
    series = [(i, v, _points(v, now)) for i, v in enumerate(step["variants"])]
    series = [(i, v, p) for i, v, p in series if p]
    if not series:
        return '<p class="note">No sends yet: the chart appears after the first messages.</p>'
    marks = [(datetime.fromisoformat(r["at"]), r) for r in step["reviews"]]
    times = [t.timestamp() for _, _, points in series for t, *_ in points]
    times += [t.timestamp() for t, _ in marks]
    t0, t1 = min(times), max(times)
    if t1 == t0:
        t0, t1 = t0 - 86400, t1 + 86400
    top = max(high for _, _, points in series for *_, high in points)
    top = max(0.01, min(1.0, top * 1.1))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    bottom = HEIGHT - PAD_BOTTOM

    def x(t: datetime | float) -> float:
        stamp = t if isinstance(t, float) else t.timestamp()
        return PAD_LEFT + (stamp - t0) / (t1 - t0) * plot_w

    def y(rate: float) -> float:
        return PAD_TOP + (1 - rate / top) * plot_h

    title = f"{step['sequence']}/{step['step']} {plural(step['kind'])}: reply rate over time"
    out = [
        f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif">'
    ]
    for k in range(5):  # horizontal grid with percentages
        rate = top * k / 4
        out.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(rate):.1f}" y2="{y(rate):.1f}" '
            f'stroke="#e4e4e4"/><text x="{PAD_LEFT - 6}" y="{y(rate) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{100 * rate:.1f} %</text>'
        )
    ticks = 5 if t1 - t0 > 4 * 86400 else 2
    for k in range(ticks):  # dates along the bottom
        stamp = t0 + (t1 - t0) * k / (ticks - 1)
        anchor = "start" if k == 0 else "end" if k == ticks - 1 else "middle"
        out.append(
            f'<line x1="{x(stamp):.1f}" x2="{x(stamp):.1f}" y1="{bottom}" y2="{bottom + 4}" '
            f'stroke="#888"/><text class="date" x="{x(stamp):.1f}" y="{bottom + 16}" '
            f'font-size="11" text-anchor="{anchor}">'
            f"{datetime.fromtimestamp(stamp, UTC):%Y-%m-%d}</text>"
        )
    out.append(
        f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{bottom}" y2="{bottom}" '
        f'stroke="#888"/><line x1="{PAD_LEFT}" x2="{PAD_LEFT}" y1="{PAD_TOP}" y2="{bottom}" '
        'stroke="#888"/>'
        f'<text class="axis" x="{PAD_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" font-size="12" '
        'text-anchor="middle">date (UTC)</text>'
        f'<text class="axis" x="14" y="{PAD_TOP + plot_h / 2:.1f}" font-size="12" '
        f'text-anchor="middle" transform="rotate(-90 14 {PAD_TOP + plot_h / 2:.1f})">'
        "reply rate (95 % interval)</text>"
    )
    for t, mark in marks:  # each review: a dashed line and what it decided here
        decided = "retired " + ", ".join(mark["retired"]) if mark["retired"] else "kept all"
        label = f"review {mark['review']} {t:%Y-%m-%d}: {decided}"
        out.append(
            f'<g class="review"><line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{PAD_TOP - 4}" '
            f'y2="{bottom}" stroke="#999" stroke-dasharray="3 3"/>'
            f'<text x="{x(t):.1f}" y="{PAD_TOP - 8}" font-size="10" text-anchor="middle">'
            f"#{mark['review']}{' ✕' if mark['retired'] else ''}</text>"
            f"<title>{escape(label)}</title></g>"
        )
    for i, variant, points in series:
        color = COLORS[i % len(COLORS)]
        upper = " ".join(f"{x(t):.1f},{y(high):.1f}" for t, _, _, high in points)
        lower = " ".join(f"{x(t):.1f},{y(low):.1f}" for t, _, low, _ in reversed(points))
        out.append(f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="0.12"/>')
        line = " ".join(f"{x(t):.1f},{y(rate):.1f}" for t, rate, _, _ in points)
        dash = ' stroke-dasharray="4 3"' if variant["status"] != "active" else ""
        out.append(
            f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}>'
            f"<title>{escape(variant['variant'])}</title></polyline>"
        )
        for t, rate, low, high in points:
            out.append(
                f'<circle cx="{x(t):.1f}" cy="{y(rate):.1f}" r="3" fill="{color}"><title>'
                f"{escape(variant['variant'])} {t:%Y-%m-%d}: {100 * rate:.1f} % "
                f"({100 * low:.1f}–{100 * high:.1f} %)</title></circle>"
            )
    out.append("</svg>")
    if marks:
        out.append(
            '<ul class="note reviews">'
            + "".join(
                f"<li>review {m['review']}, {t:%Y-%m-%d %H:%M} UTC ({escape(m['trigger'])}): "
                + escape("retired " + ", ".join(m["retired"]) if m["retired"] else "kept all")
                + "</li>"
                for t, m in marks
            )
            + "</ul>"
        )
    return "\n".join(out)
