// Draws every notebook figure of a tutorial page from its plotly JSON, with the
// plotly.js copied into the site (assets/plotly.min.js): nothing is fetched.
(function () {
  function draw() {
    document.querySelectorAll("div.nb-figure").forEach(function (div) {
      if (div.dataset.drawn) return;
      var data = document.getElementById(div.id + "-data");
      if (!data || !window.Plotly) return;
      var figure = JSON.parse(data.textContent);
      var config = Object.assign({responsive: true, displaylogo: false}, figure.config || {});
      window.Plotly.newPlot(div, figure.data || [], figure.layout || {}, config).then(function () {
        div.dataset.drawn = "1";
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
