/* The task supervisor's live dashboard: fetches data/ every few seconds and redraws the page.
 * Plain DOM and inline SVG, no library, no network but this site's own admin URLs.
 * Text from the server is only ever set as textContent, never parsed as HTML. */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var config = JSON.parse(document.getElementById("ts-config").textContent);
  var filters = { task: "", queue: "", range: "1h" };
  var timer = null;
  var refreshes = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "class") node.className = attrs[key];
      else if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    return node;
  }

  function table(headers, rows, empty) {
    var head = el("thead", {}, [el("tr", {}, headers.map(function (h) { return el("th", { text: h }); }))]);
    var body = el("tbody", {}, rows.length ? rows : [el("tr", {}, [el("td", { colspan: String(headers.length), class: "ts-muted", text: empty })])]);
    return el("table", {}, [head, body]);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "-";
    if (value < 90) return value.toFixed(1) + " s";
    if (value < 5400) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  function bytes(value) {
    if (!value) return "-";
    return (value / 1048576).toFixed(0) + " MiB";
  }

  function when(iso) {
    if (!iso) return "-";
    var date = new Date(iso);
    return isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function replace(id, node) {
    var holder = document.getElementById(id);
    holder.textContent = "";
    holder.appendChild(node);
  }

  function button(verb, target, label, question) {
    var b = el("button", { type: "button", "data-verb": verb, "data-target": target, text: label });
    b.addEventListener("click", function () { act(verb, target, question); });
    return b;
  }

  // -- actions -----------------------------------------------------------------------------------

  function csrfToken() {
    var input = document.querySelector("#ts-dashboard input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function say(text, bad) {
    var message = document.getElementById("ts-message");
    message.textContent = text;
    message.className = bad ? "ts-bad" : "ts-ok";
  }

  function act(verb, target, question) {
    if (!window.confirm(question)) return;
    var body = new URLSearchParams({ verb: verb, target: target });
    fetch(config.act, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString()
    }).then(function (response) {
      return response.json().then(function (answer) { say(answer.message, !answer.ok); });
    }).catch(function (error) { say("The action did not go through: " + error, true); })
      .then(refresh);
  }

  // -- sections ----------------------------------------------------------------------------------

  function childLine(child, can) {
    var task = child.task;
    var parts = [el("span", { text: "[" + child.slot + "] pid " + child.pid + " " + child.state + " " + bytes(child.rss) })];
    if (task) {
      parts.push(el("span", { text: " — " + task.path + " (" + task.id + ") for " + seconds(task.running_for) + " " }));
      if (can.cancel) parts.push(button("cancel", task.id, "Cancel", "Cancel task " + task.id + " (" + task.path + ")?"));
    }
    return el("div", { class: "ts-child", "data-worker": child.worker_id || "" }, parts);
  }

  function poolCell(pools, can) {
    return el("td", {}, pools.map(function (pool) {
      var strength = pool.at_strength ? el("span", { class: "ts-ok", text: "at strength" }) :
        el("span", { class: "ts-bad", text: pool.backing_off ? "backing off" : "below strength" });
      var head = el("div", {}, [el("strong", { text: pool.name }), " " + pool.running + "/" + pool.desired + " ", strength,
        " queues: " + (pool.queues || []).join(", ") + (pool.restarts ? ", restarts: " + pool.restarts : "")]);
      var children = el("div", { class: "ts-children" }, (pool.children || []).map(function (c) { return childLine(c, can); }));
      if (pool.children_omitted) children.appendChild(el("div", { class: "ts-muted", text: "+" + pool.children_omitted + " more" }));
      return el("div", { class: "ts-pool" }, [head, children]);
    }));
  }

  function renderNodes(data) {
    var rows = data.nodes.map(function (n) {
      var lease = n.lease && n.lease.enabled ? (n.lease.held ? "held" : "LOST") : "off";
      var state = n.late ? el("span", { class: "ts-warn", text: "late (" + seconds(n.seen_ago) + ")" }) : el("span", { class: "ts-ok", text: n.phase || "running" });
      return el("tr", { "data-node": n.node }, [el("td", { text: n.node }), el("td", { text: String(n.pid) }), el("td", { text: n.version || "-" }),
        el("td", { text: when(n.started_at) }), el("td", { class: lease === "LOST" ? "ts-bad" : "", text: lease }), el("td", {}, [state]), poolCell(n.pools, data.can)]);
    });
    replace("ts-nodes", table(["Node", "PID", "Version", "Up since", "Lease", "State", "Pools and children"], rows, "No supervisor is beating."));
    var stopped = data.stopped_nodes.map(function (n) {
      return el("tr", { "data-node": n.node }, [el("td", { text: n.node }), el("td", { text: String(n.pid) }), el("td", { text: n.how_stopped }),
        el("td", { text: when(n.last_seen) + " (" + seconds(n.seen_ago) + " ago)" })]);
    });
    replace("ts-stopped", table(["Node", "PID", "How", "Last seen"], stopped, "None."));
  }

  function renderQueues(data) {
    var rows = data.queues.map(function (q) {
      var actions = el("td", {});
      if (data.can.pause) {
        actions.appendChild(q.paused ? button("resume", q.queue, "Resume", "Resume queue " + q.queue + "?") :
          button("pause", q.queue, "Pause", "Pause queue " + q.queue + " on every node?"));
      }
      return el("tr", { "data-queue": q.queue }, [el("td", { text: q.queue }), el("td", { class: "ready", text: String(q.ready) }),
        el("td", { class: "oldest", text: seconds(q.oldest_ready_age) }), el("td", { class: "running", text: String(q.running) }),
        el("td", { class: "paused" + (q.paused ? " ts-warn" : ""), text: q.paused ? "paused by " + q.paused_by : "no" }),
        el("td", { class: "pools" + (q.unserved ? " ts-bad" : ""), text: q.unserved ? "UNSERVED" : q.pools.join(", ") }), actions]);
    });
    replace("ts-queues", table(["Queue", "Ready", "Oldest ready", "Running", "Paused", "Served by", ""], rows, "No queue has tasks."));
  }

  function renderFailures(data) {
    var rows = data.failures.map(function (f) {
      var actions = el("td", {});
      if (data.can.retry) actions.appendChild(button("retry", f.id, "Retry", "Retry task " + f.id + " (" + f.task + ") on its row?"));
      var id = f.link ? el("a", { href: f.link, text: f.id }) : el("span", { text: f.id });
      var details = el("details", {}, [el("summary", { text: f.exception || "-" }), el("pre", { class: "ts-traceback", text: f.traceback })]);
      return el("tr", { "data-task": f.id }, [el("td", {}, [id]), el("td", { text: f.task }), el("td", { text: f.queue }),
        el("td", { text: when(f.finished_at) }), el("td", { text: String(f.attempts) }), el("td", {}, [details]), actions]);
    });
    replace("ts-failures", table(["Task", "Path", "Queue", "Finished", "Attempts", "Exception", ""], rows, "No failed task matches."));
  }

  function renderSchedules(data) {
    var rows = data.schedules.map(function (s) {
      var lag = s.lag === null ? "-" : (s.overdue ? "overdue " : "") + seconds(s.lag);
      var actions = el("td", {});
      if (data.can.schedule) actions.appendChild(button("run", s.name, "Run now", "Run schedule " + s.name + " now?"));
      return el("tr", { "data-schedule": s.name }, [el("td", { text: s.name }), el("td", { text: s.task }), el("td", { text: s.when }),
        el("td", { text: when(s.last) }), el("td", { text: s.enabled ? when(s.next) : "disabled" }),
        el("td", { class: s.overdue ? "ts-bad" : "", text: lag }), actions]);
    });
    replace("ts-schedules", table(["Schedule", "Task", "When", "Last run", "Next run", "Lag", ""], rows, "No periodic tasks."));
  }

  // -- charts ------------------------------------------------------------------------------------

  var W = 600, H = 170, PAD = 34;

  function chart(id, charts, series, kind) {
    var since = new Date(charts.since).getTime(), until = new Date(charts.until).getTime();
    var span = Math.max(60000, until - since);
    var max = 1;
    charts.points.forEach(function (p) {
      var total = 0;
      series.forEach(function (s) { var v = p[s.key] || 0; total = kind === "stack" ? total + v : Math.max(total, v); });
      max = Math.max(max, total);
    });
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img", "data-points": String(charts.points.length) });
    var x = function (t) { return PAD + (W - PAD - 4) * (t - since) / span; };
    var y = function (v) { return H - 16 - (H - 24) * v / max; };
    root.appendChild(svg("line", { x1: PAD, y1: H - 16, x2: W - 4, y2: H - 16, stroke: "#999" }));
    [[max, 8], [0, H - 14]].forEach(function (tick) {
      var label = svg("text", { x: 2, y: tick[1] + 4, "font-size": "10", fill: "#666" });
      label.textContent = String(Math.round(tick[0]));
      root.appendChild(label);
    });
    var barWidth = Math.max(1, (W - PAD - 4) / (charts.minutes || 60) - 1);
    series.forEach(function (s, index) {
      var path = [];
      charts.points.forEach(function (p) {
        var t = new Date(p.t).getTime(), v = p[s.key];
        if (v === null || v === undefined) return;
        if (kind === "stack") {
          var below = 0;
          for (var i = 0; i < index; i++) below += p[series[i].key] || 0;
          root.appendChild(svg("rect", { x: x(t), y: y(below + v), width: barWidth, height: Math.max(0, y(below) - y(below + v)), fill: s.color }));
        } else {
          path.push((path.length ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1));
        }
      });
      if (path.length) root.appendChild(svg("path", { d: path.join(" "), fill: "none", stroke: s.color, "stroke-width": "2", "stroke-dasharray": s.dash || "" }));
    });
    var legend = el("div", { class: "ts-legend" }, series.map(function (s) {
      return el("span", {}, [el("span", { class: "ts-swatch", style: "background:" + s.color }), s.label]);
    }));
    var holder = document.getElementById(id);
    holder.textContent = "";
    holder.appendChild(root);
    holder.appendChild(legend);
    if (!charts.points.length) holder.appendChild(el("div", { class: "ts-muted", text: "No figures recorded in this range yet." }));
  }

  function renderCharts(data) {
    var c = data.charts;
    chart("ts-chart-finished", c, [{ key: "succeeded", label: "succeeded", color: "#2a7d2a" }, { key: "failed", label: "failed", color: "#ba2121" }], "stack");
    chart("ts-chart-depth", c, [{ key: "ready", label: "ready", color: "#417690" }, { key: "running", label: "running", color: "#b36b00" }], "line");
    chart("ts-chart-latency", c, [{ key: "latency_ms", label: "average", color: "#417690" }, { key: "latency_max_ms", label: "max", color: "#999", dash: "4 3" }], "line");
    var select = document.getElementById("ts-range");
    if (!select.options.length) {
      data.filters.ranges.forEach(function (r) { select.appendChild(el("option", { value: r, text: "last " + r })); });
      select.value = filters.range;
    }
  }

  // -- the refresh -------------------------------------------------------------------------------

  function render(data) {
    renderNodes(data);
    renderQueues(data);
    renderCharts(data);
    renderFailures(data);
    renderSchedules(data);
  }

  function status(text, bad) {
    var line = document.getElementById("ts-status");
    line.textContent = text;
    line.className = bad ? "ts-bad" : "";
    line.setAttribute("data-refreshes", String(refreshes));
  }

  function refresh() {
    clearTimeout(timer);
    var query = new URLSearchParams(filters).toString();
    return fetch(config.data + "?" + query, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) throw new Error(data.error || response.statusText);
          return data;
        });
      })
      .then(function (data) {
        render(data);
        refreshes += 1;
        status("Updated " + new Date().toLocaleTimeString() + " (every " + config.refreshMs / 1000 + " s)", false);
      })
      .catch(function (error) { status("Could not refresh: " + error.message, true); })
      .then(function () { timer = setTimeout(refresh, config.refreshMs); });
  }

  document.getElementById("ts-filters").addEventListener("submit", function (event) {
    event.preventDefault();
    var form = event.target;
    filters.task = form.elements.task.value.trim();
    filters.queue = form.elements.queue.value.trim();
    refresh();
  });
  document.getElementById("ts-range").addEventListener("change", function (event) {
    filters.range = event.target.value;
    refresh();
  });
  refresh();
})();
