// The jobs page: sortable tables; each job's progress, and its table refreshed while it runs.
"use strict";

function sortBy(table, index, kind) {
  const th = table.tHead.rows[0].cells[index];
  const ascending = !th.classList.contains("asc");
  for (const cell of table.tHead.rows[0].cells) cell.classList.remove("asc", "desc");
  th.classList.add(ascending ? "asc" : "desc");
  const value = (row) => row.cells[index].dataset.sort;
  const rows = Array.from(table.tBodies[0].rows);
  rows.sort((a, b) => {
    const [x, y] = [value(a), value(b)];
    if (x === "" || y === "") return (x === "") - (y === "");  // empty cells last
    const order = kind === "text" ? x.localeCompare(y) : Number(x) - Number(y);
    return ascending ? order : -order;
  });
  for (const row of rows) table.tBodies[0].appendChild(row);
}

function makeSortable(root) {
  for (const table of root.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, i) =>
      th.addEventListener("click", () => sortBy(table, i, th.dataset.kind)));
  }
}

function describe(p) {
  let text = `${p.done} of ${p.slides} slides done, ${p.failed} failed, ${p.pending} pending; ` +
             `${p.patches.toLocaleString()} patches`;
  if (p.running) {
    const rate = p.patches_per_s == null ? "?" : Math.round(p.patches_per_s).toLocaleString();
    const eta = p.eta_minutes == null ? "?" : `${p.eta_minutes.toFixed(1)} min`;
    text = `Scoring: ${text}, ${rate} patches/s, ETA ${eta}`;
  }
  return text;
}

const seen = {};
async function refresh() {
  let progress;
  try {
    progress = await (await fetch("/api/jobs")).json();
  } catch (e) {
    return;
  }
  for (const p of progress) {
    const section = document.querySelector(`section.job[data-job="${CSS.escape(p.job)}"]`);
    if (!section) continue;
    section.querySelector(".progress").textContent = describe(p);
    const key = `${p.done}/${p.failed}`;
    if (seen[p.job] !== undefined && seen[p.job] !== key) {  // slides finished: new rows
      const page = new DOMParser().parseFromString(await (await fetch("/")).text(), "text/html");
      const fresh = page.querySelector(`section.job[data-job="${CSS.escape(p.job)}"] .tables`);
      if (fresh) {
        section.querySelector(".tables").replaceWith(fresh);
        makeSortable(section);
      }
    }
    seen[p.job] = key;
  }
}

makeSortable(document);
refresh();
setInterval(refresh, 3000);
