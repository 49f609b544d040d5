/* Loaded before MathJax, require.js and the widget manager: makes them work from this site.
   1. The Jupyter widget manager (ipywidgets 8) still typesets labels with MathJax 2's
      MathJax.Hub.Queue; this page has MathJax 3. Every MathJax 3 object gets a Hub.Queue that
      calls MathJax 3's typesetPromise, whenever the global is (re)assigned.
   2. The widget manager finds its fonts next to its own module URL, which require.js would
      make "/@jupyter-widgets/html-manager/dist/": point that at _static/vendor/html-manager.
   3. A figure kept wide enough to read scrolls sideways inside its cell output: such an output
      can take keyboard focus (arrow keys scroll it) and is named for screen readers. */
(function () {
  function queue(cmd) {
    var el = cmd && cmd[2], M = window.MathJax;
    if (M && M.typesetPromise) { M.typesetPromise(el ? [el] : undefined).catch(function () {}); }
  }
  function shim(m) {
    if (m && typeof m === "object" && m.version && !m.Hub) { m.Hub = { Queue: queue }; }
    return m;
  }
  var current = shim(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (v) { current = shim(v); }
  });
  document.addEventListener("DOMContentLoaded", function () { shim(current); });

  var me = document.currentScript && document.currentScript.src;
  if (me && typeof window.require === "undefined") {
    var vendor = me.replace(/dlmi-offline\.js.*$/, "vendor/html-manager");
    window.require = { paths: { "@jupyter-widgets/html-manager/dist": vendor } };
  }

  function scrollable() {
    document.querySelectorAll(".cell_output").forEach(function (out) {
      if (out.scrollWidth > out.clientWidth + 1 && !out.hasAttribute("tabindex")) {
        out.setAttribute("tabindex", "0");
        out.setAttribute("role", "region");
        out.setAttribute("aria-label", "Wide figure: scroll sideways");
      }
    });
  }
  window.addEventListener("load", scrollable);
  window.addEventListener("resize", scrollable);
})();
