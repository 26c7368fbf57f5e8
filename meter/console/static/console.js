// Progressive enhancement only: every page works without this script.
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("[data-confirm],[data-copy]") : null;
  if (!target) return;
  if (target.hasAttribute("data-confirm") && !window.confirm(target.getAttribute("data-confirm"))) {
    event.preventDefault();
    return;
  }
  const id = target.getAttribute("data-copy");
  if (id) {
    const field = document.getElementById(id);
    if (!field) return;
    field.select();
    const done = () => { target.textContent = "Copied"; };
    if (navigator.clipboard) {
      navigator.clipboard.writeText(field.value).then(done, () => document.execCommand("copy") && done());
    } else if (document.execCommand("copy")) {
      done();
    }
  }
});

// A chart wider than a phone starts scrolled to its latest days.
for (const chart of document.querySelectorAll(".chart-scroll")) {
  chart.scrollLeft = chart.scrollWidth;
}
