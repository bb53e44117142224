"""The A/B report as one static HTML file: a table and a chart per step, no server, no script.

Pure: it turns the document of :func:`outreach.ab.report` into a string. Each chart shows
every variant's reply rate at each review (and now) with its 95 % credible interval as a band,
so a marketer sees a variant settle, overtake or fall behind.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from outreach.ab import plural

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP, PAD_RIGHT = 640, 220, 48, 28, 12, 12

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2.2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .25em .7em; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
.retired, .removed { color: #888; } .short { color: #b00; font-weight: 600; }
.note { color: #555; max-width: 60em; } svg { background: #fafafa; border: 1px solid #eee; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .4em; }
"""


def render(data: dict[str, Any]) -> str:
    """The whole page."""
    last = data.get("last_review")
    reviewed = f"{last['at'][:16]} UTC ({last['trigger']})" if last else "none yet"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>outreach A/B report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>A/B report</h1>",
        f'<p class="note">Generated {escape(data["generated_at"][:16])} UTC. '
        f"Last review: {escape(reviewed)}."
        f"<br>Metric: {escape(data['metric_means'])}.<br>{escape(data['attribution'])}</p>",
    ]
    for step in data["steps"]:
        parts.append(_section(step, data["generated_at"]))
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
    out.append(
        "<table><tr><th>variant</th><th>sends</th><th>replies</th><th>rate</th>"
        "<th>95 % interval</th><th>P(best)</th><th>status</th></tr>"
    )
    for i, v in enumerate(step["variants"]):
        low, high = v["interval"]
        p_best = f"{v['p_best']:.3f}" if v["p_best"] is not None else "–"
        status = v["status"] + (f" ({v['retired']})" if v["retired"] else "")
        out.append(
            f'<tr class="{escape(v["status"])}"><td><span class="swatch" '
            f'style="background:{COLORS[i % len(COLORS)]}"></span>{escape(v["variant"])}</td>'
            f"<td>{v['sends']}</td><td>{v['replies']}</td>"
            + (
                f"<td>{100 * v['rate']:.1f} %</td><td>{100 * low:.1f}–{100 * high:.1f} %</td>"
                if v["sends"]
                else "<td>–</td><td>–</td>"  # nothing sent: nothing known yet
            )
            + f"<td>{p_best}</td>"
            f"<td>{escape(status)}</td></tr>"
        )
    out.append("</table>")
    out.append(chart(step, now))
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
    """An SVG line chart of each variant's reply rate over time, with its interval band."""
    series = [(i, v, _points(v, now)) for i, v in enumerate(step["variants"])]
    series = [(i, v, p) for i, v, p in series if p]
    if not series:
        return '<p class="note">No sends yet: the chart appears after the first messages.</p>'
    times = [t.timestamp() for _, _, points in series for t, *_ in points]
    t0, t1 = min(times), max(times)
    if t1 == t0:
        t0, t1 = t0 - 86400, t1 + 86400
    top = max(high for _, _, points in series for *_, high in points)
    top = max(0.01, min(1.0, top * 1.1))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(t: datetime) -> float:
        return PAD_LEFT + (t.timestamp() - t0) / (t1 - t0) * plot_w

    def y(rate: float) -> float:
        return PAD_TOP + (1 - rate / top) * plot_h

    out = [
        f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="reply rate over time">'
    ]
    for k in range(5):  # horizontal grid with percentages
        rate = top * k / 4
        out.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(rate):.1f}" y2="{y(rate):.1f}" '
            f'stroke="#e4e4e4"/><text x="{PAD_LEFT - 6}" y="{y(rate) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{100 * rate:.1f} %</text>'
        )
    for label_t in (t0, t1):
        when = datetime.fromtimestamp(label_t).strftime("%Y-%m-%d")
        anchor = "start" if label_t == t0 else "end"
        out.append(
            f'<text x="{PAD_LEFT if label_t == t0 else WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" '
            f'font-size="11" text-anchor="{anchor}">{when}</text>'
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
    return "\n".join(out)
