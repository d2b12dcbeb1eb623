"""The live page at ``/``: the flagged shoppers, their scores and explanations, refreshed every
few seconds from ``/v1/flagged`` (plain HTML and script, nothing fetched from elsewhere)."""

from __future__ import annotations

REFRESH_MS = 2000

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>seqanom: flagged shoppers</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
 h1 { font-size: 1.3rem; margin-bottom: .2rem; }
 #status { color: #666; margin-bottom: 1rem; }
 table { border-collapse: collapse; width: 100%; }
 th, td { border-bottom: 1px solid #ddd; padding: .35rem .5rem; text-align: left;
          vertical-align: top; font-size: .9rem; }
 th { background: #f4f4f4; }
 td.score { font-variant-numeric: tabular-nums; font-weight: 600; color: #a40000; }
 ul { margin: 0; padding-left: 1rem; }
 .error { color: #a40000; }
</style>
</head>
<body>
<h1>Flagged shoppers</h1>
<div id="status">loading&hellip;</div>
<table>
 <thead><tr><th>shopper</th><th>score</th><th>events</th><th>why</th><th>top events</th></tr></thead>
 <tbody id="rows"></tbody>
</table>
<script>
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function eventsCell(events) {
  const td = document.createElement("td");
  const ul = document.createElement("ul");
  for (const e of events) {
    const li = document.createElement("li");
    const state = e.item_state ? " [" + e.item_state + "]" : "";
    li.textContent = "#" + e.position + " " + e.observed + state + " (p=" + e.observed_prob +
      "), expected " + e.expected + " (p=" + e.expected_prob + ")";
    ul.appendChild(li);
  }
  td.appendChild(ul);
  return td;
}
async function refresh() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/v1/flagged", {headers});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    const rows = document.getElementById("rows");
    rows.replaceChildren();
    for (const s of data.flagged) {
      const tr = document.createElement("tr");
      tr.className = "shopper";
      tr.append(cell(s.user_id), cell(s.score.toFixed(3), "score"), cell(String(s.events)),
                cell(s.driver_text + " (" + s.driver + ")"), eventsCell(s.top_events));
      rows.appendChild(tr);
    }
    status.className = "";
    status.textContent = data.flagged.length + " flagged of " + data.shoppers_held +
      " shoppers held (threshold " + data.threshold.toFixed(3) + "); updated " +
      new Date().toLocaleTimeString();
  } catch (err) {
    status.className = "error";
    status.textContent = "cannot reach the service: " + err.message;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
""".replace("REFRESH_MS", str(REFRESH_MS))
