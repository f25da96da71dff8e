// Guard console: live updates over one SSE stream per tab. The server renders every fragment
// (HTML escaped by Jinja); this script only swaps them in, ticks the clocks, drives the alarm
// sound and posts the guard's actions with the session's CSRF token. Every word shown comes
// from the page's catalogue (#i18n), never from this file.
(function () {
  "use strict";
  var body = document.body;
  var T = JSON.parse(document.getElementById("i18n").textContent || "{}");
  var csrf = body.dataset.csrf;
  var pending = {}; // "device/index" -> {command_id, token, until}

  function fmt(key, vals) {
    var s = T[key] || key;
    Object.keys(vals || {}).forEach(function (k) { s = s.split("{" + k + "}").join(String(vals[k])); });
    return s;
  }

  function tick(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time.ago").forEach(function (el) {
      var s = Math.max(0, Math.floor((now - Date.parse(el.dataset.ts)) / 1000));
      el.textContent = s < 60 ? fmt("js.ago_s", { n: s })
        : s < 3600 ? fmt("js.ago_m", { n: Math.floor(s / 60) })
        : fmt("js.ago_h", { n: Math.floor(s / 3600) });
    });
  }

  function localTimes(root) {
    root.querySelectorAll("time.local").forEach(function (el) {
      var d = new Date(el.dataset.ts);
      if (!isNaN(d.getTime())) { el.textContent = d.toLocaleTimeString(document.documentElement.lang, { hour12: false }); }
    });
  }

  // --- sound: on while any alarm is unacknowledged (the server counts them) -----------------
  var siren = document.getElementById("siren");
  var indicator = document.getElementById("sound-indicator");
  function updateSound() {
    var b = document.querySelector("#banners .banners");
    if (!b || !indicator) { return; }
    var on = parseInt(b.dataset.unacked || "0", 10) > 0;
    body.dataset.sound = on ? "on" : "off";
    indicator.dataset.sound = on ? "on" : "off";
    indicator.textContent = on ? T["js.sound_on"] : T["js.sound_off"];
    body.dataset.uplink = b.dataset.uplink;
    body.dataset.drill = b.dataset.drill;
    if (on) {
      var p = siren.play();
      if (p && p.catch) {
        p.catch(function () { indicator.dataset.blocked = "yes"; indicator.textContent = T["js.sound_blocked"]; });
      }
    } else {
      siren.pause();
      siren.currentTime = 0;
    }
  }
  if (indicator) {
    indicator.addEventListener("click", function () { delete indicator.dataset.blocked; updateSound(); });
  }

  // --- swapping server-rendered fragments in, keeping what the guard is typing -------------
  function keepInputs(oldEl, newEl) {
    oldEl.querySelectorAll("input[name], select[name]").forEach(function (inp) {
      var form = inp.closest("form");
      var sel = (form ? "form." + form.className.split(" ")[0] + " " : "") + "[name=\"" + inp.name + "\"]";
      var twin = newEl.querySelector(sel);
      if (twin && inp.value && inp.type !== "password") { twin.value = inp.value; }
      if (twin && document.activeElement === inp) { setTimeout(function () { twin.focus(); }, 0); }
    });
  }
  function fromHtml(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }
  function refresh(root) { tick(root); localTimes(root); }

  function onAlarm(m) {
    var list = document.getElementById("alarms");
    var el = fromHtml(m.html);
    var old = document.getElementById("alarm-" + m.id);
    if (old) {
      keepInputs(old, el);
      var said = old.querySelector(".form-error:not([hidden])");
      if (said) { showError(el, said.textContent); } // e.g. "already acknowledged by ..."
      old.replaceWith(el);
    }
    else if (list) {
      list.insertBefore(el, list.firstChild);
      var empty = list.querySelector(".empty");
      if (empty) { empty.hidden = true; }
    } else { return; }
    refresh(el);
  }

  function onContainer(id, html) {
    var box = document.getElementById(id);
    if (!box) { return; }
    var tmp = document.createElement("div");
    tmp.innerHTML = html;
    keepInputs(box, tmp);
    box.innerHTML = tmp.innerHTML;
    refresh(box);
  }

  function onBanners(m) {
    onContainer("banners", m.html);
    var pill = document.getElementById("uplink-pill");
    if (pill) {
      pill.className = "pill " + (m.uplink ? "ok" : "bad");
      pill.textContent = m.uplink ? T["js.online"] || pill.textContent : T["js.offline"] || pill.textContent;
    }
    updateSound();
  }

  function onBollards(m) {
    // Keep the gate pictures already shown: a state change must not blank the camera view.
    // Keep a refusal just explained, too.
    var shown = {};
    var said = {};
    document.querySelectorAll("#bollards img.gate-cam").forEach(function (img) {
      var key = img.closest(".bollard").id + " " + img.dataset.src;
      if (img.complete && img.naturalWidth > 0) { shown[key] = img; }
    });
    document.querySelectorAll("#bollards .bollard .form-error:not([hidden])").forEach(function (p) {
      said[p.closest(".bollard").id] = p.textContent;
    });
    onContainer("bollards", m.html);
    document.querySelectorAll("#bollards img.gate-cam").forEach(function (img) {
      var old = shown[img.closest(".bollard").id + " " + img.dataset.src];
      if (old) { img.replaceWith(old); }
    });
    Object.keys(said).forEach(function (id) {
      var row = document.getElementById(id);
      if (row) { showError(row, said[id]); }
    });
    restorePending();
    wireCams();
  }

  // --- the live stream ------------------------------------------------------------------------
  function connect() {
    var es = new EventSource("/stream");
    var broken = false;
    es.onmessage = function (e) {
      var m = JSON.parse(e.data);
      if (m.type === "alarm") { onAlarm(m); }
      else if (m.type === "banners") { onBanners(m); }
      else if (m.type === "devices") { onContainer("devices", m.html); }
      else if (m.type === "bollards") { onBollards(m); }
    };
    es.onopen = function () {
      body.dataset.live = "yes";
      if (broken) { location.reload(); } // missed frames while away: take the whole page again
    };
    es.onerror = function () {
      broken = true;
      body.dataset.live = "no";
      fetch("/session", { credentials: "same-origin" }).then(function (r) {
        if (r.status === 401) { location.href = "/login?expired=1"; }
      }).catch(function () {});
    };
  }

  // --- actions --------------------------------------------------------------------------------
  function post(url, data) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
      body: new URLSearchParams(data || {})
    }).then(function (r) {
      if (r.status === 401) { location.href = "/login?expired=1"; return null; }
      return r.json().catch(function () { return {}; }).then(function (j) { return { status: r.status, body: j }; });
    });
  }
  function showError(scope, text) {
    var p = scope.querySelector(".form-error");
    if (p) { p.textContent = text; p.hidden = !text; }
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.classList.contains("ack-form") || form.classList.contains("close-form")) {
      e.preventDefault();
      var cardId = form.closest(".alarm").id;
      var btn = form.querySelector("button");
      btn.disabled = true;
      // The card may have been re-rendered meanwhile (the other guard won): find it again.
      var say = function (text) {
        var card = document.getElementById(cardId);
        if (card) { showError(card, text); }
      };
      post(form.dataset.action, new FormData(form)).then(function (r) {
        btn.disabled = false;
        if (!r) { return; }
        if (r.status >= 400) { say((r.body && r.body.error) || T["js.error"]); }
      }).catch(function () { btn.disabled = false; say(T["js.error"]); });
    } else if (form.id === "drill-start") {
      e.preventDefault();
      var box = form.closest(".drill-controls");
      post("/drill/start", new FormData(form)).then(function (r) {
        if (r && r.status >= 400) { showError(box, ((r.body && r.body.error) || T["js.error"]) + (r.body && r.body.detail ? ": " + r.body.detail : "")); }
        else { showError(box, ""); }
      });
    }
  });

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (!(t instanceof HTMLElement)) { return; }
    if (t.id === "logout") {
      post("/logout").then(function () { location.href = "/login"; });
    } else if (t.id === "drill-end") {
      post("/drill/end");
    } else if (t.classList.contains("bollard-btn")) {
      var row = t.closest(".bollard");
      var key = row.dataset.device + "/" + row.dataset.index;
      showError(row, "");
      post("/bollards/" + row.dataset.device + "/" + row.dataset.index, { action: t.dataset.action }).then(function (r) {
        if (!r) { return; }
        var b = r.body || {};
        if (b.outcome === "armed") {
          pending[key] = { command_id: b.command_id, token: b.token, until: Date.now() + 1000 * (b.confirm_in || 10) };
          restorePending();
        } else if (b.outcome === "refused") {
          showError(document.getElementById("bollard-" + row.dataset.device + "-" + row.dataset.index), b.message);
        }
      });
    } else if (t.classList.contains("btn-confirm") || t.classList.contains("btn-cancel")) {
      var brow = t.closest(".bollard");
      var bkey = brow.dataset.device + "/" + brow.dataset.index;
      var p = pending[bkey];
      delete pending[bkey];
      restorePending();
      if (!p || t.classList.contains("btn-cancel")) { return; }
      post("/bollards/" + brow.dataset.device + "/" + brow.dataset.index + "/confirm", { command_id: p.command_id, token: p.token }).then(function (r) {
        var b = (r && r.body) || {};
        if (b.outcome === "refused") {
          showError(document.getElementById("bollard-" + brow.dataset.device + "-" + brow.dataset.index), b.message);
        }
      });
    }
  });

  function restorePending() {
    document.querySelectorAll(".bollard").forEach(function (row) {
      var p = pending[row.dataset.device + "/" + row.dataset.index];
      var box = row.querySelector(".confirm");
      if (!box) { return; }
      if (p && p.until > Date.now()) {
        box.hidden = false;
        box.querySelector(".confirm-text").textContent = fmt("js.confirm_in", { n: Math.ceil((p.until - Date.now()) / 1000) });
      } else {
        box.hidden = true;
        if (p) { delete pending[row.dataset.device + "/" + row.dataset.index]; }
      }
    });
  }

  // The gate cameras: a fresh picture every few seconds while the bollard page is open.
  function wireCams() {
    document.querySelectorAll("img.gate-cam").forEach(function (img) {
      img.onerror = function () { img.classList.add("no-picture"); };
      img.onload = function () { img.classList.remove("no-picture"); };
    });
  }
  if (document.getElementById("bollards")) {
    wireCams();
    setInterval(function () {
      document.querySelectorAll("img.gate-cam").forEach(function (img) {
        img.src = img.dataset.src + "?t=" + Date.now();
      });
    }, 3000);
  }

  refresh(document);
  setInterval(function () { tick(document); restorePending(); }, 1000);
  if (csrf) {
    updateSound();
    connect();
  }
})();
