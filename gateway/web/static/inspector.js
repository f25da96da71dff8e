// Inspector console: the report is server-rendered; this script only prints it and submits the
// form when the month or campus changes. Every word shown comes from the page's catalogue.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var btn = document.getElementById("print");
    if (btn) {
      btn.addEventListener("click", function () {
        document.body.dataset.printed = "yes";
        window.print();
      });
    }
    var form = document.getElementById("report-form");
    ["month", "campus"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el && form) { el.addEventListener("change", function () { if (el.value || id === "campus") { form.submit(); } }); }
    });
  });
})();
