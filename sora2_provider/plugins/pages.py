"""The HTML of the Video tab and the Sora 2 page: server-rendered, no script, no CDN (the UI shows it in an iframe).

Every value is escaped. Links are relative to ``/sora2/``, where both pages live, so they work under any base URL.
Facts carry ``data-*`` attributes with the raw values, for the UI tests and for anyone scraping the page.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from sora2_provider.plugins.records import Filters, Generation, Identity

STYLE = """
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db; --accent: #7c3aed; --bad: #b91c1c; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; padding: 16px 20px; }
h1 { font-size: 20px; margin: 0 0 12px; }
a { color: var(--accent); }
.status { padding: 10px 12px; border-left: 4px solid var(--muted); background: rgba(127,127,127,.08); }
.status[data-state=failed], .status[data-state=up_for_retry] { border-color: var(--bad); }
.error { color: var(--bad); font-weight: 600; }
.video-tab { display: grid; grid-template-columns: minmax(280px, 560px) minmax(260px, 1fr); gap: 20px; }
.video-tab video { width: 100%; max-height: 70vh; background: #000; border-radius: 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.summary { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; margin-bottom: 12px; }
.summary figure { margin: 0; }
.summary figcaption, .balance small, .meta, .count { color: var(--muted); }
.balance { min-width: 180px; padding: 8px 12px; border: 1px solid var(--line); border-radius: 6px; }
.balance strong { display: block; font-size: 22px; }
svg .bar { fill: var(--accent); }
svg text { fill: currentColor; font-size: 10px; }
form.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin: 8px 0 12px; }
form.filters label { display: grid; gap: 2px; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
.generation { border: 1px solid var(--line); border-radius: 6px; padding: 8px; display: grid; gap: 4px; }
.generation video, .generation .placeholder { width: 100%; aspect-ratio: 16 / 9; background: #000; border-radius: 4px; }
.generation .placeholder { display: grid; place-items: center; padding: 8px; box-sizing: border-box;
  background: rgba(127,127,127,.12); color: var(--muted); text-align: center; font-size: 12px; overflow: auto; }
.prompt { margin: 0; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
.meta { margin: 0; font-size: 12px; overflow-wrap: anywhere; }
"""

#: (label, XCom key) of the facts the Video tab shows, in order.
FACTS = (
    ("Prompt", "prompt"),
    ("Model", "model"),
    ("Duration (s)", "duration"),
    ("Size", "size"),
    ("Cost (credits)", "cost"),
    ("Request id", "request_id"),
    ("Decision", "decision"),
    ("SHA-256", "sha256"),
    ("Stored at", "uri"),
    ("Bytes", "bytes"),
)


def document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def message_page(status: int, message: str) -> str:
    """A refusal or an error, in one line."""
    return document(f"Sora 2: {status}", f'<p class="error" data-status="{status}">{escape(message)}</p>')


def bytes_href(identity: Identity) -> str:
    return "video/bytes?" + urlencode(identity.query())


def video_href(identity: Identity) -> str:
    return "video?" + urlencode(identity.query())


# ---------------------------------------------------------------------------------------------- the Video tab


def video_page(generation: Generation, now: datetime) -> str:
    identity = generation.identity
    line = generation.status_line(now)
    if line is None:
        player = (
            f'<video id="sora2-video" controls preload="metadata" playsinline '
            f'src="{escape(bytes_href(identity))}"></video>'
        )
    else:
        player = f'<p class="status" data-state="{escape(generation.state or "none")}">{escape(line)}</p>'
    facts = "".join(_fact(label, key, generation.fact(key)) for label, key in FACTS)
    title = f"{identity.dag_id} / {identity.task_id}"
    body = (
        f'<main class="video-tab"><section>{player}</section>'
        f'<section><dl class="facts">{facts}</dl>'
        f'<p><a href="./">All Sora 2 generations</a></p></section></main>'
    )
    return document(f"Video: {title}", body)


def _fact(label: str, key: str, value: Any) -> str:
    shown = "—" if value is None else (f"{value:.2f}" if key == "cost" and isinstance(value, float) else str(value))
    raw = "" if value is None else str(value)
    return f'<dt>{escape(label)}</dt><dd data-fact="{key}" data-value="{escape(raw)}">{escape(shown)}</dd>'


# ---------------------------------------------------------------------------------------------- the Sora 2 page


def gallery_page(
    generations: list[Generation],
    filters: Filters,
    dag_ids: list[str],
    models: Iterable[str],
    spend: dict[date, float],
    balance: str,
    now: datetime,
) -> str:
    cards = "".join(_card(generation, now) for generation in generations)
    if not cards:
        cards = '<p class="count">No generation matches.</p>'
    body = (
        "<h1>Sora 2 generations</h1>"
        f'<section class="summary">{spend_chart(spend)}{balance}</section>'
        f"{_filter_form(filters, dag_ids, models)}"
        f'<p class="count" id="generation-count" data-count="{len(generations)}">'
        f"{len(generations)} generation{'s' if len(generations) != 1 else ''}, newest first</p>"
        f'<section class="grid">{cards}</section>'
    )
    return document("Sora 2", body)


def balance_box(conn_id: str, credits: dict[str, float] | None, problem: str | None) -> str:
    """The account balance (``credits`` from the credits call), or why it is not shown."""
    if credits is None:
        label = f"<small>Balance ({escape(conn_id)})</small>"
        return f'<div class="balance" id="balance">{label}{escape(problem or "")}</div>'
    return (
        f'<div class="balance" id="balance" data-credits="{credits["credits"]}">'
        f"<small>Balance ({escape(conn_id)})</small><strong>{credits['credits']:.2f}</strong>"
        f"<small>credits, plus {credits['free_credits']:.2f} free; checked at most a minute ago</small></div>"
    )


def spend_chart(spend: dict[date, float], width: int = 600, height: int = 150) -> str:
    """Spend per day as an inline SVG bar chart (a label every 7 days, counted back from today), with the total
    and the highest day in its caption."""
    days = sorted(spend)
    total = sum(spend.values())
    top = max([*spend.values(), 0.01])
    plot = height - 22
    step = width / max(len(days), 1)
    bars, labels = [], []
    for number, day in enumerate(days):
        cost = spend[day]
        bar = plot * cost / top
        x = number * step
        bars.append(
            f'<rect class="bar" data-day="{day.isoformat()}" data-cost="{cost:.6g}" x="{x + 1:.1f}" '
            f'y="{plot - bar:.1f}" width="{max(step - 2, 1):.1f}" height="{bar:.1f}">'
            f"<title>{day.isoformat()}: {cost:.2f} credits</title></rect>"
        )
        if (len(days) - 1 - number) % 7 == 0:
            labels.append(
                f'<text x="{x + step / 2:.1f}" y="{height - 6}" text-anchor="middle">{day.strftime("%b %d")}</text>'
            )
    svg = (
        f'<svg id="spend-chart" role="img" aria-label="Credits spent per day" width="{width}" height="{height}" '
        f'viewBox="-20 0 {width + 40} {height}"><line x1="0" y1="{plot}" x2="{width}" y2="{plot}" '
        f'stroke="currentColor" stroke-opacity=".3"/>{"".join(bars)}{"".join(labels)}</svg>'
    )
    caption = (
        f"Spend per day, last {len(days)} days (UTC), from the stored XCom costs: "
        f'<strong id="spend-total" data-total="{total:.6g}">{total:.2f} credits</strong>'
        f" (highest day {max(spend.values(), default=0.0):.2f})"
    )
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _filter_form(filters: Filters, dag_ids: list[str], models: Iterable[str]) -> str:
    dag_options = _options(dag_ids, filters.dag_id, "All DAGs")
    model_options = _options(models, filters.model, "All models")
    since = filters.since.isoformat() if filters.since else ""
    until = filters.until.isoformat() if filters.until else ""
    return (
        '<form class="filters" method="get" action="./">'
        f'<label>DAG<select name="dag_id">{dag_options}</select></label>'
        f'<label>From<input type="date" name="since" value="{since}"></label>'
        f'<label>To<input type="date" name="until" value="{until}"></label>'
        f'<label>Model<select name="model">{model_options}</select></label>'
        '<button type="submit">Filter</button> <a href="./">Reset</a></form>'
    )


def _options(values: Iterable[str], chosen: str | None, everything: str) -> str:
    options = [f'<option value="">{escape(everything)}</option>']
    for value in values:
        selected = " selected" if value == chosen else ""
        options.append(f'<option value="{escape(value)}"{selected}>{escape(value)}</option>')
    return "".join(options)


def _card(generation: Generation, now: datetime) -> str:
    identity = generation.identity
    line = generation.status_line(now)
    if line is None:
        media = f'<video preload="metadata" muted playsinline controls src="{escape(bytes_href(identity))}"></video>'
    else:
        media = f'<div class="placeholder">{escape(line)}</div>'
    cost = generation.fact("cost")
    cost_text = f"{cost:.2f} credits" if isinstance(cost, (int, float)) else "no charge recorded"
    map_part = f"[{identity.map_index}]" if identity.map_index >= 0 else ""
    attributes = {
        "data-dag-id": identity.dag_id,
        "data-run-id": identity.run_id,
        "data-task-id": identity.task_id,
        "data-map-index": str(identity.map_index),
        "data-state": generation.state or "none",
        "data-model": str(generation.fact("model") or ""),
        "data-cost": "" if cost is None else str(cost),
    }
    attrs = " ".join(f'{name}="{escape(value)}"' for name, value in attributes.items())
    return (
        f'<article class="generation" {attrs}>{media}'
        f'<p class="prompt">{escape(str(generation.fact("prompt") or ""))}</p>'
        f'<p class="meta">{escape(identity.dag_id)} · {escape(identity.run_id)} · {escape(identity.task_id)}'
        f"{map_part}<br>{escape(cost_text)} · {escape(generation.state or 'none')} · "
        f'<a href="{escape(video_href(identity))}">details</a></p></article>'
    )
