"""The stylesheet and script inlined into report.html (kept as strings so a wheel needs no data files)."""

CSS = """
:root { --fg:#1d232a; --muted:#5f6b76; --line:#dde2e7; --bg:#f5f7f9; --card:#fff;
  --critical:#b2182b; --high:#e66101; --medium:#d4a017; --low:#4393c3; --info:#8c8c8c; --none:#4d9221; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#1f2d3a; color:#fff; padding:14px 24px; }
header.top h1 { margin:0 0 4px; font-size:20px; font-weight:600; }
header.top .meta { color:#c5d0da; font-size:13px; }
header.top nav a { color:#fff; margin-right:16px; font-size:13px; }
main { padding:0 24px 40px; max-width:1500px; margin:0 auto; }
h2 { font-size:17px; margin:26px 0 10px; border-bottom:1px solid var(--line); padding-bottom:4px; }
h3 { font-size:15px; margin:14px 0 6px; }
a { color:#1d5fa8; }
code { font:12px/1.3 ui-monospace,"DejaVu Sans Mono",monospace; background:#eef1f4; padding:1px 4px; border-radius:3px; word-break:break-all; }
#controls { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
  padding:8px 24px; display:flex; flex-wrap:wrap; gap:6px 16px; align-items:center; font-size:13px; }
#controls label { white-space:nowrap; }
#controls input[type=search] { width:220px; padding:3px 6px; }
#controls .count { color:var(--muted); margin-left:auto; }
button { font:inherit; font-size:12px; padding:3px 9px; border:1px solid #b8c1ca; background:#f7f9fb; border-radius:4px; cursor:pointer; }
button:disabled { opacity:.4; cursor:default; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(430px,1fr)); gap:12px; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
.charts { display:grid; grid-template-columns:repeat(auto-fill,minmax(560px,1fr)); gap:12px; margin-top:10px; }
.charts .panel { padding:6px 8px; }
.charts .panel { overflow-x:auto; }
svg.chart { width:100%; height:auto; display:block; }
.badge { display:inline-block; min-width:62px; text-align:center; padding:1px 7px; border-radius:10px; color:#fff; font-size:11.5px; font-weight:600; }
.sev-critical { background:var(--critical); } .sev-high { background:var(--high); } .sev-medium { background:var(--medium); color:#222; }
.sev-low { background:var(--low); } .sev-info { background:var(--info); } .sev-none { background:var(--none); }
.status-partial, .status-unreadable { color:var(--high); font-weight:600; }
details.run { background:var(--card); border:1px solid var(--line); border-radius:6px; margin:10px 0; }
details.run > summary { cursor:pointer; padding:9px 12px; display:flex; gap:10px; align-items:baseline; flex-wrap:wrap; }
details.run > summary .rid { font-weight:600; font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:13px; }
details.run > summary .top { color:var(--muted); flex:1 1 300px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
details.run > .body { padding:0 12px 12px; }
.cause { border-left:4px solid var(--line); padding:6px 10px; margin:8px 0; background:#fbfcfd; }
.cause.sev-critical, .cause.sev-high, .cause.sev-medium, .cause.sev-low, .cause.sev-info { background:#fbfcfd; color:var(--fg); }
.cause.sev-critical { border-left-color:var(--critical); } .cause.sev-high { border-left-color:var(--high); }
.cause.sev-medium { border-left-color:var(--medium); } .cause.sev-low { border-left-color:var(--low); }
.cause .head { display:flex; gap:8px; align-items:baseline; flex-wrap:wrap; }
.cause .kind { font-weight:600; }
.cause .links a { margin-left:10px; font-size:12.5px; }
.cause dl { margin:6px 0 0; display:grid; grid-template-columns:110px 1fr; gap:2px 10px; font-size:13px; }
.cause dt { color:var(--muted); }
.cause dd { margin:0; }
table { border-collapse:collapse; font-size:12.5px; }
table.ev { width:100%; margin-top:6px; }
th, td { border-bottom:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
th { background:#f0f3f6; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.muted { color:var(--muted); }
.marks { font-size:12.5px; margin:6px 0 0; padding-left:0; list-style:none; }
.marks li { margin:2px 0; }
.marks .n { display:inline-block; width:18px; height:16px; border-radius:3px; color:#fff; text-align:center; font-weight:700; font-size:11px; margin-right:6px; }
#all-runs table { width:100%; background:#fff; }
#all-runs td.rid { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; min-width:16em; max-width:34em; overflow-wrap:anywhere; }
.pager { display:flex; gap:8px; align-items:center; margin:8px 0; font-size:13px; }
details.guide { background:#fff; border:1px solid var(--line); border-radius:6px; margin:6px 0; padding:4px 12px; }
details.guide > summary { cursor:pointer; font-weight:600; }
.hidden { display:none !important; }
:target { scroll-margin-top:60px; }
.flash { outline:3px solid #f2c94c; outline-offset:2px; }
"""

# Filter (severity, kind, text), paging of the all-runs table, and opening the <details>
# that hold a link's target. No library; every element it needs is looked up by id.
JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("runs-data").textContent);
  var SEV = data.severities, KINDS = data.kinds, PAGE = data.page_size;
  var state = { sev: new Set(SEV), kind: "", q: "", page: 0 };
  var sevBoxes = document.querySelectorAll("#controls input[data-sev]");
  var kindSel = document.getElementById("f-kind"), search = document.getElementById("f-search");

  function matches(sev, kinds, rid) {
    if (!state.sev.has(sev)) return false;
    if (state.kind && kinds.indexOf(state.kind) < 0) return false;
    if (state.q && rid.toLowerCase().indexOf(state.q) < 0) return false;
    return true;
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; });
  }
  var filtered = [];
  function renderTable() {
    var body = document.getElementById("all-runs-body");
    var pages = Math.max(1, Math.ceil(filtered.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var rows = filtered.slice(state.page * PAGE, (state.page + 1) * PAGE);
    body.innerHTML = rows.map(function (r) {
      var sev = SEV[r[2]], kinds = r[3].map(function (k) { return KINDS[k]; });
      var rid = r[6] ? '<a href="#' + r[6] + '">' + esc(r[0]) + "</a>" : esc(r[0]);
      return "<tr><td class=rid>" + rid + "</td><td class='status-" + esc(r[1]) + "'>" + esc(r[1]) +
        "</td><td><span class='badge sev-" + sev + "'>" + sev + "</span></td><td>" + esc(kinds.join(", ")) +
        "</td><td class=num>" + (r[5] === null ? "" : r[5]) + "</td><td>" + esc(r[4]) + "</td></tr>";
    }).join("");
    document.getElementById("page-info").textContent = "page " + (state.page + 1) + " of " + pages + " (" + filtered.length + " runs)";
    document.getElementById("page-prev").disabled = state.page <= 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
  }
  function apply() {
    filtered = data.runs.filter(function (r) {
      return matches(SEV[r[2]], r[3].map(function (k) { return KINDS[k]; }), r[0]);
    });
    var shown = 0;
    document.querySelectorAll("details.run").forEach(function (d) {
      var ok = matches(d.dataset.sev, d.dataset.kinds ? d.dataset.kinds.split(" ") : [], d.dataset.rid);
      d.classList.toggle("hidden", !ok);
      if (ok) shown += 1;
    });
    document.getElementById("match-count").textContent = filtered.length + " of " + data.runs.length + " runs match; " + shown + " full panels shown";
    renderTable();
  }
  sevBoxes.forEach(function (box) {
    box.addEventListener("change", function () {
      if (box.checked) state.sev.add(box.dataset.sev); else state.sev.delete(box.dataset.sev);
      state.page = 0; apply();
    });
  });
  kindSel.addEventListener("change", function () { state.kind = kindSel.value; state.page = 0; apply(); });
  search.addEventListener("input", function () { state.q = search.value.trim().toLowerCase(); state.page = 0; apply(); });
  document.getElementById("page-prev").addEventListener("click", function () { state.page -= 1; renderTable(); });
  document.getElementById("page-next").addEventListener("click", function () { state.page += 1; renderTable(); });
  document.getElementById("expand-all").addEventListener("click", function () {
    document.querySelectorAll("details.run:not(.hidden)").forEach(function (d) { d.open = true; });
  });
  document.getElementById("collapse-all").addEventListener("click", function () {
    document.querySelectorAll("details.run").forEach(function (d) { d.open = false; });
  });
  document.querySelectorAll("[data-filter-kind]").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      kindSel.value = a.getAttribute("data-filter-kind"); state.kind = kindSel.value; state.page = 0; apply();
      document.getElementById("runs").scrollIntoView();
    });
  });
  function reveal(id) {
    var el = id && document.getElementById(id);
    if (!el) return;
    for (var p = el; p; p = p.parentElement) {
      if (p.tagName === "DETAILS") p.open = true;
      if (p.classList && p.classList.contains("hidden")) p.classList.remove("hidden");
    }
    el.scrollIntoView({ block: "start" });
    el.classList.add("flash");
    setTimeout(function () { el.classList.remove("flash"); }, 1500);
  }
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a") : null;
    var href = a && a.getAttribute("href");
    if (href && href.charAt(0) === "#" && !a.hasAttribute("data-filter-kind")) {
      ev.preventDefault();
      history.replaceState(null, "", href);
      reveal(decodeURIComponent(href.slice(1)));
    }
  });
  window.addEventListener("hashchange", function () { reveal(decodeURIComponent(location.hash.slice(1))); });
  apply();
  if (location.hash) reveal(decodeURIComponent(location.hash.slice(1)));
  // Tests and screenshot tools wait for this: the script ran to the end without throwing.
  document.documentElement.setAttribute("data-report-ready", "1");
})();
"""
