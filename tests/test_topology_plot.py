"""The topology drawing (planner.report.topology_plot) and ``planner topology --out``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from matplotlib.image import imread

from planner.errors import SpecError
from planner.hwmodels.topology import build_topology
from planner.presets import load_cluster, preset_names
from planner.report.topology_plot import draw_topology, shown_nodes

CLUSTERS = preset_names("cluster")


def test_every_preset_is_covered():
    for name in ("deepseek-v3-h800", "fire-flyer-2", "dgx-a100", "gb200-nvl72"):
        assert name in CLUSTERS


@pytest.mark.parametrize("name", CLUSTERS)
def test_drawing_of_every_preset_opens(name, tmp_path):
    cluster = load_cluster(name, 32 if 32 % load_cluster(name).node.gpus_per_node == 0 else 16)
    path = draw_topology(build_topology(cluster), tmp_path / f"{name}.png")
    assert path.stat().st_size > 10_000
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 300 and image.shape[1] > 600


def test_svg_and_pdf_by_suffix(tmp_path):
    topo = build_topology(load_cluster("fire-flyer-2", 16))
    svg = draw_topology(topo, tmp_path / "t.svg", max_nodes=2)
    assert svg.read_text().lstrip().startswith("<?xml") and "fire-flyer-2" in svg.read_text()
    pdf = draw_topology(topo, tmp_path / "t.pdf", max_nodes=1)
    assert pdf.read_bytes().startswith(b"%PDF")


def test_multi_zone_shows_nodes_of_each_zone_and_the_cross_zone_link(tmp_path):
    """Fire-Flyer 2 at 700 nodes spans both zones (625 nodes per zone): the drawing takes
    the first nodes of each zone, so the zone-to-zone spine link is drawn."""
    topo = build_topology(load_cluster("fire-flyer-2", 8 * 700))
    assert shown_nodes(topo, 4) == [0, 1, 625, 626]
    assert shown_nodes(topo, 3) == [0, 1, 625]
    assert shown_nodes(topo, 1) == [0]
    svg = draw_topology(topo, tmp_path / "zones.svg").read_text()
    assert "cross-zone" in svg and "zone 1" in svg
    assert "showing 4 of 700 nodes" in svg


def test_small_cluster_draws_all_its_nodes():
    topo = build_topology(load_cluster("dgx-h100", 16))
    assert shown_nodes(topo, 4) == [0, 1]


def test_bad_path_and_max_nodes(tmp_path):
    topo = build_topology(load_cluster("dgx-h100", 16))
    with pytest.raises(SpecError, match="must end in"):
        draw_topology(topo, tmp_path / "t.jpg")
    with pytest.raises(SpecError, match="max_nodes"):
        draw_topology(topo, tmp_path / "t.png", max_nodes=0)


def planner(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_cli_writes_the_drawing_and_still_summarises(tmp_path):
    out = tmp_path / "topo.png"
    result = planner("topology", "--cluster", "deepseek-v3-h800", "--gpus", "32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "8 leaf" in result.stdout and "nvlink" in result.stdout
    assert str(out) in result.stdout.replace("\n", "")
    assert imread(out).shape[2] in (3, 4)


def test_cli_bad_suffix_is_exit_2_naming_the_option(tmp_path):
    result = planner("topology", "--cluster", "dgx-h100", "--gpus", "16", "--out", str(tmp_path / "topo.jpg"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and ".png" in lines[0]
    assert not (tmp_path / "topo.jpg").exists()
