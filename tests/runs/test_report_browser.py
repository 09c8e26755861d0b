"""Reports open in a real browser: headless Chromium renders every figure of the demo's report.html, of a sweep's
and of a discovery's, and of a stand-alone figure file, with no console error or page error.

Set-up: Debian's ``chromium`` is installed with apt when it is missing (as root); where that is impossible the
tests skip and say why.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# injected first into <head>: records page errors (uncaught exceptions, failed script or style loads) and
# console.error/console.warn calls, then after load writes what it saw, and how many plotly figures have drawn
# their SVG, into a <pre id="__probe"> that --dump-dom prints
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('page error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || '?'));
}, true);
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__errors.push('console.' + level + ': ' + Array.from(arguments).join(' '));
    original.apply(console, arguments);
  };
});
window.addEventListener('load', function () { setTimeout(function () {
  var divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  var p = document.createElement('pre');
  p.id = '__probe';
  p.textContent = JSON.stringify({errors: window.__errors, figures: divs.length,
    rendered: divs.filter(function (d) { return d._fullLayout && d.querySelector('svg.main-svg'); }).length,
    traces: divs.map(function (d) { return (d.data || []).length; })});
  document.body.appendChild(p);
}, 500); });
</script>"""


def render(chromium, page: Path, tmp_path: Path) -> dict:
    """Open ``page`` (with the probe injected) in headless Chromium; the probe's findings plus console lines."""
    probed = page.with_name(f"__probe_{page.name}")
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        out = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=30000",
             "--enable-logging=stderr", "--v=0", "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        probed.unlink()
    found = re.search(r'<pre id="__probe">(.*?)</pre>', out.stdout, re.DOTALL)
    assert found, f"the page never finished loading; chromium said: {out.stderr[-3000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    result["console"] = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return result


def check(result: dict, figures: int) -> None:
    assert result["errors"] == [] and result["console"] == [], result
    assert result["figures"] == figures and result["rendered"] == figures, result
    assert all(n > 0 for n in result["traces"]), result


@pytest.fixture(scope="module")
def sweep_and_discovery(tmp_path_factory):
    from mechpatch.cli import main

    root = tmp_path_factory.mktemp("reports")
    assert main(["sweep", str(REPO / "configs" / "sweep_induction.yaml"), "--out-dir", str(root / "sweep"), "-q"]) == 0
    assert main(["discover", str(REPO / "configs" / "discover_tracr_reverse.yaml"), "--out-dir",
                 str(root / "discover"), "-q"]) == 0
    return root


def test_sweep_report_renders(chromium, sweep_and_discovery, tmp_path):
    check(render(chromium, sweep_and_discovery / "sweep" / "report.html", tmp_path), figures=5)


def test_discovery_report_renders(chromium, sweep_and_discovery, tmp_path):
    check(render(chromium, sweep_and_discovery / "discover" / "report.html", tmp_path), figures=2)


def test_figure_file_loads_plotly_from_beside_it(chromium, sweep_and_discovery, tmp_path):
    check(render(chromium, sweep_and_discovery / "sweep" / "figure_head.html", tmp_path), figures=1)


@pytest.mark.slow
def test_demo_report_renders(chromium, tmp_path):
    """`make demo`'s code path (experiments/demo.py) on the bundled SmolLM2, fewer prompts and edges."""
    import importlib.util

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config.update(n_prompts=3, top_n=40, out_dir=str(tmp_path / "demo"))
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "experiments" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main([str(path)]) == 0
    report = tmp_path / "demo" / "report.html"
    text = report.read_text()
    assert "circuit logit diff" in text and "largest head effects" in text and "weights sha256" in text
    assert "heads with a large effect and little attention to IO" in text
    check(render(chromium, report, tmp_path), figures=4)  # resid_pre and head heatmaps, attention/effect, circuit
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["figures"] == [
        "figure_resid_pre.html", "figure_head.html", "figure_attention_effect.html", "figure_graph.html"]
