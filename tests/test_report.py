"""planner report: the HTML parses and embeds every figure, report.md links every PNG,
trace.json holds one event per F/B/W block of the recommended plan's timeline."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import planner
from planner.cli.report import _PLAN_FIELDS  # noqa: F401  (the saved-result schema is importable)

NARROW = ("--tp", "1", "--pp", "16", "--ep", "64", "--zero", "1", "--schedule", "dualpipe", "--recompute",
          "selective", "--micro-batch", "1", "--precision", "fp8", "--global-batch", "15360")


def planner_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=300)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.sources.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:") and tag in ("img", "script", "link", "iframe"):
                self.external.append(a[key])


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    result = planner_cli("report", "-m", "deepseek-v3", "-c", "deepseek-v3-h800", *NARROW, "--top-k", "3",
                         "--tokens", "14.8e12", "--out", str(out), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert data["cost"]["tokens"] == 14.8e12 and data["cost"]["gpu_hours"] > 0
    (out / "summary.json").write_text(result.stdout)
    return out


def test_html_is_self_contained_and_embeds_every_png(report_dir):
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert set(pngs) == {"breakdown.png", "pipeline.png", "memory.png", "scaling.png", "heatmap.png"}
    text = (report_dir / "index.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    parser.close()
    embedded = [s for s in parser.sources if s.startswith("data:image/png;base64,")]
    assert len(embedded) == len(parser.sources) == len(pngs)
    assert parser.external == []
    assert "http://" not in text and "https://" not in text
    for heading in ("Recommendation", "Top plans", "Why #1 and not #2", "Cost", "Assumptions", "Not modelled"):
        assert heading in text
    assert "h800-sxm-80gb" in text and "sustained_kernel_fraction" in text


def test_markdown_links_every_png(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    for png in report_dir.glob("*.png"):
        assert f"]({png.name})" in md
    assert "| # | plan |" in md and "GPU-hours" in md
    # How far to trust it: DeepSeek-V3's two published H800 runs (planner.validation.accuracy).
    assert "Validated against 2 published runs (h800-sxm-80gb): median |error|" in md


def test_trace_has_one_event_per_block(report_dir):
    trace = json.loads((report_dir / "trace.json").read_text(encoding="utf-8"))
    blocks = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    summary = json.loads((report_dir / "summary.json").read_text())
    m, c = planner.load_model("deepseek-v3"), planner.load_cluster("deepseek-v3-h800")
    best = planner.Plan(**summary["best"]["plan"])
    report = planner.simulate(m, c, best, planner.Workload(**summary["workload"]))
    events = report.timeline.events
    assert len(blocks) == len(events)  # exactly one trace event per simulated block
    assert sorted((e["tid"], e["cat"], e["args"]["microbatch"], e["args"]["chunk"]) for e in blocks) == sorted(
        (e.rank, e.kind.value, e.microbatch, e.chunk) for e in events)
    assert {e["cat"] for e in blocks} <= {"F", "B", "W", "BW", "FB"}
    assert {e["args"]["direction"] for e in blocks} == {0, 1}  # DualPipe's two directions


def test_report_from_saved_plan_result(tmp_path):
    saved = tmp_path / "plan.json"
    result = planner_cli("plan", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8", "--global-batch", "16",
                         "--pp", "2", "--top-k", "2", "--format", "json", "--out", str(saved))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "rep"
    result = planner_cli("report", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8", "--from", str(saved),
                         "--no-what-if", "--out", str(out), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["figures"]) == {"breakdown", "pipeline", "memory"}
    assert data["workload"]["global_batch_size"] == 16
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3


def test_report_bad_saved_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"plans\": []}")
    result = planner_cli("report", "-m", "tiny-moe-mla", "-c", "dgx-h100", "--gpus", "8", "--from", str(bad),
                         "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--from" in result.stderr
