"""The report as one self-contained HTML page: inline CSS and SVG, no script.

Nothing is fetched (a Content-Security-Policy forbids it, and scripts, even if
some text escaped its escaping); every piece of record text goes through
``_t``/``_a`` (HTML-escaped, control characters shown as ``\\xNN``). The page
is navigable with the keyboard: a skip link, a list of links to the alerts,
native tables, and every chart is a focusable figure whose numbers are also
in a table. The same records always give the same page (no wall clock).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from sensor.core.timefmt import iso_us
from sensor.detect.rules import CorrelationRule, DetectionRule, RuleSet
from sensor.export.kql import hunt_kql
from sensor.report.model import (
    MAX_DETAILED_ALERTS,
    MAX_FILES_PER_ALERT,
    OVERVIEW_ROWS,
    Alert,
    Conn,
    ReportBuilder,
    Timeline,
    Transfer,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
W = 1000  # SVG width (viewBox units); the SVG scales to the page
LABEL_W = 190  # left margin for row labels
ROW_H = 14

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1em 3em;color:#111}
a{color:#0645ad}:focus{outline:3px solid #e67e00;outline-offset:2px}
.skip{position:absolute;left:-9999px}.skip:focus{left:1em;top:1em;background:#fff;padding:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#f3f3f3}
td.n{text-align:right;white-space:nowrap}
figure{margin:.5em 0}svg{width:100%;height:auto;background:#fafafa;border:1px solid #ddd}
svg text{font:11px sans-serif;fill:#333}.mark{fill:#1f5fbf}.sent{fill:#c0392b}.received{fill:#2471a3}
.conn-mark{fill:#1f5fbf}.xfer-mark{fill:#d35400}.axis{stroke:#999;stroke-width:1}
pre{background:#f6f6f6;padding:.6em;overflow:auto;white-space:pre-wrap}
article.alert{border-top:2px solid #444;margin-top:2em}.lvl{font-weight:bold;text-transform:uppercase}
dl.key{display:grid;grid-template-columns:max-content auto;gap:0 1em}dt{font-weight:bold}dd{margin:0}
.note{color:#555}
"""


def _t(v: Any) -> str:
    """Record text for an element's content: control characters visible, markup escaped."""
    s = v if isinstance(v, str) else str(v)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in s)
    return html.escape(s, quote=True)


_a = _t  # the same escaping serves attribute values (quotes included)


def _pre(s: str) -> str:
    """Multi-line text for a <pre>: each line as ``_t``."""
    return "\n".join(_t(line) for line in s.split("\n"))


def _n(v: int) -> str:
    return f"{v:,}"


def _time(us: int | None) -> str:
    return iso_us(us) if us is not None else "?"


def _axis(svg: list[str], t0: int, t1: int, x0: float, x1: float, y: float) -> None:
    """Five time ticks between t0 and t1 (seconds)."""
    svg.append(f'<line class="axis" x1="{x0}" y1="{y}" x2="{x1}" y2="{y}"/>')
    for k in range(5):
        t = t0 + (t1 - t0) * k // 4
        x = x0 + (x1 - x0) * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        svg.append(f'<text x="{x:.1f}" y="{y + 13}" text-anchor="{anchor}">{iso_us(t * 1_000_000)[:19]}Z</text>')


def _overview(b: ReportBuilder) -> str:
    tl = b.overview
    t0, t1 = tl.span()
    top = b.top_remotes()
    shown = {(ip, port) for ip, port, _c in top[:OVERVIEW_ROWS]}
    merged: dict[int, int] = {}
    merged_keys = 0
    for key, series in tl.series.items():
        if key is None or key not in shown:
            merged_keys += key is not None
            for i, v in series.items():
                merged[i] = merged.get(i, 0) + v
    rows: list[tuple[str, str, dict[int, int], int]] = [
        (f"{ip}:{port}", f"{ip}:{port}", tl.series.get((ip, port), {}), n) for ip, port, n in top[:OVERVIEW_ROWS]
    ]
    if merged:
        other = sum(merged.values())
        extra = f" and {_n(b.counts.remote_keys_other)} beyond the key bound" if b.counts.remote_keys_other else ""
        rows.append(("other", f"{_n(merged_keys)} other remote:port keys{extra}", merged, other))
    nb = max(1, tl.hi - tl.lo + 1) if tl.lo is not None else 1
    lo = tl.lo or 0
    x0, x1 = LABEL_W, W - 10
    bw = (x1 - x0) / nb
    h = 10 + ROW_H * len(rows) + 24
    peak = max((v for _k, _l, s, _t in rows for v in s.values()), default=1)
    svg = [f'<svg viewBox="0 0 {W} {h}" aria-hidden="true" focusable="false">']
    for r, (key, label, series, total) in enumerate(rows):
        y = 10 + r * ROW_H
        svg.append(f'<g class="row" data-key="{_a(key)}" data-total="{total}">')
        svg.append(f'<text x="{LABEL_W - 6}" y="{y + 10}" text-anchor="end">{_t(label[:32])}</text>')
        for i in sorted(series):
            v = series[i]
            op = 0.25 + 0.75 * v / peak
            svg.append(
                f'<rect class="mark" x="{x0 + (i - lo) * bw:.2f}" y="{y + 1}" width="{max(bw, 1.5):.2f}" '
                f'height="{ROW_H - 2}" fill-opacity="{op:.2f}" data-count="{v}"><title>{_t(label)}: {_n(v)} '
                f"connection(s) from {iso_us(i * tl.width * 1_000_000)}</title></rect>"
            )
        svg.append("</g>")
    _axis(svg, t0, t1, x0, x1, 10 + ROW_H * len(rows) + 4)
    svg.append("</svg>")
    table = [
        '<table id="remotes-table"><caption>Connections per remote and port (the rows of the chart)</caption>'
        "<tr><th>remote:port</th><th>connections</th></tr>"
    ]
    for _key, label, _s, total in rows:
        table.append(f"<tr><td>{_t(label)}</td><td class=n>{_n(total)}</td></tr>")
    table.append("</table>")
    return (
        '<figure id="overview-timeline" tabindex="0" aria-labelledby="overview-cap">'
        + "".join(svg)
        + f'<figcaption id="overview-cap">Connections per remote and port over time ({len(rows)} rows, '
        f"{nb} bins of {_n(tl.width)} s; darker = more connections)</figcaption></figure>" + "".join(table)
    )


def _volume(b: ReportBuilder) -> str:
    tl: Timeline = b.volume
    t0, t1 = tl.span()
    nb = max(1, tl.hi - tl.lo + 1) if tl.lo is not None else 1
    lo = tl.lo or 0
    sent, recv = tl.series.get("sent", {}), tl.series.get("received", {})
    peak = max(list(sent.values()) + list(recv.values()) + [1])
    x0, x1 = LABEL_W, W - 10
    bw = (x1 - x0) / nb
    half = 70
    mid = 10 + half
    svg = [f'<svg viewBox="0 0 {W} {2 * half + 40}" aria-hidden="true" focusable="false">']
    svg.append(f'<text x="{LABEL_W - 6}" y="{mid - half / 2}" text-anchor="end">sent (device to remote)</text>')
    svg.append(f'<text x="{LABEL_W - 6}" y="{mid + half / 2}" text-anchor="end">received</text>')
    for cls, series, sign in (("sent", sent, -1), ("received", recv, 1)):
        for i in sorted(series):
            v = series[i]
            if not v:
                continue
            hgt = max(1.0, half * v / peak)
            y = mid - hgt if sign < 0 else mid
            svg.append(
                f'<rect class="{cls}" x="{x0 + (i - lo) * bw:.2f}" y="{y:.2f}" width="{max(bw, 1.5):.2f}" '
                f'height="{hgt:.2f}" data-bytes="{v}"><title>{cls}: {_n(v)} B from '
                f"{iso_us(i * tl.width * 1_000_000)}</title></rect>"
            )
    _axis(svg, t0, t1, x0, x1, 2 * half + 14)
    svg.append("</svg>")
    tot_s, tot_r = sum(sent.values()), sum(recv.values())
    return (
        '<figure id="bytes-timeline" tabindex="0" aria-labelledby="bytes-cap">'
        + "".join(svg)
        + f'<figcaption id="bytes-cap">Bytes over time per direction, each connection\'s bytes at its first '
        f"packet: sent {_n(tot_s)} B (up), received {_n(tot_r)} B (down); bins of {_n(tl.width)} s"
        "</figcaption></figure>"
    )


def _alert_timeline(n: int, conns: Sequence[tuple[str, Conn]], files: Sequence[Transfer]) -> str:
    times = [c.ts for _u, c in conns] + [c.last for _u, c in conns] + [f.ts for f in files]
    if not times:
        return '<p class="note">None of the counted connections is in the records: no timeline.</p>'
    t0, t1 = min(times), max(times)
    span = max(1, t1 - t0)
    x0, x1 = 150, W - 20
    sc = (x1 - x0) / span
    svg = [f'<svg viewBox="0 0 {W} 84" aria-hidden="true" focusable="false">']
    svg.append('<text x="144" y="24" text-anchor="end">counted connections</text>')
    svg.append('<text x="144" y="54" text-anchor="end">transfers</text>')
    for uid, c in conns:
        x = x0 + (c.ts - t0) * sc
        w = max(3.0, (c.last - c.ts) * sc)
        svg.append(
            f'<rect class="conn-mark" x="{x:.2f}" y="12" width="{w:.2f}" height="16" data-uid="{_a(uid)}">'
            f"<title>{_t(uid)} {iso_us(c.ts)} to {iso_us(c.last)}: {_t(c.action)}, sent {_n(c.sent)} B "
            f"(+{_n(c.data_sent)} B data), received {_n(c.received)} B</title></rect>"
        )
    for f in files:
        x = x0 + (f.ts - t0) * sc
        svg.append(
            f'<circle class="xfer-mark" cx="{x:.2f}" cy="48" r="5"><title>{iso_us(f.ts)} {_t(f.direction)} '
            f"{_t(f.filename)} ({_n(f.bytes)} B)</title></circle>"
        )
    svg.append(f'<line class="axis" x1="{x0}" y1="64" x2="{x1}" y2="64"/>')
    svg.append(f'<text x="{x0}" y="78">{iso_us(t0)}</text>')
    svg.append(f'<text x="{x1}" y="78" text-anchor="end">{iso_us(t1)}</text>')
    svg.append("</svg>")
    return (
        f'<figure class="alert-timeline" id="alert-{n}-timeline" tabindex="0" aria-labelledby="alert-{n}-cap">'
        + "".join(svg)
        + f'<figcaption id="alert-{n}-cap">{len(conns)} counted connection(s) and {len(files)} transfer(s) '
        "over time (listed in the tables below)</figcaption></figure>"
    )


def _rule_html(rules: RuleSet | None, rule_id: str) -> str:
    if rules is None:
        return "<p class=note>No rules loaded.</p>"
    cor = next((c for c in rules.correlations if c.id == rule_id), None)
    det = next((d for d in rules.detections if d.id == rule_id), None)
    if cor is None and det is None:
        return f"<p class=note>Rule {_t(rule_id)} is not among the loaded rules (--rules).</p>"
    out = []
    dets: list[DetectionRule] = [det] if det is not None else []
    if cor is not None:
        dets = [d for d in rules.detections if d.id in cor.rules]
        out.append(_rule_head(cor))
        out.append(
            f"<p>Counts {_t(', '.join(d.ref for d in dets))}: {_t(cor.op)} {cor.threshold} within "
            f"{_n(cor.timespan_s)} s by {_t(', '.join(cor.group_by))}.</p>"
        )
    for d in dets:
        out.append(_rule_head(d))
        body = {k: v for k, v in d.detection.items()}
        out.append(f"<pre class=detection>{_pre(json.dumps(body, indent=1, ensure_ascii=False, default=str))}</pre>")
        if d.filters:
            out.append(
                "<table class=allow><caption>Allow filters (Sigma filters)</caption><tr><th>filter</th><th>reason</th>"
                "<th>expires</th><th>condition and selections</th></tr>"
            )
            for e in d.filters:
                sel = json.dumps(dict(e.filter.detection), ensure_ascii=False, default=str)
                out.append(
                    f"<tr><td>{_t(e.name)}</td><td>{_t(e.reason)}</td>"
                    f"<td>{_t(e.expires or 'no expiry')}</td><td><code>{_t(sel)}</code></td></tr>"
                )
            out.append("</table>")
        else:
            out.append("<p>No allow filters.</p>")
    if cor is not None:
        out.append("<h5>The hunt (KQL)</h5>")
        out.append(f"<pre class=kql><code>{_pre(hunt_kql(cor, dets))}</code></pre>")
    return "".join(out)


def _rule_head(r: CorrelationRule | DetectionRule) -> str:
    return (
        f"<p><b>{_t(r.title)}</b> ({_t(r.level)}; id {_t(r.id)}{'; name ' + _t(r.name) if r.name else ''}; "
        f"{_t(r.source)})</p>" + (f"<p>{_t(r.description)}</p>" if r.description else "")
    )


_KEY_LABELS = (
    ("DeviceName", "Device"),
    ("InitiatingProcessFileName", "Process"),
    ("RemoteIP", "Remote IP"),
    ("RemotePort", "Remote port"),
    ("AccountName", "Account"),
    ("Protocol", "Protocol"),
)


def _alert_html(n: int, a: Alert, b: ReportBuilder, rules: RuleSet | None) -> str:
    found = [(u, b.conns[u]) for u in a.uids if u in b.conns]
    found.sort(key=lambda uc: (uc[1].ts, uc[0]))
    files = b.files_of(a.uids)
    k = a.key
    out = [
        f'<article class="alert" id="alert-{n}" aria-labelledby="alert-{n}-h">',
        f'<h3 id="alert-{n}-h">Alert {n}: <span class="lvl">{_t(a.level)}</span> {_t(k["DeviceName"])} '
        f"&rarr; {_t(k['RemoteIP'])}:{_t(k['RemotePort'])} ({_t(k['Protocol'])})</h3>",
        f"<p>{_t(a.title)}: raised at {_time(a.ts)}, {_n(a.count)} connection(s), {_t(a.threshold)}.</p>",
        '<dl class="key">',
    ]
    for fld, label in _KEY_LABELS:
        out.append(f"<dt>{label}</dt><dd>{_t(k[fld]) or '<span class=note>(empty)</span>'}</dd>")
    out.append(
        f"<dt>Bytes</dt><dd>sent {_n(a.sent)}, received {_n(a.received)}</dd>"
        f"<dt>Seen</dt><dd>{_time(a.first)} to {_time(a.last)}</dd></dl>"
    )
    out.append(_alert_timeline(n, found, files))
    missing = a.uids_total - len(found)
    out.append(f"<h4>Counted connections ({len(found)})</h4>")
    if missing:
        out.append(f"<p class=note>{_n(missing)} counted connection(s) not in the records (or beyond the bounds).</p>")
    out.append(
        "<table class=conns><tr><th>first packet</th><th>Uid</th><th>local</th><th>remote</th><th>action</th>"
        "<th>app</th><th>login</th><th>sent</th><th>received</th><th>data sent</th><th>data received</th>"
        "<th>process (pid)</th><th>parent (pid)</th><th>command line</th><th>process account</th></tr>"
    )
    for uid, c in found:
        proc = f"{_t(c.process)} ({c.pid})" if c.process else "<span class=note>unknown (replay)</span>"
        parent = f"{_t(c.parent)} ({c.ppid})" if c.parent else ""
        out.append(
            f"<tr><td>{iso_us(c.ts)}</td><td>{_t(uid)}</td><td>{_t(c.local)}</td>"
            f"<td>{_t(c.remote)}:{c.remote_port}</td><td>{_t(c.action)}</td><td>{_t(c.app)}</td>"
            f"<td>{_t(c.user)}</td><td class=n>{_n(c.sent)}</td><td class=n>{_n(c.received)}</td>"
            f"<td class=n>{_n(c.data_sent)}</td><td class=n>{_n(c.data_received)}</td><td>{proc}</td>"
            f"<td>{parent}</td><td>{_t(c.command_line)}</td><td>{_t(c.account)}</td></tr>"
        )
    out.append("</table>")
    out.append(f"<h4>Files moved ({len(files)}{'+' if len(files) >= MAX_FILES_PER_ALERT else ''})</h4>")
    if files:
        out.append(
            "<table class=files><tr><th>time</th><th>protocol</th><th>command</th><th>direction</th>"
            "<th>file</th><th>share</th><th>bytes</th><th>complete</th><th>login</th></tr>"
        )
        for f in files:
            claim = f" (claimed {_n(f.claimed)})" if f.claimed is not None else ""
            trunc = " (name truncated)" if f.truncated else ""
            out.append(
                f"<tr><td>{iso_us(f.ts)}</td><td>{_t(f.protocol)}</td><td>{_t(f.command)}</td>"
                f"<td>{_t(f.direction)}</td><td class=filename>{_t(f.filename)}{trunc}</td><td>{_t(f.share)}</td>"
                f"<td class=n>{_n(f.bytes)}{claim}</td><td>{'yes' if f.complete else 'no'}</td>"
                f"<td>{_t(f.user)}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No file transfers recorded for these connections.</p>")
    out.append("<h4>Rule</h4>")
    out.append(_rule_html(rules, a.rule_id))
    out.append("</article>")
    return "".join(out)


def render_html(b: ReportBuilder, rules: RuleSet | None, source: Sequence[str]) -> str:
    c = b.counts
    alerts = sorted(b.alerts, key=lambda a: (a.ts, a.key["DeviceName"], a.key["RemoteIP"], a.key["RemotePort"]))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>xfer-sensor report</title>",
        f"<style>{_CSS}</style></head><body>",
        '<a class="skip" href="#alerts">Skip to the alerts</a>',
        "<header><h1>xfer-sensor report</h1>",
        f"<p>From {_t(', '.join(source))}: {_time(b.first)} to {_time(b.last)}.</p>",
        f'<p id="totals">{_n(c.connections)} connection(s), {_n(c.transfers)} transfer(s), '
        f'<span id="alert-count">{_n(c.alerts)}</span> alert(s), {_n(c.weird)} weird record(s).</p>',
    ]
    if c.actions:
        out.append(
            "<p>Connections by ActionType: "
            + ", ".join(f"{_t(k)} {_n(v)}" for k, v in sorted(c.actions.items()))
            + ".</p>"
        )
    notes = [f"{_n(v)} {_t(k)}" for k, v in sorted(c.skipped.items())]
    if c.bad_values:
        notes.append(f"{_n(c.bad_values)} value(s) that were not whole numbers >= 0, counted as 0")
    if c.conns_not_kept or c.transfers_not_kept or c.alerts_not_kept:
        notes.append(
            f"not kept for alert details (bounds): {_n(c.conns_not_kept)} connection(s), "
            f"{_n(c.transfers_not_kept)} transfer(s), {_n(c.alerts_not_kept)} alert(s)"
        )
    if notes:
        out.append(f'<p class="note" id="skipped">Left out: {"; ".join(notes)}.</p>')
    out.append("</header>")
    out.append('<nav aria-label="Alerts"><h2>Alerts</h2>')
    if alerts:
        out.append('<ol id="alert-list">')
        for n, a in enumerate(alerts, 1):
            k = a.key
            label = (
                f"[{_t(a.level)}] {_t(k['DeviceName'])} &rarr; {_t(k['RemoteIP'])}:{_t(k['RemotePort'])} "
                f"({_t(k['Protocol'])}), {_n(a.count)} connections, account {_t(k['AccountName']) or '-'}, "
                f"at {_time(a.ts)}"
            )
            if n <= MAX_DETAILED_ALERTS:
                out.append(f'<li><a href="#alert-{n}">{label}</a></li>')
            else:
                out.append(f"<li>{label}</li>")
        out.append("</ol>")
        if len(alerts) > MAX_DETAILED_ALERTS:
            out.append(f"<p class=note>The first {MAX_DETAILED_ALERTS} alerts have a section below.</p>")
    else:
        out.append("<p>No alerts.</p>")
    out.append("</nav><main>")
    out.append('<section id="overview" aria-labelledby="overview-h"><h2 id="overview-h">Overview</h2>')
    out.append(_overview(b))
    out.append(_volume(b))
    out.append("</section>")
    out.append('<section id="alerts" tabindex="-1" aria-labelledby="alerts-h">')
    out.append(f'<h2 id="alerts-h">Alerts ({_n(c.alerts)})</h2>')
    for n, a in enumerate(alerts[:MAX_DETAILED_ALERTS], 1):
        out.append(_alert_html(n, a, b, rules))
    out.append("</section>")
    if b.weird:
        out.append('<section id="weird" aria-labelledby="weird-h"><h2 id="weird-h">Weird (malformed input)</h2>')
        out.append("<table><tr><th>name</th><th>records</th></tr>")
        for name, v in sorted(b.weird.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"<tr><td>{_t(name)}</td><td class=n>{_n(v)}</td></tr>")
        out.append("</table></section>")
    out.append("</main></body></html>\n")
    return "\n".join(out)
