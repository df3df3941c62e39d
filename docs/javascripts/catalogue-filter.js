// Client-side text filter of the lens catalogue table (catalogue/index.md). No dependencies.
(function () {
  function setup() {
    var input = document.getElementById("catalogue-filter");
    if (!input || input.dataset.ready) return;
    input.dataset.ready = "1";
    var table = document.querySelector(".catalogue-table table");
    var count = document.getElementById("catalogue-count");
    if (!table) return;
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
    function apply() {
      var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (row, i) {
        var match = terms.every(function (t) { return texts[i].indexOf(t) !== -1; });
        row.style.display = match ? "" : "none";
        if (match) shown += 1;
      });
      if (count) count.textContent = shown + " of " + rows.length + " models";
    }
    input.addEventListener("input", apply);
    var query = new URLSearchParams(window.location.search).get("filter");
    if (query) input.value = query;
    apply();
  }
  if (typeof document$ !== "undefined" && document$.subscribe) {
    document$.subscribe(setup);  // material's instant navigation, when enabled
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
