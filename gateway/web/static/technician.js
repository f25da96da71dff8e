// Technician console: the health part is server-rendered and re-fetched every few seconds
// (same filters); maintenance windows and self-tests go through the REST API with the
// session's CSRF token (CG.request). Every word shown comes from the page's catalogue (CG.T).
(function () {
  "use strict";
  var REFRESH_MS = 5000;
  var POLL_MS = 300;
  var HOPS = ["requested", "published", "edge_outbox", "gateway_stored", "police_ack", "status_at_edge"];

  function fromHtml(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim(); // server-rendered, escaped by Jinja
    return tpl.content.firstElementChild;
  }

  // --- live refresh of the health part ------------------------------------------------------
  function refresh() {
    var box = document.getElementById("health");
    if (!box) { return; }
    var state = document.getElementById("refreshed");
    fetch("/technician/health" + location.search, { credentials: "same-origin" })
      .then(function (r) {
        if (r.redirected || r.status === 401 || r.status === 403) { location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (text) {
        if (!text) { if (state) { state.dataset.state = "failed"; state.textContent = CG.T["tech.js.refresh_failed"]; } return; }
        var el = fromHtml(text);
        box.replaceChildren(el);
        CG.tick(el); CG.localTimes(el);
        if (state) {
          state.dataset.state = "ok";
          state.textContent = CG.fmt("tech.js.refreshed", { time: new Date().toLocaleTimeString(document.documentElement.lang, { hour12: false }) });
        }
        document.body.dataset.refreshes = String(parseInt(document.body.dataset.refreshes || "0", 10) + 1);
      })
      .catch(function () { if (state) { state.dataset.state = "failed"; state.textContent = CG.T["tech.js.refresh_failed"]; } });
  }

  // --- self-test ------------------------------------------------------------------------------
  function cell(text) { var td = document.createElement("td"); td.textContent = text; return td; }

  function showSelftest(body) {
    var panel = document.getElementById("selftest");
    panel.hidden = false;
    document.getElementById("selftest-device").textContent = body.campus + " / " + body.device;
    var verdict = document.getElementById("selftest-verdict");
    verdict.dataset.state = body.state;
    verdict.textContent = CG.T["tech.js.selftest." + body.state] || body.state;
    var rows = document.getElementById("selftest-hops");
    rows.replaceChildren();
    (body.hops || []).forEach(function (h) {
      var tr = document.createElement("tr");
      tr.dataset.hop = h.hop;
      tr.className = h.at ? "done" : (body.failed_hop === h.hop ? "failed" : "waiting");
      tr.appendChild(cell(CG.T["tech.js.hop." + h.hop] || h.hop));
      tr.appendChild(cell(h.at ? new Date(h.at).toLocaleTimeString(document.documentElement.lang, { hour12: false }) : "–"));
      tr.appendChild(cell(h.ms === null || h.ms === undefined ? "–" : CG.fmt("tech.js.ms", { ms: Number(h.ms).toFixed(1) })));
      rows.appendChild(tr);
    });
    var detail = document.getElementById("selftest-detail");
    detail.textContent = body.state === "failed"
      ? CG.fmt("tech.js.selftest.failed_at", { hop: CG.T["tech.js.hop." + body.failed_hop] || body.failed_hop || "", detail: body.detail || "" })
      : "";
  }

  function selftestError(text) {
    var panel = document.getElementById("selftest");
    panel.hidden = false;
    var verdict = document.getElementById("selftest-verdict");
    verdict.dataset.state = "error";
    verdict.textContent = text;
    document.getElementById("selftest-hops").replaceChildren();
  }

  function follow(id) {
    CG.request("GET", "/api/selftest/" + encodeURIComponent(id)).then(function (res) {
      if (!res.ok) { selftestError(CG.problem(res)); return; }
      showSelftest(res.data);
      if (res.data.state === "running") { setTimeout(function () { follow(id); }, POLL_MS); }
    });
  }

  function runSelftest(btn) {
    var campus = btn.dataset.campus, device = btn.dataset.device;
    btn.disabled = true;
    CG.request("POST", "/api/selftest", { campus: campus, device: device }).then(function (res) {
      btn.disabled = false;
      if (!res.ok) { selftestError(CG.problem(res)); return; }
      showSelftest(res.data);
      document.getElementById("selftest").scrollIntoView({ block: "nearest" });
      follow(res.data.id);
    });
  }

  // --- maintenance windows ------------------------------------------------------------------
  function isoOf(value) {
    if (!value) { return null; }
    var d = new Date(value); // datetime-local: the browser's time zone
    return isNaN(d.getTime()) ? null : d.toISOString();
  }

  function formError(form, text) {
    var p = form.querySelector(".form-error");
    p.hidden = false;
    p.textContent = text;
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.addEventListener("click", function (ev) {
      var run = ev.target.closest("button.selftest-run");
      if (run) { runSelftest(run); return; }
      var end = ev.target.closest("button.mw-end");
      if (end) {
        end.disabled = true;
        CG.request("POST", "/api/maintenance/" + encodeURIComponent(end.dataset.id) + "/end").then(function (res) {
          if (res.ok) { location.reload(); return; }
          end.disabled = false;
          formError(document.getElementById("mw-form"), CG.problem(res));
        });
      }
    });
    var form = document.getElementById("mw-form");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var body = {
          campus: form.elements.campus.value,
          device: form.elements.device.value.trim() || null,
          start: isoOf(form.elements.start.value),
          end: isoOf(form.elements.end.value),
          reason: form.elements.reason.value.trim()
        };
        if (body.start === null) { delete body.start; }
        if (body.end === null) { delete body.end; }
        CG.request("POST", "/api/maintenance", body).then(function (res) {
          if (res.ok) { location.reload(); return; }
          formError(form, CG.problem(res));
        });
      });
    }
    ["filter-campus", "filter-state"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) { el.addEventListener("change", function () { document.getElementById("filters").submit(); }); }
    });
    if (document.getElementById("health")) { setInterval(refresh, REFRESH_MS); }
  });
})();
