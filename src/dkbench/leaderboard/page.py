"""The interactive parts of ``leaderboard.html``: filter bar, Δ / absolute toggle, sortable tables.

The page must open offline, from a copied folder or an e-mail attachment, in any browser, years
from now. So its script is plain JavaScript inlined in the page (below, ``SCRIPT``), not a
library: a library would have to be vendored into the package and kept up to date for a few
dozen lines of DOM code, and a CDN link would break the page without network. Figures are
embedded as data URIs for the same reason (``render.data_uri``).

What the script reads, written by the renderers (``matrix.render_html``, :func:`html_table`):

* ``data-dataset`` / ``data-backbone`` / ``data-family`` / ``data-metric`` on any element (a row,
  a cell, a column header, a section): hidden while one of its values is unticked in the filter bar
  (``input[data-filter]``), so rows and whole columns disappear alike;
* ``table.sortable``: a click on a header sorts the body rows by that column (numbers by value,
  larger first on the first click; text alphabetically), again to reverse; in the matrix the
  ``family`` header restores the family grouping, and cells sort by their sign-adjusted keys
  (``data-gain`` in Δ mode, ``data-abs-key`` in absolute mode: best first whatever the metric's
  direction);
* ``data-delta-text`` / ``data-abs-text`` on matrix cells: the text of their ``.v`` span after the
  Δ / absolute toggle (``input[name=mode]``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

import pandas as pd

#: the filter dimensions, in the order of the filter bar
DIMENSIONS = ("family", "dataset", "backbone", "metric")

CSS = """
#controls { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ccc;
            padding: 0.4em 0; font-size: 0.85em; display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; }
#controls fieldset { border: 1px solid #ddd; padding: 0.1em 0.6em; margin: 0; }
#controls legend { font-weight: 600; padding: 0 0.3em; } #controls label { margin-right: 0.6em; white-space: nowrap; }
.filtered { display: none !important; }
table.sortable thead tr:first-child th { cursor: pointer; user-select: none; }
table.sortable th.sorted-desc::after { content: " \\25BC"; font-size: 0.7em; }
table.sortable th.sorted-asc::after { content: " \\25B2"; font-size: 0.7em; }
table.matrix td.fam { color: #888; font-size: 0.8em; } table.matrix a { color: inherit; text-decoration: none; }
table.matrix a:hover { text-decoration: underline; }
table.matrix a.cfg { font-size: 0.75em; color: #0550ae; } table.matrix tr.baseline td, table.matrix tr.baseline th
{ background: #f6f8fa; }
table.matrix tr.family.ungrouped { display: none; }  /* the family grouping, while sorted by another column */
"""

SCRIPT = r"""
(function () {
  "use strict";
  var report = document.getElementById("report");
  var dims = ["family", "dataset", "backbone", "metric"];

  function unticked() {
    var off = {};
    dims.forEach(function (d) { off[d] = {}; });
    document.querySelectorAll("input[data-filter]").forEach(function (box) {
      if (!box.checked) { off[box.dataset.filter][box.value] = true; }
    });
    return off;
  }

  function applyFilters() {
    var off = unticked();
    var selector = dims.map(function (d) { return "[data-" + d + "]"; }).join(",");
    report.querySelectorAll(selector).forEach(function (el) {
      var hide = dims.some(function (d) {
        var value = el.getAttribute("data-" + d);
        return value !== null && off[d][value] === true;
      });
      el.classList.toggle("filtered", hide);
    });
  }

  function mode() {
    var checked = document.querySelector("input[name=mode]:checked");
    return checked ? checked.value : "delta";
  }

  function applyMode() {
    var m = mode();
    document.body.setAttribute("data-mode", m);
    report.querySelectorAll("td[data-delta-text]").forEach(function (td) {
      var span = td.querySelector(".v");
      if (span) { span.textContent = m === "abs" ? td.dataset.absText : td.dataset.deltaText; }
    });
    report.querySelectorAll("table.sortable th.sorted-asc, table.sortable th.sorted-desc").forEach(function (th) {
      sortBy(th, th.classList.contains("sorted-asc") ? "asc" : "desc");  // keep the order in the new mode
    });
  }

  var NUMBER = /^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)/i;

  function key(cell, numeric) {
    if (!cell) { return numeric ? NaN : ""; }
    if (cell.hasAttribute("data-gain")) {
      return parseFloat(mode() === "abs" ? cell.dataset.absKey : cell.dataset.gain);
    }
    var text = cell.textContent.trim();
    if (!numeric) { return text.toLowerCase(); }
    var match = NUMBER.exec(text);
    return match ? parseFloat(match[1]) : NaN;
  }

  function isNumeric(table, index) {
    var header = table.tHead.rows[0].cells[index];
    if (header.dataset.sort) { return header.dataset.sort === "num"; }
    var rows = table.tBodies[0] ? table.tBodies[0].rows : [];
    var numbers = 0, texts = 0;
    for (var i = 0; i < rows.length; i++) {
      var cell = rows[i].cells[index];
      if (!cell) { continue; }
      var text = cell.textContent.trim();
      if (text === "" || text === "n/a" || text === "—") { continue; }
      if (NUMBER.test(text)) { numbers++; } else { texts++; }
    }
    return numbers > 0 && numbers >= texts;
  }

  function sortBy(th, direction) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    if (!body) { return; }
    var index = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var rows = Array.prototype.slice.call(body.rows);
    var groups = rows.filter(function (r) { return r.classList.contains("family"); });
    var data = rows.filter(function (r) { return !r.classList.contains("family"); });
    table.querySelectorAll("th.sorted-asc, th.sorted-desc").forEach(function (h) {
      h.classList.remove("sorted-asc", "sorted-desc");
    });
    if (th.dataset.sort === "family") {  // back to the survey's grouping, as rendered
      rows.sort(function (a, b) { return parseInt(a.dataset.pos, 10) - parseInt(b.dataset.pos, 10); });
      rows.forEach(function (r) { r.classList.remove("ungrouped"); body.appendChild(r); });
      th.classList.add("sorted-asc");
      return;
    }
    var numeric = isNumeric(table, index);
    var sign = direction === "asc" ? 1 : -1;
    var keyed = data.map(function (r, i) { return [key(r.cells[index], numeric), i, r]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (numeric) {
        var xn = isNaN(x), yn = isNaN(y);
        if (xn || yn) { return xn === yn ? a[1] - b[1] : (xn ? 1 : -1); }  // no value: always last
        return x === y ? a[1] - b[1] : sign * (x - y);
      }
      return x === y ? a[1] - b[1] : (x < y ? -sign : sign);
    });
    groups.forEach(function (g) { g.classList.add("ungrouped"); });
    keyed.forEach(function (k) { body.appendChild(k[2]); });
    th.classList.add(direction === "asc" ? "sorted-asc" : "sorted-desc");
  }

  report.querySelectorAll("table.sortable").forEach(function (table) {
    if (!table.tHead || !table.tBodies[0]) { return; }
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r, i) { r.dataset.pos = String(i); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", function () {
        var numeric = isNumeric(table, index);
        var first = numeric ? "desc" : "asc";
        var now = th.classList.contains("sorted-desc") ? "desc" : (th.classList.contains("sorted-asc") ? "asc" : "");
        sortBy(th, now === "" ? first : (now === "asc" ? "desc" : "asc"));
      });
    });
  });
  document.querySelectorAll("input[data-filter]").forEach(function (box) { box.addEventListener("change", applyFilters); });
  document.querySelectorAll("input[name=mode]").forEach(function (r) { r.addEventListener("change", applyMode); });
  applyFilters();
  applyMode();
})();
"""


def controls(values: dict[str, list[tuple[str, str]]], checked: dict[str, set[str]] | None = None) -> str:
    """The filter bar: per dimension (``DIMENSIONS``) a checkbox per (value, label), ticked unless
    ``checked`` lists the ticked ones; then the Δ / absolute toggle."""
    e = html.escape
    parts = []
    for dim in DIMENSIONS:
        options = values.get(dim) or []
        if not options:
            continue
        ticked = (checked or {}).get(dim)
        boxes = "".join(
            f"<label><input type='checkbox' data-filter='{dim}' value='{e(v)}'"
            f"{' checked' if ticked is None or v in ticked else ''}> {e(label)}</label>" for v, label in options)
        parts.append(f"<fieldset class='filter' data-dimension='{dim}'><legend>{dim}</legend>{boxes}</fieldset>")
    parts.append("<fieldset><legend>matrix cells</legend>"
                 "<label><input type='radio' name='mode' value='delta' checked> Δ vs baseline</label>"
                 "<label><input type='radio' name='mode' value='abs'> absolute score</label></fieldset>")
    return "<div id='controls'>" + "".join(parts) + "</div>"


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f" data-{k}='{html.escape(str(v))}'" for k, v in pairs if v is not None and str(v) != "")


def html_table(df: pd.DataFrame, *, families: dict[str, str] | None = None, backbones: Iterable[str] = (),
               metrics: Iterable[str] = (), sortable: bool = True) -> str:
    """A DataFrame as a sortable table whose rows and columns the filter bar can hide: a row takes
    ``data-dataset`` / ``-backbone`` / ``-metric`` from its columns of those names and
    ``data-family`` from its ``strategy`` column (``families``: strategy → family key); a column
    named ``"<backbone> <rest>"`` takes ``data-backbone`` and, when ``<rest>`` is a metric,
    ``data-metric`` (every cell of it carries them, so the column hides whole)."""
    if df.empty:
        return "<p><em>(empty)</em></p>"
    e = html.escape
    backbones, metrics, families = set(backbones), set(metrics), families or {}
    column_attrs = []
    for col in df.columns:
        first, _, rest = str(col).partition(" ")
        pairs = []
        if first in backbones:
            pairs.append(("backbone", first))
            if rest in metrics:
                pairs.append(("metric", rest))
        column_attrs.append(_attrs(pairs))
    head = "".join(f"<th{a}>{e(str(c))}</th>" for c, a in zip(df.columns, column_attrs))
    body = []
    for record in df.itertuples(index=False):
        row = dict(zip(df.columns, record))
        pairs = [(k, row[k]) for k in ("dataset", "backbone", "metric") if k in row]
        if "strategy" in row:
            pairs.append(("family", families.get(str(row["strategy"]), "")))
        cells = "".join(f"<td{a}>{e('' if _blank(v) else str(v))}</td>" for v, a in zip(record, column_attrs))
        body.append(f"<tr{_attrs(pairs)}>{cells}</tr>")
    cls = " class='sortable'" if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _blank(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def slug(text: str) -> str:
    """An id-safe form of a name (``test/dice`` → ``test-dice``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")
