// Dispatch console: the alarm queue, live. The server renders every card and panel (HTML
// escaped by Jinja); this script only swaps them in, in the order the server's sort key gives,
// drives the alarm sound while a critical alarm waits to be received, and posts the
// dispatcher's steps with the session's CSRF token (CG.request). Every word shown comes from
// the page's catalogue (CG.T), never from this file.
(function () {
  "use strict";
  var body = document.body;
  body.dataset.live = "on"; // web.js connects to /stream
  var root = document.getElementById("dispatch");
  if (!root) { return; }
  var canDispatch = root.dataset.canDispatch === "yes";
  var selected = null;
  var detailTimer = null;
  var CLOSED_MAX = 30;
  var EVIDENCE_WATCH_MS = 120000;

  function fromHtml(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim(); // server-rendered, escaped by Jinja
    return tpl.content.firstElementChild;
  }

  function refresh(el) { CG.tick(el); CG.localTimes(el); }

  // --- the two lists ------------------------------------------------------------------------
  function upsert(el) {
    var old = document.getElementById(el.id);
    if (old && parseInt(old.dataset.version, 10) > parseInt(el.dataset.version, 10)) { return false; }
    if (old) { old.remove(); }
    var list = document.getElementById(el.dataset.list === "open" ? "open-list" : "closed-list");
    // The list is sorted by key: find the place by halving (hundreds of cards in a burst).
    var items = list.children, lo = 0, hi = items.length, key = el.dataset.key;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (items[mid].dataset.key > key) { hi = mid; } else { lo = mid + 1; }
    }
    list.insertBefore(el, lo < items.length ? items[lo] : null);
    if (el.dataset.id === selected) { el.classList.add("selected"); }
    var closed = document.getElementById("closed-list");
    while (closed.children.length > CLOSED_MAX) { closed.lastElementChild.remove(); }
    refresh(el);
    return true;
  }

  function counters() {
    var open = document.querySelectorAll("#open-list > .alarm-card").length;
    var alerts = document.querySelectorAll("#open-list > .alarm-card[data-alert=yes]").length;
    document.getElementById("count-open").textContent = String(open);
    document.getElementById("count-alert").textContent = String(alerts);
    document.getElementById("alerts").dataset.n = String(alerts);
    document.getElementById("open-empty").hidden = open > 0;
    body.dataset.alerts = String(alerts);
    updateSound(alerts > 0);
  }

  // --- sound: on while a critical alarm waits to be received (dispatchers only) ------------
  var siren = document.getElementById("siren");
  var indicator = document.getElementById("sound-indicator");
  function updateSound(on) {
    body.dataset.sound = on && canDispatch ? "on" : "off";
    if (!siren || !indicator) { return; }
    indicator.dataset.sound = on ? "on" : "off";
    if (!on) { delete indicator.dataset.blocked; }
    if (indicator.dataset.blocked !== "yes") {
      indicator.textContent = CG.T[on ? "dispatch.js.sound_on" : "dispatch.js.sound_off"];
    }
    if (on && siren.paused) {
      var p = siren.play();
      if (p && p.catch) {
        p.catch(function () {
          indicator.dataset.blocked = "yes";
          indicator.textContent = CG.T["dispatch.js.sound_blocked"];
        });
      }
    } else if (!on && !siren.paused) {
      siren.pause();
      siren.currentTime = 0;
    }
  }
  if (indicator) {
    indicator.addEventListener("click", function () {
      delete indicator.dataset.blocked;
      counters();
    });
  }

  // --- the panel of one alarm ---------------------------------------------------------------
  var detail = document.getElementById("detail");
  function showDetail(id) {
    return fetch("/dispatch/alarms/" + encodeURIComponent(id), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { location.reload(); return null; }
        return r.text().then(function (text) { return { ok: r.ok, status: r.status, text: text }; });
      })
      .then(function (res) {
        if (!res || id !== selected) { return; }
        if (!res.ok) {
          var p = document.createElement("p");
          p.className = "error";
          p.textContent = CG.fmt("dispatch.js.load_failed", { status: res.status });
          detail.replaceChildren(p);
          return;
        }
        var el = fromHtml(res.text);
        var note = detail.querySelector("input[name=note]");
        var twin = el.querySelector("input[name=note]");
        var said = detail.querySelector(".form-error:not([hidden])");
        if (note && twin && note.closest("[data-id]") && note.closest("[data-id]").dataset.id === id) {
          twin.value = note.value;
          if (said) { showError(el, said.textContent); }
        }
        detail.replaceChildren(el);
        refresh(el);
        watchEvidence(el);
      });
  }

  function watchEvidence(el) {
    // Snapshots come after the alarm (the edge takes them, with retries): look again for a while.
    if (detailTimer) { clearTimeout(detailTimer); detailTimer = null; }
    var age = Date.now() - Date.parse(el.dataset.received || "");
    if (age < EVIDENCE_WATCH_MS) {
      detailTimer = setTimeout(function () { if (selected) { showDetail(selected); } }, 5000);
    }
  }

  function select(id) {
    selected = id;
    document.querySelectorAll(".alarm-card.selected").forEach(function (c) { c.classList.remove("selected"); });
    var card = document.getElementById("card-" + id);
    if (card) { card.classList.add("selected"); }
    body.dataset.selected = id;
    return showDetail(id);
  }

  document.getElementById("queue").addEventListener("click", function (ev) {
    var card = ev.target.closest(".alarm-card");
    if (card) { select(card.dataset.id); }
  });
  document.getElementById("queue").addEventListener("keydown", function (ev) {
    var card = ev.target.closest(".alarm-card");
    if (card && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); select(card.dataset.id); }
  });

  function showError(scope, text) {
    var p = scope.querySelector(".form-error");
    if (p) { p.hidden = false; p.textContent = text; }
  }

  detail.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button.act");
    if (!btn || !canDispatch) { return; }
    var form = btn.closest("form.actions");
    var id = form.dataset.id;
    var note = form.elements.note ? form.elements.note.value : "";
    form.querySelectorAll("button.act").forEach(function (b) { b.disabled = true; });
    CG.request("POST", "/api/alarms/" + encodeURIComponent(id) + "/dispatch", { state: btn.dataset.state, note: note })
      .then(function (res) {
        if (!res.ok) {
          showDetail(id).then(function () { showError(detail, CG.problem(res)); });
          return;
        }
        if (form.elements.note) { form.elements.note.value = ""; }
        showDetail(id);
      });
  });

  // --- live frames --------------------------------------------------------------------------
  CG.on("dispatch.alarm", function (m) {
    var el = fromHtml(m.html);
    if (!upsert(el)) { return; }
    counters();
    if (m.id === selected) { showDetail(m.id); }
    else if (!selected && m.list === "open") { select(m.id); }
    else if (m.alert && selected) {
      var cur = document.getElementById("card-" + selected);
      if (!cur || cur.dataset.alert !== "yes") { select(m.id); }
    }
  });

  // After the stream (re)connects, fetch both lists: nothing missed while it was away.
  function resync() {
    fetch("/dispatch/queue", { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (text) {
      if (!text) { return; }
      var box = fromHtml(text);
      box.querySelectorAll(".alarm-card").forEach(function (c) { upsert(c); });
      counters();
    });
  }
  new MutationObserver(function () {
    if (body.dataset.connected === "yes") { resync(); }
  }).observe(body, { attributes: true, attributeFilter: ["data-connected"] });

  document.addEventListener("DOMContentLoaded", function () {
    counters();
    var first = document.querySelector("#open-list > .alarm-card");
    if (first) { select(first.dataset.id); }
  });
})();
