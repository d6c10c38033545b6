// The status page's refresh: fetch the same URL as HTML and swap the report in place, so the
// page keeps its scroll position and the refresh box its state. No inline script or style:
// the page works under a Content-Security-Policy of default-src 'self'.
(function () {
  "use strict";
  var every = Math.max(1, Number(document.body.getAttribute("data-refresh")) || 5) * 1000;
  var auto = document.getElementById("auto");
  var connection = document.getElementById("connection");

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("report");
    var current = document.getElementById("report");
    if (!fresh || !current) {
      throw new Error("the answer holds no report");
    }
    current.replaceWith(document.importNode(fresh, true));
    document.title = fresh.getAttribute("data-title") || document.title;
    var icon = document.getElementById("icon");
    if (icon && fresh.getAttribute("data-icon")) {
      icon.setAttribute("href", fresh.getAttribute("data-icon"));
    }
  }

  function refresh() {
    if (document.hidden || (auto && !auto.checked)) {
      setTimeout(refresh, every);
      return;
    }
    fetch(window.location.href, {
      headers: { Accept: "text/html" },
      cache: "no-store",
      credentials: "same-origin"
    })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        swap(html);
        connection.textContent = "";
        document.body.classList.remove("stale");
      })
      .catch(function (error) {
        // The service is unreachable (a restart, a network cut): keep the last report, dimmed.
        if (!connection.textContent) {
          connection.textContent = "Not reachable since " + new Date().toLocaleTimeString() +
            ": " + error.message;
        }
        document.body.classList.add("stale");
      })
      .then(function () { setTimeout(refresh, every); });
  }

  setTimeout(refresh, every);
})();
