// The lens-hub explorer page. Every number it shows comes from the server's PredictionTrajectory; this script only
// lays the cells out and maps values to colours. Token text is always set as text (textContent), never as HTML.
(function () {
  "use strict";

  // Low -> high colour stops, the same viridis-like ramp as lens_hub/serve/render.py's views.
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  var NO_VALUE = "#eeeeee";

  var form = document.getElementById("form");
  var promptBox = document.getElementById("prompt");
  var statBox = document.getElementById("stat");
  var submit = document.getElementById("submit");
  var status = document.getElementById("status");
  var errorBox = document.getElementById("error");
  var panels = document.getElementById("panels");
  var statLabel = document.getElementById("stat-label");
  var tip = document.getElementById("tip");
  var about = document.getElementById("about");

  var lastPrompt = null; // the prompt the panels show
  var lastData = null;
  var sequence = 0; // answers to older requests than the latest are dropped

  function rgb(value, lo, hi) {
    if (value === null || !isFinite(value)) return null;
    var x = Math.min(1, Math.max(0, (value - lo) / (hi - lo))) * (RAMP.length - 1);
    var i = Math.min(Math.floor(x), RAMP.length - 2);
    var f = x - i;
    return RAMP[i].map(function (a, c) { return Math.round(a + f * (RAMP[i + 1][c] - a)); });
  }

  function css(c) { return c === null ? NO_VALUE : "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }

  function ink(c) {
    if (c === null) return "#000";
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#000" : "#fff";
  }

  // What a value is coloured by: ranks span orders of magnitude, so they are coloured on log10(rank + 1).
  function shade(stat, value) {
    if (value === null) return null;
    return stat === "rank" ? Math.log10(value + 1) : value;
  }

  // One colour scale for both panels, so the lenses compare at a glance (fixed where the statistic is bounded).
  function scale(stat, data) {
    if (stat === "prob" || stat === "tv") return [0, 1];
    if (stat === "js") return [0, Math.LN2];
    var lo = Infinity, hi = -Infinity;
    data.panels.forEach(function (p) {
      p.values.forEach(function (row) {
        row.forEach(function (v) {
          var s = shade(stat, v);
          if (s !== null && isFinite(s)) { lo = Math.min(lo, s); hi = Math.max(hi, s); }
        });
      });
    });
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (stat !== "rank" && stat !== "log_prob") lo = Math.min(lo, 0);
    return [lo, Math.max(hi, lo + 1e-9)];
  }

  function format(stat, value) {
    if (value === null) return "n/a";
    if (stat === "rank") return String(Math.round(value));
    return Number(value.toPrecision(4)).toString();
  }

  function shorten(label, width) {
    return label.length <= width ? label : label.slice(0, width - 1) + "…";
  }

  function showError(message, code) {
    errorBox.textContent = message;
    errorBox.setAttribute("data-status", String(code));
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    errorBox.removeAttribute("data-status");
  }

  // POST JSON; resolves to the Response when it is ok, else rejects with the server's message and status.
  function post(path, body) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then(function (response) {
      if (response.ok) return response;
      return response.text().then(function (text) {
        var message = "the server answered " + response.status;
        try { message = JSON.parse(text).error || message; } catch (e) { /* not JSON: keep the status */ }
        var err = new Error(message);
        err.status = response.status;
        throw err;
      });
    });
  }

  // Whether row r of a panel is a layer its lens has not trained (read exactly as the logit lens reads it).
  function untrained(data, panel, r) {
    return (panel.untrained || []).indexOf(Number(data.rows[r])) >= 0; // never the output row (NaN)
  }

  function tipText(data, panel, r, t) {
    var lines = [
      (data.rows[r] === "output" ? "model output" : "layer " + data.rows[r]) + ", position " + t +
        " (" + data.tokens[t] + ")",
      "lens: " + panel.name + (untrained(data, panel, r) ? " (untrained here: the logit lens)" : ""),
    ];
    if (data.targets[t] !== null) lines.push("next token: " + data.targets[t]);
    lines.push(data.stat + " = " + format(data.stat, panel.values[r][t]));
    panel.top[r][t].forEach(function (entry, j) {
      lines.push((j + 1) + ". " + entry[0] + "  " + entry[1].toFixed(4));
    });
    return lines.join("\n");
  }

  function legend(stat, lo, hi) {
    var box = document.createElement("div");
    box.className = "legend";
    for (var i = 0; i < 5; i++) {
      var v = lo + (hi - lo) * i / 4;
      var c = rgb(v, lo, hi);
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = css(c);
      swatch.style.color = ink(c);
      swatch.textContent = stat === "rank" ? String(Math.round(Math.pow(10, v) - 1)) : Number(v.toPrecision(3)).toString();
      box.appendChild(swatch);
    }
    box.appendChild(document.createTextNode(" low → high"));
    return box;
  }

  function downloadButton(panel, kind) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "download";
    button.setAttribute("data-kind", kind);
    button.setAttribute("data-lens", panel.key);
    button.textContent = kind.toUpperCase();
    button.title = "Download this lens's " + kind.toUpperCase() + " view";
    button.addEventListener("click", function () { download(panel.key, kind, button); });
    return button;
  }

  function download(key, kind, button) {
    var stat = statBox.value;
    status.textContent = "rendering " + kind.toUpperCase() + "…";
    post("/api/trajectory." + kind, { prompt: lastPrompt, stat: stat, lens: key })
      .then(function (response) { return response.blob(); })
      .then(function (blob) {
        var name = "trajectory-" + key + "-" + stat + "." + kind;
        var link = document.createElement("a");
        link.href = URL.createObjectURL(blob);
        link.download = name;
        document.body.appendChild(link);
        link.click();
        link.remove();
        setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
        button.setAttribute("data-bytes", String(blob.size));
        status.textContent = "downloaded " + name + " (" + (blob.size / 1024).toFixed(1) + " kB)";
      })
      .catch(function (err) { showError(err.message, err.status || 0); status.textContent = ""; });
  }

  function render(data) {
    var range = scale(data.stat, data);
    panels.textContent = "";
    statLabel.textContent = "Cells: top-1 prediction, coloured by " + data.stat_label +
      ". Rows: layers (model output last); columns: input tokens.";
    data.panels.forEach(function (panel) {
      var section = document.createElement("section");
      section.className = "panel";
      section.setAttribute("data-lens", panel.key);
      var title = document.createElement("h2");
      var which = document.createElement("span");
      which.textContent = panel.key === "lens" ? "lens:" : "compared with:";
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = panel.name;
      title.append(which, name, downloadButton(panel, "png"), downloadButton(panel, "html"));
      section.appendChild(title);

      var table = document.createElement("table");
      table.className = "traj";
      var head = table.createTHead().insertRow();
      var corner = document.createElement("th");
      corner.textContent = "layer";
      head.appendChild(corner);
      data.tokens.forEach(function (token) {
        var th = document.createElement("th");
        th.className = "input";
        th.textContent = shorten(token, 10);
        th.title = token;
        head.appendChild(th);
      });
      var body = table.createTBody();
      data.rows.forEach(function (rowLabel, r) {
        var tr = body.insertRow();
        var th = document.createElement("th");
        th.className = "row";
        th.textContent = rowLabel;
        if (untrained(data, panel, r)) {
          th.className = "row untrained";
          th.textContent = rowLabel + "*";
          th.title = "untrained layer: an identity translator, read exactly as the logit lens reads it";
        }
        tr.appendChild(th);
        panel.values[r].forEach(function (value, t) {
          var td = tr.insertCell();
          var c = rgb(shade(data.stat, value), range[0], range[1]);
          td.className = "cell";
          td.setAttribute("data-row", String(r));
          td.setAttribute("data-pos", String(t));
          td.setAttribute("data-value", value === null ? "" : String(value));
          td.style.background = css(c);
          td.style.color = ink(c);
          td.textContent = shorten(panel.top[r][t][0][0], 10);
          td.addEventListener("mouseenter", function () {
            tip.textContent = tipText(data, panel, r, t);
            tip.hidden = false;
          });
          td.addEventListener("mousemove", function (e) {
            tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
            tip.style.top = Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
          });
          td.addEventListener("mouseleave", function () { tip.hidden = true; });
        });
      });
      var scroll = document.createElement("div");
      scroll.className = "scroll";
      scroll.appendChild(table);
      section.appendChild(scroll);
      if ((panel.untrained || []).length) {
        var note = document.createElement("p");
        note.className = "untrained-note";
        note.textContent = "* untrained layer" + (panel.untrained.length > 1 ? "s " : " ") +
          panel.untrained.join(", ") + ": this lens was not trained there (an identity translator), so there it " +
          "reads exactly what the logit lens reads.";
        section.appendChild(note);
      }
      section.appendChild(legend(data.stat, range[0], range[1]));
      panels.appendChild(section);
    });
  }

  function show(prompt, stat) {
    var mine = ++sequence;
    submit.disabled = true;
    status.textContent = "reading…";
    return post("/api/trajectory", { prompt: prompt, stat: stat })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (mine !== sequence) return;
        clearError();
        lastPrompt = prompt;
        lastData = data;
        render(data);
        remember(prompt, stat);
        status.textContent = data.tokens.length + " tokens × " + data.rows.length + " rows";
        document.body.setAttribute("data-ready", String(mine));
      })
      .catch(function (err) {
        if (mine !== sequence) return;
        showError(err.message, err.status || 0);
        status.textContent = "";
      })
      .finally(function () { if (mine === sequence) submit.disabled = false; });
  }

  // The address links to what the page shows: ?prompt=...&stat=... (other parameters are kept).
  function remember(prompt, stat) {
    var params = new URLSearchParams(window.location.search);
    params.set("prompt", prompt);
    params.set("stat", stat);
    window.history.replaceState(null, "", window.location.pathname + "?" + params.toString());
  }

  // On load: the prompt and statistic of the address, else the server's example, read at once.
  function first(info) {
    var params = new URLSearchParams(window.location.search);
    if (info.example) promptBox.placeholder = info.example;
    var prompt = params.get("prompt") || info.example;
    var stat = params.get("stat");
    if (stat !== null && info.statistics[stat] !== undefined) statBox.value = stat;
    if (!prompt) return;
    promptBox.value = prompt;
    // An unknown statistic in the address is sent as is: the server's answer names the ones there are.
    show(prompt, stat === null ? statBox.value : stat);
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    show(promptBox.value, statBox.value);
  });
  promptBox.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  statBox.addEventListener("change", function () {
    // The same prompt again: the server has its reading cached, so only the statistic changes.
    if (lastPrompt !== null) show(lastPrompt, statBox.value);
  });

  fetch("/api/health").then(function (r) { return r.json(); }).then(function (info) {
    Object.keys(info.statistics).forEach(function (name) {
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.title = info.statistics[name];
      statBox.appendChild(option);
    });
    about.textContent = "model " + info.model + " · lens " + info.lens +
      (info.compare ? " · compared with " + info.compare : "") + " · prompts up to " + info.limit + " tokens";
    document.body.setAttribute("data-connected", "true");
    first(info);
  }).catch(function () { about.textContent = "cannot reach the explorer's server"; });

  // For tests and the curious: the latest answer.
  window.lensHubExplorer = { last: function () { return lastData; } };
})();
