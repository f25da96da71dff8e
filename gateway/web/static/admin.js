// Admin console: users, tokens and the audit log are server-rendered; each change goes to the
// REST API (/api/users, /api/tokens) with the session's CSRF token (CG.request), then the page
// reloads to show the stored truth. Every word shown comes from the page's catalogue (CG.T).
(function () {
  "use strict";

  function campusList(text) {
    return text.split(/[\s,，]+/).map(function (s) { return s.trim(); }).filter(Boolean);
  }

  function showError(scope, text) {
    var p = scope.querySelector(".form-error");
    if (p) { p.hidden = false; p.textContent = text; }
  }

  function done(scope) {
    return function (res) {
      if (res.ok) { location.reload(); return; }
      showError(scope, CG.problem(res));
      scope.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
    };
  }

  function patchUser(row, body) {
    row.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    return CG.request("PATCH", "/api/users/" + encodeURIComponent(row.dataset.user), body).then(done(row));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var users = document.getElementById("users");
    if (users) {
      users.addEventListener("click", function (ev) {
        var btn = ev.target.closest("button");
        var row = btn && btn.closest("tr.user");
        if (!row) { return; }
        if (btn.classList.contains("u-save")) {
          patchUser(row, {
            role: row.querySelector(".u-role").value,
            campuses: campusList(row.querySelector(".u-campuses").value)
          });
        } else if (btn.classList.contains("u-disable")) {
          patchUser(row, { disabled: true });
        } else if (btn.classList.contains("u-enable")) {
          patchUser(row, { disabled: false });
        } else if (btn.classList.contains("u-unlock")) {
          btn.disabled = true;
          CG.request("POST", "/api/users/" + encodeURIComponent(row.dataset.user) + "/unlock").then(done(row));
        } else if (btn.classList.contains("u-reset")) {
          var pw = row.querySelector(".u-password").value;
          if (!pw) { showError(row, CG.T["admin.js.password_needed"]); return; }
          patchUser(row, { password: pw });
        }
      });
    }
    var form = document.getElementById("user-form");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        CG.request("POST", "/api/users", {
          name: form.elements.name.value.trim(),
          display: form.elements.display.value.trim(),
          role: form.elements.role.value,
          campuses: campusList(form.elements.campuses.value),
          password: form.elements.password.value
        }).then(done(form));
      });
    }
    var tokens = document.getElementById("tokens");
    if (tokens) {
      tokens.addEventListener("click", function (ev) {
        var btn = ev.target.closest("button.t-revoke");
        if (!btn) { return; }
        btn.disabled = true;
        CG.request("DELETE", "/api/tokens/" + encodeURIComponent(btn.dataset.id)).then(function (res) {
          if (res.ok) { location.reload(); return; }
          btn.disabled = false;
          btn.textContent = CG.problem(res);
        });
      });
    }
  });
})();
