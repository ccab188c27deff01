"""The results page's HTML: one self-contained file (inline CSS, JS and images; a Content
Security Policy that forbids every fetch), built from plain values. Every string that
comes from data (file names, defect names, rules) is escaped here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from .thumbs import Thumbs

# nothing may be fetched: images are data: URIs, style and script inline
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")  # fmt: skip


@dataclass
class Row:
    """One image of the table; ``label`` and ``defect`` (ground truth) only on eval."""

    name: str
    score: float
    pred_score: float
    pred_label: int
    thumbs: Thumbs | None = None
    label: int | None = None
    defect: str | None = None


@dataclass
class Card:
    """One headline number: ``value`` already formatted, ``note`` its tooltip."""

    name: str
    value: str
    note: str | None = None


def e(v: object) -> str:
    """Text or attribute value, HTML-escaped (quotes too)."""
    return escape(str(v), quote=True)


def fmt(v: object, digits: int = 4) -> str:
    """A value for a person: floats to ``digits`` significant digits, None as a dash."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, float):
        return str(v)
    return f"{v:.{digits}g}"


def kv_table(pairs: Sequence[tuple[str, object]], cls: str = "kv") -> str:
    """A two-column table of (name, value) rows."""
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}">{body}</table>'


def cards_html(cards: Sequence[Card]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"{_title(c.note)}><div class="v">{e(c.value)}</div><div class="k">{e(c.name)}</div></div>'
        for c in cards) + "</div>"  # fmt: skip


def _title(note: str | None) -> str:
    return f' title="{e(note)}"' if note else ""


def panel(heading: str, body: str, cls: str = "") -> str:
    return f'<section class="panel {cls}"><h2>{e(heading)}</h2>{body}</section>'


def _badge(v: int | None, yes: str = "anomalous", no: str = "normal") -> str:
    return "" if v is None else f'<span class="b b{int(v)}">{yes if v else no}</span>'


def _outcome(r: Row) -> str:
    return {(1, 1): "tp", (0, 1): "fp", (1, 0): "fn", (0, 0): "tn"}[(int(r.label), int(r.pred_label))]


def _pictures(t: Thumbs | None) -> str:
    if t is None:
        return "<td></td><td></td>"
    img = f'<td><img src="{e(t.image)}" alt="image"></td>'
    if t.overlay is None:
        return img + "<td></td>"
    over = f'<img src="{e(t.overlay)}" alt="heat-map">'
    if t.link:  # the full-size overlay the run wrote beside the page
        over = f'<a href="{e(quote(t.link))}" title="full size">{over}</a>'
    return img + f"<td>{over}</td>"


def row_html(i: int, r: Row, truth: bool) -> str:
    data = f'data-i="{i}" data-score="{r.score!r}" data-pscore="{r.pred_score!r}" data-pred="{int(r.pred_label)}"'
    data += f' data-name="{e(r.name)}"'
    cells = [f'<td class="n">{i + 1}</td>', _pictures(r.thumbs), f'<td class="name">{e(r.name)}</td>']
    if truth:
        data += f' data-label="{int(r.label)}" data-defect="{e(r.defect)}" data-outcome="{_outcome(r)}"'
        cells += [f"<td>{e(r.defect)}</td>", f"<td>{_badge(r.label)}</td>"]
    cells += [f'<td class="num">{fmt(float(r.score), 5)}</td>', f'<td class="num">{r.pred_score:.3f}</td>',
              f"<td>{_badge(r.pred_label)}</td>"]  # fmt: skip
    return f"<tr {data}>{''.join(cells)}</tr>"


def _select(key: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = '<option value="">all</option>' + "".join(f'<option value="{e(v)}">{e(t)}</option>' for v, t in options)
    return f'<label>{e(label)} <select data-filter="{key}" id="f-{key}">{opts}</select></label>'


def filters_html(rows: Sequence[Row], truth: bool) -> str:
    lab = [("1", "anomalous"), ("0", "normal")]
    parts = [_select("pred", "pred_label", lab)]
    if truth:
        defects = sorted({str(r.defect) for r in rows})
        outcomes = [("tp", "anomaly found"), ("fn", "anomaly missed"), ("fp", "false alarm"), ("tn", "normal passed")]
        parts += [_select("label", "label", lab), _select("defect", "defect type", [(d, d) for d in defects]),
                  _select("outcome", "outcome", outcomes)]  # fmt: skip
    count = f'<span class="count"><span id="shown">{len(rows)}</span> of {len(rows)} images</span>'
    return '<div class="filters">' + "".join(parts) + count + "</div>"


def table_html(rows: Sequence[Row], truth: bool) -> str:
    """The image table: sortable headers (``data-sort``) and the filters above it."""
    head = ['<th data-sort="i" data-type="num"><button type="button">#</button></th>', "<th>image</th>",
            "<th>heat-map</th>", '<th data-sort="name"><button type="button">file</button></th>']  # fmt: skip
    if truth:
        head += ['<th data-sort="defect"><button type="button">defect type</button></th>', "<th>label</th>"]
    head += ['<th data-sort="score" data-type="num"><button type="button">score</button></th>',
             '<th data-sort="pscore" data-type="num"><button type="button">pred_score</button></th>',
             "<th>pred_label</th>"]  # fmt: skip
    body = "".join(row_html(i, r, truth) for i, r in enumerate(rows))
    return (filters_html(rows, truth) + f'<table id="images"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{body}</tbody></table>")  # fmt: skip


def render(title: str, subtitle: str, cards: Sequence[Card], panels: Sequence[str], rows: Sequence[Row],
           truth: bool, legend: str) -> str:  # fmt: skip
    """The whole page: headline cards, panels (charts, thresholds, ...), the image table."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{e(title)}</title><style>{CSS}</style></head><body>'
        f'<header><h1>{e(title)}</h1><p class="sub">{e(subtitle)}</p></header>{cards_html(cards)}'
        f'<div class="panels">{"".join(panels)}</div>'
        f'<section class="panel wide"><h2>Images</h2><p class="legend">{legend}</p>{table_html(rows, truth)}</section>'
        f"<script>{JS}</script></body></html>"
    )


CSS = """
*{box-sizing:border-box}body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
padding:18px 24px;background:#f4f5f7;color:#1d2330}h1{font-size:22px;margin:0}h2{font-size:15px;margin:0 0 8px}
.sub{color:#5b6475;margin:2px 0 14px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}
.card{background:#fff;border-radius:8px;padding:10px 14px;min-width:118px;box-shadow:0 1px 2px #0002}
.card .v{font-size:21px;font-weight:600}.card .k{color:#5b6475;font-size:12px}
.panels{display:flex;flex-wrap:wrap;gap:14px;margin-bottom:14px;align-items:flex-start}
.panel{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0002;max-width:100%}
.panel.wide{width:100%}.panel.rules{flex:1 1 360px;max-width:640px}
.kv2{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}details{margin-top:6px}
summary{cursor:pointer;color:#1f4fa0}
table.kv{border-collapse:collapse;font-size:13px}table.kv th{text-align:left;font-weight:500;color:#5b6475;
padding:2px 12px 2px 0;vertical-align:top}table.kv td{padding:2px 0;max-width:440px;word-break:break-word}
.chart .frame{fill:none;stroke:#99a}.chart .tick{font-size:10px;fill:#5b6475}.chart .axis{font-size:11px;fill:#333}
.chart .chance{stroke:#aab;stroke-dasharray:4 3}.chart .roc{fill:none;stroke:#3b75c4;stroke-width:2}
.chart .op{fill:#d2452f}.chart .thr{stroke:#111;stroke-width:1.5;stroke-dasharray:5 3}
.filters{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:6px 0 10px}
.filters select{font:inherit;padding:2px 4px}.count{color:#5b6475;margin-left:auto}
.legend{color:#5b6475;margin:0}.legend i{font-style:normal;font-weight:600}
#images{border-collapse:collapse;width:100%}#images th{position:sticky;top:0;background:#e9ecf1;text-align:left;
padding:6px 8px;font-weight:600;white-space:nowrap}#images td{padding:4px 8px;border-top:1px solid #e4e7ec;
vertical-align:middle}#images tbody tr:hover{background:#f7f9fc}#images img{display:block;width:136px;height:auto;
max-height:170px;object-fit:contain;border-radius:3px}
th button{font:inherit;border:0;background:none;padding:0;cursor:pointer;color:#1f4fa0}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{
content:" \\25BC"}td.num{text-align:right;font-variant-numeric:tabular-nums}td.n{color:#8a93a3}
td.name{word-break:break-all;width:40%;font-size:12px}
.b{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600}
.b0{background:#e3f1e6;color:#1f6b34}.b1{background:#fbe3df;color:#a3261a}
"""

JS = """
(function(){
const tbody=document.querySelector('#images tbody');const rows=Array.from(tbody.rows);
const sels=Array.from(document.querySelectorAll('select[data-filter]'));
function filter(){let n=0;for(const r of rows){const ok=sels.every(s=>s.value===''||
r.dataset[s.dataset.filter]===s.value);r.hidden=!ok;if(ok)n++;}
document.getElementById('shown').textContent=n;}
sels.forEach(s=>s.addEventListener('change',filter));
const heads=Array.from(document.querySelectorAll('#images th[data-sort]'));
heads.forEach(th=>th.addEventListener('click',()=>{
const key=th.dataset.sort,num=th.dataset.type==='num',was=th.getAttribute('aria-sort');
const desc=was?was==='ascending':(num&&key!=='i');
heads.forEach(h=>h.removeAttribute('aria-sort'));th.setAttribute('aria-sort',desc?'descending':'ascending');
const val=r=>num?parseFloat(r.dataset[key]):r.dataset[key];
rows.sort((a,b)=>{const x=val(a),y=val(b);return(x<y?-1:x>y?1:0)*(desc?-1:1);});
tbody.append(...rows);}));
filter();
})();
"""
