// mpqbench site: sort a table by clicking a column title, filter its rows by text and by budget.
// Cells carry their sort key in data-sort (a number, or text); empty keys always sort last.
"use strict";

function sortTable(table, th) {
  const index = Array.prototype.indexOf.call(th.parentNode.children, th);
  const numeric = th.dataset.type === "num";
  const current = th.getAttribute("aria-sort");  // first click: the better end first (data-better)
  const ascending = current ? current !== "ascending" : th.dataset.better !== "high";
  for (const other of th.parentNode.children) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => row.cells[index].dataset.sort;
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return ascending ? order : -order;
  });
  for (const row of rows) body.appendChild(row);
}

function filterTable(table) {
  const words = document.getElementById("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const budget = document.getElementById("budget").value;
  let shown = 0;
  for (const row of table.tBodies[0].rows) {
    const text = row.textContent.toLowerCase();
    const visible = words.every((w) => text.includes(w)) && (!budget || row.dataset.budget === budget);
    row.hidden = !visible;
    shown += visible;
  }
  document.getElementById("shown").textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    for (const th of table.tHead.rows[0].cells) {
      th.tabIndex = 0;
      th.addEventListener("click", () => sortTable(table, th));
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortTable(table, th); });
    }
    const filter = document.getElementById("filter");
    if (filter) {
      filter.addEventListener("input", () => filterTable(table));
      document.getElementById("budget").addEventListener("change", () => filterTable(table));
      filterTable(table);
    }
  }
});
