"""`flowsteer demo --fast` end to end, the HTML report it writes, and the report's rendering in Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import cli, run_cli
from test_cli import assert_user_error

SECTIONS = ("Samples", "Training curves", "Reward and diversity across alpha", "Quality against the number of steps",
            "Final metrics")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_cli("demo", "--fast", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _image_sources(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src='([^']+)'", page)


def test_demo_writes_every_run_summary_and_report(demo):
    out, proc = demo
    index = out / "report" / "index.html"
    assert f"Open the report: {index.resolve()}" in proc.stdout
    for run in ("pretrain-digits", "pretrain-digits0-4", "align-even/alpha-0", "align-even/alpha-0.15", "adapt-gft",
                "adapt-sft"):
        assert (out / run / "model.safetensors").is_file(), run
        assert "per_nfe" in json.loads((out / run / "evaluation.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["align-alpha0"]["p_even"] <= 1 and summary["align-default"]["class_entropy"] > 0
    sweep = json.loads((out / "align-even" / "sweep.json").read_text())
    assert [p["alpha"] for p in sweep["points"]] == [0.0, 0.15]


def test_report_has_every_section_and_only_local_valid_images(demo):
    out, _ = demo
    page = (out / "report" / "index.html").read_text()
    for section in SECTIONS:
        assert re.search(rf"<h2[^>]*>{re.escape(section)}</h2>", page), section
    sources = _image_sources(page)
    assert len(sources) >= 10
    for src in sources:
        assert not re.match(r"^[a-z]+:", src) and not src.startswith("/"), src  # relative, no scheme
        with Image.open(out / "report" / src) as im:
            im.verify()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert "<script" not in page
    # the samples figure of the alignment puts the base, alpha = 0 and the default alpha side by side
    assert re.search(r"base: pretrain-digits; [^']*alpha-0[^']*alpha=0; [^']*alpha-0.15", page)


def test_second_demo_reuses_finished_runs(demo):
    out, _ = demo
    proc = cli("demo", "--fast", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("reusing") == 6 and "pretraining" not in proc.stdout


PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute('src'); });
  var requests = performance.getEntriesByType('resource').map(function (e) { return e.name; })
                   .filter(function (u) { return u.indexOf('file:') !== 0; });
  var width = window.innerWidth;
  var overflowing = Array.from(document.body.querySelectorAll('*'))
      .filter(function (e) { return !e.closest('.scroll') && e.getBoundingClientRect().right > width + 1; })
      .map(function (e) { return e.tagName + (e.id ? '#' + e.id : ''); });
  var noAlt = imgs.filter(function (i) { return !(i.getAttribute('alt') || '').trim(); })
                  .map(function (i) { return i.getAttribute('src'); });
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, requests: requests, width: width,
                                    scrollWidth: document.documentElement.scrollWidth, overflowing: overflowing,
                                    noAlt: noAlt});
  document.body.appendChild(pre);
});</script>"""


def _render(page: Path, width: int = 1200) -> dict:
    """Load ``page`` in headless Chromium ``width`` pixels wide with a probe script; report images, broken ones,
    non-file requests, images without alt text and elements reaching past the window's right edge (outside the
    boxes that scroll by design)."""
    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                              f"--window-size={width},900", "--hide-scrollbars",
                              "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        probe.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom)
    assert match, dom[-500:]
    return json.loads(match.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
def test_report_renders_in_headless_chromium_without_broken_images_or_network(demo):
    out, _ = demo
    page = out / "report" / "index.html"
    result = _render(page)
    assert result["images"] == len(_image_sources(page.read_text()))
    assert result["broken"] == [] and result["requests"] == []
    # the probe can fail: a remote image is both broken (no network here) and a request
    bad = out / "report" / "bad.html"
    bad.write_text(page.read_text().replace("</body>", "<img src='http://example.invalid/x.png'></body>"))
    result = _render(bad)
    assert result["broken"] == ["http://example.invalid/x.png"] and result["requests"] == ["http://example.invalid/x.png"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium package is not installed")
@pytest.mark.parametrize("width", [1000, 1400])
def test_report_fits_the_window_and_every_image_has_alt_text(demo, width):
    out, _ = demo
    page = out / "report" / "index.html"
    result = _render(page, width)
    assert result["width"] == width
    assert result["scrollWidth"] <= width and result["overflowing"] == [], result
    assert result["images"] >= 10 and result["noAlt"] == [] and result["broken"] == []
    # the probe can fail: a table wider than the window outside its scroll box overflows the page
    wide = out / "report" / "wide.html"
    wide.write_text(page.read_text().replace("</body>", "<table><tr>" + "<td>0123456789</td>" * 200 + "</tr></table></body>"))
    assert _render(wide, width)["overflowing"]


def test_opening_summary_names_p_even_and_entropy_of_each_align_run_from_summary_json(demo):
    out, _ = demo
    page = (out / "report" / "index.html").read_text()
    opening = page[page.index("<section id='summary'>"):page.index("</section>")]
    summary = json.loads((out / "summary.json").read_text())
    for run, folder in (("align-alpha0", "alpha-0"), ("align-default", "alpha-0.15")):
        item = next(li for li in opening.split("<li>") if li.startswith(f"align-even/{folder} "))
        assert f"P(even) {summary[run]['p_even']:.3f}" in item, item
        assert f"class entropy {summary[run]['class_entropy']:.3f} nats" in item, item
        assert "href='#table-evaluate'" in item and "href='#samples-" in item
    # --fast says that its figures mean nothing
    assert "far too short to show the collapse" in opening
    # class histograms are bar charts beside the samples, not text lines
    assert "class histogram -" not in page and len(re.findall(r"src='img/classes-\d+\.png'", page)) >= 1


def test_report_bad_inputs(tmp_path, demo):
    assert_user_error(cli("report", str(tmp_path), "--out", str(tmp_path / "r")), "neither a run folder")
    assert_user_error(cli("report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")), "missing")
    assert not (tmp_path / "r").exists()
