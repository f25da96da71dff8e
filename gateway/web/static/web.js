// Central consoles, shared script: log in and out, CSRF-carrying requests, the live SSE
// stream, and clock helpers. Each console's own script (e.g. dispatch.js) registers handlers
// with CG.on(type, fn) for the frames it knows. The server renders every fragment (HTML
// escaped by Jinja); scripts only swap them in. Every word shown comes from the page's
// catalogue (#i18n), never from a script.
(function () {
  "use strict";
  var body = document.body;
  var T = JSON.parse((document.getElementById("i18n") || {}).textContent || "{}");
  var handlers = {};

  function fmt(key, vals) {
    var s = T[key] || key;
    Object.keys(vals || {}).forEach(function (k) { s = s.split("{" + k + "}").join(String(vals[k])); });
    return s;
  }

  function request(method, url, data) {
    var opts = {
      method: method,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": body.dataset.csrf || "", "Accept": "application/json" }
    };
    if (data !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(data);
    }
    return fetch(url, opts).then(function (r) {
      if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
      return r.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
        return { ok: r.ok, status: r.status, data: json };
      });
    });
  }

  function problem(res) {
    var d = res.data && res.data.detail;
    if (typeof d === "string") { return d; }
    return fmt("js.failed", { status: res.status });
  }

  function tick(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time.ago").forEach(function (el) {
      var s = Math.max(0, Math.floor((now - Date.parse(el.dataset.ts)) / 1000));
      el.textContent = s < 60 ? fmt("js.ago_s", { n: s })
        : s < 3600 ? fmt("js.ago_m", { n: Math.floor(s / 60) })
        : s < 86400 ? fmt("js.ago_h", { n: Math.floor(s / 3600) })
        : fmt("js.ago_d", { n: Math.floor(s / 86400) });
    });
  }

  function localTimes(root) {
    (root || document).querySelectorAll("time.local").forEach(function (el) {
      var d = new Date(el.dataset.ts);
      if (!isNaN(d.getTime())) {
        el.textContent = d.toLocaleString(document.documentElement.lang, { hour12: false });
      }
    });
  }

  function on(type, fn) { (handlers[type] = handlers[type] || []).push(fn); }

  var liveState = document.getElementById("live-state");
  function connect() {
    if (!body.dataset.role || body.dataset.live !== "on") { return; }
    var es = new EventSource("/stream");
    es.onopen = function () { if (liveState) { liveState.hidden = true; } body.dataset.connected = "yes"; };
    es.onerror = function () { if (liveState) { liveState.hidden = false; } body.dataset.connected = "no"; };
    es.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "reload") { es.close(); location.reload(); return; }
      (handlers[msg.type] || []).forEach(function (fn) { fn(msg); });
      tick(); localTimes(document);
    };
  }

  window.CG = { T: T, fmt: fmt, request: request, problem: problem, on: on, tick: tick, localTimes: localTimes };

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("login-form");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var err = document.getElementById("login-error");
        request("POST", "/api/auth/login", {
          user: form.elements.user.value, password: form.elements.password.value
        }).then(function (res) {
          if (res.ok) { location.href = form.dataset.next || "/"; return; }
          err.hidden = false;
          err.textContent = res.status === 429 ? fmt("js.login_locked") : fmt("js.login_wrong");
        });
      });
    }
    var out = document.getElementById("logout");
    if (out) {
      out.addEventListener("click", function () {
        request("POST", "/api/auth/logout").then(function () { location.href = "/login"; });
      });
    }
    tick(); localTimes(document);
    setInterval(tick, 1000);
    setTimeout(connect, 0);
  });
})();
