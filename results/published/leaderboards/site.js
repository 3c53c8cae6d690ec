// clipbench leaderboard site: sort by any column, filter by protocol, family, recipe, kind and text.
// The view lives in the URL fragment (#protocol=...&sort=...&dir=desc), so it can be linked to. No libraries.
(function () {
  "use strict";
  var table = document.getElementById("board");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var controls = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
  var state = { sort: "", dir: "asc" };

  function readHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      if (!part) { return; }
      var kv = part.split("=");
      out[decodeURIComponent(kv[0])] = decodeURIComponent((kv[1] || "").replace(/\+/g, " "));
    });
    return out;
  }

  function writeHash() {
    var parts = [];
    controls.forEach(function (c) { if (c.value) { parts.push(c.dataset.filter + "=" + encodeURIComponent(c.value)); } });
    if (state.sort) { parts.push("sort=" + encodeURIComponent(state.sort), "dir=" + state.dir); }
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
  }

  function cellKey(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) { return numeric ? null : ""; }
    if (numeric) {
      var v = cell.getAttribute("data-v");
      return v === null ? null : parseFloat(v);
    }
    return cell.textContent.toLowerCase();
  }

  function sortRows() {
    heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
    var index = heads.findIndex(function (h) { return h.dataset.col === state.sort; });
    if (index < 0) { return; }
    var numeric = heads[index].dataset.type === "num";
    var sign = state.dir === "desc" ? -1 : 1;
    heads[index].classList.add(state.dir);
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, index, numeric), y = cellKey(b, index, numeric);
      if (x === y) { return 0; }
      if (x === null) { return 1; }   // empty cells last, either direction
      if (y === null) { return -1; }
      return (x < y ? -1 : 1) * sign;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function filterRows() {
    var shown = 0, total = body.rows.length;
    Array.prototype.forEach.call(body.rows, function (row) {
      var visible = controls.every(function (c) {
        if (!c.value) { return true; }
        if (c.dataset.filter === "q") { return row.textContent.toLowerCase().indexOf(c.value.toLowerCase()) >= 0; }
        return row.getAttribute("data-" + c.dataset.filter) === c.value;
      });
      row.hidden = !visible;
      if (visible) { shown += 1; }
    });
    document.getElementById("shown").textContent = shown + " of " + total + " rows shown";
  }

  heads.forEach(function (h) {
    h.addEventListener("click", function () {
      state.dir = state.sort === h.dataset.col && state.dir === "asc" ? "desc" : "asc";
      if (state.sort !== h.dataset.col && h.dataset.type === "num") { state.dir = "desc"; }
      state.sort = h.dataset.col;
      sortRows();
      writeHash();
    });
  });
  controls.forEach(function (c) {
    c.addEventListener("input", function () { filterRows(); writeHash(); });
  });

  var initial = readHash();
  controls.forEach(function (c) {
    var v = initial[c.dataset.filter];
    if (v !== undefined) {
      if (c.tagName === "SELECT" && !Array.prototype.some.call(c.options, function (o) { return o.value === v; })) { return; }
      c.value = v;
    }
  });
  if (initial.sort) { state.sort = initial.sort; state.dir = initial.dir === "desc" ? "desc" : "asc"; sortRows(); }
  filterRows();
}());
