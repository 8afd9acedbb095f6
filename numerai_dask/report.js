// The report's interactive parts: a sortable, filterable, paginated leaderboard and SVG charts.
// Data comes from the JSON document in #report-data; every name goes into the page as text
// (textContent / createTextNode), never as markup. No network request is made.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#5ee0b5", "#60a5fa", "#fbbf24", "#f472b6", "#a78bfa", "#fb923c", "#34d399", "#f87171",
                  "#22d3ee", "#e879f9", "#a3e635", "#94a3b8"];
  const PAGE = 50;
  const W = 640, H = 250, M = {left: 52, right: 14, top: 12, bottom: 30};
  const tooltip = document.getElementById("tooltip");

  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits = 4) => !isNumber(v) ? (v === null || v === undefined || typeof v === "number" ? "–" : String(v))
    : Number.isInteger(v) ? v.toLocaleString("en-US") : v.toFixed(digits);

  function html(tag, attributes = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  // ---------------------------------------------------------------- per-era series (base64 int16)

  const S = data.series;
  const seriesIndex = new Map(S.models.map((model, i) => [model, i]));
  const decoded = {};

  function metricMatrix(metric) {
    if (!decoded[metric]) {
      const bytes = Uint8Array.from(atob(S.data[metric]), (c) => c.charCodeAt(0));
      const view = new DataView(bytes.buffer);
      const values = new Float64Array(bytes.length / 2);
      for (let i = 0; i < values.length; i++) {
        const raw = view.getInt16(2 * i, true);
        values[i] = raw === S.missing ? NaN : raw / S.scale;
      }
      decoded[metric] = values;
    }
    return decoded[metric];
  }

  function perEra(metric, model) {
    const row = seriesIndex.get(model);
    if (row === undefined || !S.data[metric]) return null;
    const n = data.eras.length;
    return metricMatrix(metric).subarray(row * n, (row + 1) * n);
  }

  function cumulative(values) {
    const out = new Float64Array(values.length);
    let total = NaN;
    values.forEach((v, i) => {
      if (Number.isFinite(v)) total = (Number.isFinite(total) ? total : 0) + v;
      out[i] = total;
    });
    return out;
  }

  // ---------------------------------------------------------------- tables

  // A paginated table over column-oriented data: sort by clicking a header, filter with an input.
  class Table {
    constructor({id, pager, filter, columns, visible, text, match, cell, firstDirection}) {
      this.table = document.getElementById(id);
      this.pager = document.getElementById(pager);
      this.columns = columns;
      this.visible = visible;
      this.text = new Set(text);
      this.match = match;
      this.cell = cell || ((td, value) => { td.textContent = fmt(value); });
      this.firstDirection = firstDirection || (() => "descending");
      this.rows = Object.values(columns)[0] ? Object.values(columns)[0].length : 0;
      this.sort = null;
      this.query = "";
      this.page = 0;
      if (!this.table) return;
      if (filter) {
        document.getElementById(filter).addEventListener("input", (event) => {
          this.query = event.target.value.trim();
          this.page = 0;
          this.render();
        });
      }
      this.render();
    }

    order() {
      let rows = [...Array(this.rows).keys()];
      const query = this.query.toLowerCase();
      if (query) rows = rows.filter((r) => this.match(r, query));
      if (this.sort) {
        const values = this.columns[this.sort.key];
        const sign = this.sort.direction === "ascending" ? 1 : -1;
        rows.sort((a, b) => {
          const x = values[a], y = values[b];
          if (x === null || x === undefined) return y === null || y === undefined ? a - b : 1;
          if (y === null || y === undefined) return -1;
          const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return c === 0 ? a - b : sign * c;
        });
      }
      return rows;
    }

    render() {
      const rows = this.order();
      const pages = Math.max(1, Math.ceil(rows.length / PAGE));
      this.page = Math.min(this.page, pages - 1);
      const head = html("thead");
      const headRow = head.appendChild(html("tr"));
      for (const key of this.visible) {
        const th = headRow.appendChild(html("th", {scope: "col", "data-key": key}, key));
        if (this.text.has(key)) th.className = "text";
        if (this.sort && this.sort.key === key) th.setAttribute("aria-sort", this.sort.direction);
        th.addEventListener("click", () => this.sortBy(key));
      }
      const body = html("tbody");
      if (!rows.length && this.query) {
        body.appendChild(html("tr")).appendChild(
          html("td", {class: "note", colspan: this.visible.length}, `nothing matches “${this.query}”`));
      }
      for (const r of rows.slice(this.page * PAGE, (this.page + 1) * PAGE)) {
        const tr = body.appendChild(html("tr"));
        for (const key of this.visible) {
          const td = tr.appendChild(html("td"));
          if (this.text.has(key)) td.className = "text";
          this.cell(td, this.columns[key][r], key, r);
        }
      }
      this.table.replaceChildren(head, body);
      this.renderPager(rows.length, pages);
    }

    renderPager(count, pages) {
      if (!this.pager) return;
      const first = count ? this.page * PAGE + 1 : 0;
      const last = Math.min(count, (this.page + 1) * PAGE);
      const previous = html("button", {type: "button", "data-page": "previous"}, "‹ previous");
      const next = html("button", {type: "button", "data-page": "next"}, "next ›");
      previous.disabled = this.page === 0;
      next.disabled = this.page >= pages - 1;
      previous.addEventListener("click", () => { this.page -= 1; this.render(); });
      next.addEventListener("click", () => { this.page += 1; this.render(); });
      const info = html("span", {class: "count"}, `rows ${fmt(first)}–${fmt(last)} of ${fmt(count)} · page ${this.page + 1} / ${pages}`);
      this.pager.replaceChildren(info, previous, next);
    }

    sortBy(key) {
      const direction = this.sort && this.sort.key === key
        ? (this.sort.direction === "ascending" ? "descending" : "ascending") : this.firstDirection(key);
      this.sort = {key, direction};
      this.page = 0;
      this.render();
    }

    show(columns) {
      this.visible = columns;
      this.render();
    }
  }

  const board = data.leaderboard;
  const allColumns = Object.keys(board);
  const picks = [];
  const lowerIsBetter = (key) => key.endsWith("_rank") || key.endsWith("_drawdown") || key.startsWith("fe_")
    || key === "model";

  function boardCell(td, value, key, r) {
    if (key === "model") {
      td.classList.add("model");
      if (picks.includes(value)) td.classList.add("picked");
      if (seriesIndex.has(value)) {
        const button = td.appendChild(html("button", {type: "button", title: "chart this model"}, value));
        button.addEventListener("click", () => togglePick(value));
      } else {
        td.textContent = value;
        td.title = "no per-era series embedded for this model";
      }
    } else if (key === "rank_change") {
      if (value === null || value === undefined) td.textContent = "new";
      else if (value > 0) { td.textContent = `▲ ${value}`; td.className = "up"; }
      else if (value < 0) { td.textContent = `▼ ${-value}`; td.className = "down"; }
      else td.textContent = "=";
    } else {
      const counted = key.endsWith("_rank") || key === "n_eras";
      td.textContent = counted || !isNumber(value) ? fmt(value) : value.toFixed(4);
      if (isNumber(value) && value < 0 && !counted) td.className = "neg";
    }
  }

  const leaderboard = new Table({
    id: "leaderboard", pager: "pager", filter: "filter", columns: board, visible: data.defaultColumns,
    text: ["model"], cell: boardCell,
    match: (r, query) => String(board.model[r]).toLowerCase().includes(query),
    firstDirection: (key) => lowerIsBetter(key) ? "ascending" : "descending",
  });
  document.getElementById("all-columns").addEventListener("change", (event) => {
    leaderboard.show(event.target.checked ? allColumns : data.defaultColumns);
  });

  const rejected = data.rejections;
  new Table({
    id: "rejections", pager: "rejection-pager", filter: "rejection-filter", columns: rejected,
    visible: Object.keys(rejected), text: Object.keys(rejected),
    match: (r, query) => Object.keys(rejected).some((key) => String(rejected[key][r] ?? "").toLowerCase().includes(query)),
    firstDirection: () => "ascending",
  });
  if (data.rejectionCount > (rejected.model || []).length) {
    const pager = document.getElementById("rejection-pager");
    if (pager) pager.before(html("p", {class: "note"}, `${fmt((rejected.model || []).length)} of ${fmt(data.rejectionCount)} rejections shown; every one is in rejections.parquet.`));
  }

  // ---------------------------------------------------------------- charts

  // Ticks at a round step over [low, high], as the text to write at each: every one with the decimals the step needs.
  function niceTicks(low, high, count = 5) {
    if (!(high > low)) { high = low + 1; }
    const raw = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    let decimals = 0;
    while (decimals < 12 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
    const ticks = [];
    for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) {
      const value = Math.abs(t) < step * 1e-9 ? 0 : t;
      ticks.push({value, text: value.toFixed(decimals)});
    }
    return ticks;
  }

  function extent(arrays, includeZero = true) {
    let low = includeZero ? 0 : Infinity, high = includeZero ? 0 : -Infinity;
    for (const values of arrays) for (const v of values) if (Number.isFinite(v)) { low = Math.min(low, v); high = Math.max(high, v); }
    if (!Number.isFinite(low)) return [0, 1];
    if (high === low) { low -= 0.01; high += 0.01; }
    const pad = (high - low) * 0.05;
    return [low - pad, high + pad];
  }

  // An empty plot with axes: x is the era's position (a point, or with bands the middle of the era's band),
  // y the value. Returns the scales, the era at an x position, and the svg.
  function axes(container, count, [low, high], label, bands = false) {
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label});
    const inner = W - M.left - M.right;
    const x = bands ? (i) => M.left + (i + 0.5) / count * inner
      : (i) => M.left + (count > 1 ? i / (count - 1) : 0.5) * inner;
    const at = (position) => Math.max(0, Math.min(count - 1, bands ? Math.floor((position - M.left) / inner * count)
      : Math.round((position - M.left) / inner * (count - 1))));
    const y = (v) => H - M.bottom - (v - low) / (high - low) * (H - M.top - M.bottom);
    for (const {value, text} of niceTicks(low, high)) {
      svg("line", {x1: M.left, x2: W - M.right, y1: y(value), y2: y(value), class: value === 0 ? "zero" : "grid-line"}, root);
      svg("text", {x: M.left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick"}, root).textContent = text;
    }
    const every = Math.max(1, Math.ceil(count / 7));
    for (let i = 0; i < count; i += every) {
      svg("text", {x: x(i), y: H - 10, "text-anchor": "middle"}, root).textContent = data.eras[i];
    }
    container.replaceChildren(root);
    return {root, x, y, at};
  }

  function empty(container, message) {
    container.replaceChildren(html("div", {class: "empty"}, message));
  }

  // Hovering a chart shows the era and each line's value there.
  function hover(plot, count, rows) {
    const guide = svg("line", {y1: M.top, y2: H - M.bottom, stroke: "#6b7280", "stroke-dasharray": "3 3", visibility: "hidden"}, plot.root);
    const area = svg("rect", {x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom, fill: "transparent"}, plot.root);
    area.addEventListener("mousemove", (event) => {
      const box = plot.root.getBoundingClientRect();
      const position = (event.clientX - box.left) / box.width * W;
      const i = plot.at(position);
      guide.setAttribute("x1", plot.x(i));
      guide.setAttribute("x2", plot.x(i));
      guide.setAttribute("visibility", "visible");
      const lines = [html("div", {}, `era ${data.eras[i]}`)];
      for (const [name, values, color] of rows) {
        const line = html("div", {}, `${name}: ${fmt(values[i])}`);
        line.style.color = color;
        lines.push(line);
      }
      tooltip.replaceChildren(...lines);
      tooltip.style.display = "block";
      tooltip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8)}px`;
      tooltip.style.top = `${event.clientY + 14}px`;
    });
    area.addEventListener("mouseleave", () => { tooltip.style.display = "none"; guide.setAttribute("visibility", "hidden"); });
  }

  // A line through the finite values; a value alone between gaps (a model scored in one era) is a dot, drawn by
  // the round caps of a segment of no length.
  function path(values, x, y) {
    let d = "", run = 0;
    const end = () => { if (run === 1) d += "h0"; run = 0; };
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) { end(); return; }
      d += `${run ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      run += 1;
    });
    end();
    return d;
  }

  function lineChart(container, lines, label) {
    const count = data.eras.length;
    const plot = axes(container, count, extent(lines.map((l) => l.values)), label);
    for (const line of lines) {
      const p = svg("path", {d: path(line.values, plot.x, plot.y), fill: "none", stroke: line.color, "stroke-width": 1.8,
                             "stroke-linejoin": "round", "stroke-linecap": "round", class: "series"}, plot.root);
      svg("title", {}, p).textContent = line.name;
    }
    hover(plot, count, lines.map((l) => [l.name, l.values, l.color]));
    return plot;
  }

  function barChart(container, values, label, name) {
    const count = data.eras.length;
    const plot = axes(container, count, extent([values]), label, true);
    const step = (W - M.left - M.right) / Math.max(count, 1);
    const width = Math.max(1, step * 0.75);
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const top = plot.y(Math.max(v, 0)), bottom = plot.y(Math.min(v, 0));
      svg("rect", {x: plot.x(i) - width / 2, y: top, width, height: Math.max(bottom - top, 0.5),
                   fill: v >= 0 ? "#4ade80" : "#f87171", class: "bar"}, plot.root);
    });
    hover(plot, count, [[name, values, "#e7eaf0"]]);
  }

  const metricSelect = document.getElementById("metric");
  for (const metric of S.metrics) metricSelect.appendChild(html("option", {value: metric}, metric));
  const datalist = document.getElementById("pickable");
  for (const model of S.models) datalist.appendChild(html("option", {value: model}));
  picks.push(...S.models.slice(0, data.chartTop));
  const colorOf = new Map();
  let nextColor = 0;
  const color = (model) => {
    if (!colorOf.has(model)) colorOf.set(model, COLORS[nextColor++ % COLORS.length]);
    return colorOf.get(model);
  };

  let barsOf = null;  // the model picked last, whose per-era bars show (the first pick's until one is)
  function togglePick(model) {
    const at = picks.indexOf(model);
    if (at >= 0) picks.splice(at, 1); else { picks.push(model); barsOf = model; }
    drawSeries();
    leaderboard.render();
  }

  document.getElementById("pick").addEventListener("change", (event) => {
    const model = event.target.value;
    if (seriesIndex.has(model) && !picks.includes(model)) togglePick(model);
    event.target.value = "";
  });
  metricSelect.addEventListener("change", drawSeries);

  function legend(container, models) {
    const box = container.appendChild(html("div", {class: "legend"}));
    for (const model of models) {
      const item = box.appendChild(html("span"));
      const swatch = item.appendChild(html("i"));
      swatch.style.background = color(model);
      item.appendChild(document.createTextNode(model));
      const remove = item.appendChild(html("button", {type: "button", title: "remove", "aria-label": "remove"}, "×"));
      remove.addEventListener("click", () => togglePick(model));
    }
  }

  function drawSeries() {
    const metric = metricSelect.value || S.metrics[0];
    const cumulativeBox = document.getElementById("cumulative");
    if (!S.metrics.length || !picks.length) {
      empty(cumulativeBox, "pick a model from the table or the box above");
    } else {
      const lines = picks.map((model) => ({name: model, color: color(model), values: cumulative(perEra(metric, model))}));
      lineChart(cumulativeBox, lines, `cumulative ${metric}`);
      legend(cumulativeBox, picks);
    }
    const perEraBox = document.getElementById("per-era");
    const shown = picks.includes(barsOf) ? barsOf : picks[0];
    if (picks.length) barChart(perEraBox, perEra(metric, shown), `${metric} per era of ${shown}`, shown);
    else empty(perEraBox, "no model picked");
    drawSpread(metric);
  }

  function drawSpread(metric) {
    const box = document.getElementById("spread");
    const spread = data.spread[metric];
    if (!spread) { empty(box, `no per-era ${metric}`); return; }
    const column = (q) => spread.values.map((row) => row[spread.quantiles.indexOf(q)] ?? NaN);
    const [p10, p25, median, p75, p90] = [0.1, 0.25, 0.5, 0.75, 0.9].map(column);
    const plot = axes(box, data.eras.length, extent([p10, p90]), `spread of ${metric} across models`);
    const band = (low, high, fill) => {
      const points = [];
      low.forEach((v, i) => Number.isFinite(v) && points.push(`${plot.x(i).toFixed(1)},${plot.y(v).toFixed(1)}`));
      for (let i = high.length - 1; i >= 0; i--) if (Number.isFinite(high[i])) points.push(`${plot.x(i).toFixed(1)},${plot.y(high[i]).toFixed(1)}`);
      svg("polygon", {points: points.join(" "), fill, class: "band"}, plot.root);
    };
    band(p10, p90, "#5ee0b522");
    band(p25, p75, "#5ee0b555");
    svg("path", {d: path(median, plot.x, plot.y), fill: "none", stroke: "#5ee0b5", "stroke-width": 1.8,
                 "stroke-linecap": "round", class: "series"}, plot.root);
    hover(plot, data.eras.length, [["90 %", p90, "#9ca3af"], ["75 %", p75, "#9ca3af"], ["median", median, "#5ee0b5"],
                                   ["25 %", p25, "#9ca3af"], ["10 %", p10, "#9ca3af"]]);
  }

  function drawMeta() {
    const box = document.getElementById("meta");
    if (!data.meta) { empty(box, "this run has no meta model CORR"); return; }
    barChart(box, data.meta.map((v) => v ?? NaN), "meta model corr per era", "meta model corr");
  }

  function drawCorrelation() {
    const box = document.getElementById("correlation");
    const matrix = data.correlation;
    if (!matrix) { empty(box, "needs at least two models"); return; }
    const n = matrix.models.length, label = 110, size = Math.min(30, (W - label) / n);
    const root = svg("svg", {viewBox: `0 0 ${W} ${label + n * size + 6}`, role: "img", "aria-label": "prediction correlation"});
    // dark (0) to the accent colour (1); negative correlations towards red
    const mix = (from, to, t) => from.map((c, k) => Math.round(c + (to[k] - c) * t));
    const shade = (v) => {
      if (!Number.isFinite(v)) return "#1f2937";
      const t = Math.max(-1, Math.min(1, v));
      const [r, g, b] = t >= 0 ? mix([31, 41, 55], [94, 224, 181], t) : mix([31, 41, 55], [248, 113, 113], -t);
      return `rgb(${r},${g},${b})`;
    };
    const short = (name) => (name.length > 16 ? `${name.slice(0, 15)}…` : name);
    matrix.models.forEach((model, i) => {
      svg("text", {x: label - 6, y: label + i * size + size * 0.65, "text-anchor": "end"}, root).textContent = short(model);
      svg("text", {x: 0, y: 0, transform: `translate(${label + i * size + size * 0.6},${label - 6}) rotate(-55)`}, root).textContent = short(model);
      matrix.values[i].forEach((v, j) => {
        const cell = svg("rect", {x: label + j * size, y: label + i * size, width: size - 1, height: size - 1, fill: shade(v), class: "cell"}, root);
        svg("title", {}, cell).textContent = `${model} × ${matrix.models[j]}: ${fmt(v, 3)}`;
        if (size >= 24 && Number.isFinite(v)) {
          const text = svg("text", {x: label + j * size + size / 2 - 0.5, y: label + i * size + size / 2 + 3, "text-anchor": "middle", class: "cell-value"}, root);
          const hundredths = Math.round(Math.abs(v) * 100);  // halves away from zero, whatever the sign
          text.textContent = `${v < 0 && hundredths ? "-" : ""}${(hundredths / 100).toFixed(2).replace(/^0/, "")}`;
          if (Math.abs(v) < 0.5) text.style.fill = "#e7eaf0";
        }
      });
    });
    box.replaceChildren(root);
  }

  function drawTargets() {
    const box = document.getElementById("targets");
    const targets = data.targets.filter((t) => board[`${t}_mean`]);
    if (targets.length < 2) { empty(box, "one target scored; add --extra-target NAME to compare targets"); return; }
    const models = board.model.slice(0, 10);
    const values = targets.map((t) => board[`${t}_mean`].slice(0, 10).map((v) => v ?? NaN));
    const [low, high] = extent(values);
    const root = svg("svg", {viewBox: `0 0 ${W} ${H + 30}`, role: "img", "aria-label": "corr per target"});
    const y = (v) => H - M.bottom - (v - low) / (high - low) * (H - M.top - M.bottom);
    for (const {value, text} of niceTicks(low, high)) {
      svg("line", {x1: M.left, x2: W - M.right, y1: y(value), y2: y(value), class: value === 0 ? "zero" : "grid-line"}, root);
      svg("text", {x: M.left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick"}, root).textContent = text;
    }
    const group = (W - M.left - M.right) / models.length, bar = group * 0.8 / targets.length;
    models.forEach((model, i) => {
      targets.forEach((target, k) => {
        const v = values[k][i];
        if (!Number.isFinite(v)) return;
        const rect = svg("rect", {x: M.left + i * group + group * 0.1 + k * bar, y: Math.min(y(v), y(0)), width: bar - 1,
                                  height: Math.max(Math.abs(y(v) - y(0)), 0.5), fill: COLORS[k % COLORS.length], class: "bar"}, root);
        svg("title", {}, rect).textContent = `${model} · ${target}: ${fmt(v)}`;
      });
      const name = svg("text", {x: 0, y: 0, "text-anchor": "end", transform: `translate(${M.left + (i + 0.5) * group},${H - M.bottom + 12}) rotate(-25)`}, root);
      name.textContent = model.length > 12 ? `${model.slice(0, 11)}…` : model;
    });
    box.replaceChildren(root);
    const key = box.appendChild(html("div", {class: "legend"}));
    targets.forEach((target, k) => {
      const item = key.appendChild(html("span"));
      item.appendChild(html("i")).style.background = COLORS[k % COLORS.length];
      item.appendChild(document.createTextNode(target));
    });
  }

  drawSeries();
  leaderboard.render();
  drawMeta();
  drawCorrelation();
  drawTargets();
  document.body.dataset.ready = "true";
})();
