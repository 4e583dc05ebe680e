"""Topology graph and routes (planner.hwmodels.topology)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.errors import SpecError, UnsupportedError
from planner.hwmodels.topology import build_topology
from planner.presets import load_cluster, revalidate


def kinds(topo, src, dst):
    return [topo.graph.edges[e]["kind"] for e in topo.route(src, dst)]


@pytest.fixture(scope="module")
def dsv3():
    return build_topology(load_cluster("deepseek-v3-h800"))


@pytest.fixture(scope="module")
def fire_flyer():
    return build_topology(load_cluster("fire-flyer-2", 64))


def test_deepseek_v3_fabric_shape(dsv3):
    """ISCA'25 §5.1: 8 planes, 64-port switches (32 down per leaf), 2048 GPUs -> 8 leaves
    per plane; one NIC per GPU."""
    s = dsv3.summary()
    assert s["elements"]["nic"] == 2048 and s["elements"]["leaf"] == 64 and s["elements"]["spine"] == 8
    assert s["links"]["nvlink"]["bandwidth_bytes_per_s"] == [160_000_000_000]
    assert s["links"]["ib"]["bandwidth_bytes_per_s"] == [40_000_000_000]


def test_group_inside_an_nvswitch_node_never_touches_a_nic(dsv3):
    for a in range(8):
        for b in range(8):
            assert all(k == "nvlink" for k in kinds(dsv3, a, b))


def test_cross_plane_traffic_forwards_over_nvlink_then_ib(dsv3):
    """V3 §3.2.2: a token goes over IB to the GPU with the same in-node index, so a flow
    from GPU 0 to GPU 9 (node 1, index 1) first crosses NVLink to GPU 1, then plane 1."""
    route = dsv3.route(0, 9)
    assert route[1][1] == ("gpu", 1)
    assert kinds(dsv3, 0, 9) == ["nvlink", "nvlink", "pcie", "ib", "ib", "pcie"]


def test_latency_classes(dsv3):
    """ISCA'25 Table 5: NVLink 3.33 us; IB 2.8 us same leaf, 3.7 us cross leaf."""
    assert dsv3.latency_s(0, 1) == pytest.approx(3.33e-6)
    assert dsv3.latency_s(0, 8) == pytest.approx(2.8e-6)  # nodes 0 and 1 share leaves
    assert dsv3.latency_s(0, 8 * 40) == pytest.approx(3.7e-6)  # node 40 is on leaf 1


def test_fire_flyer_node(fire_flyer):
    """Fire-Flyer §III-A: NVLink bridge on pairs, everything else via CPU root ports;
    GPU5 and GPU6 share one root port (capped at 37.5 GB/s toward the CPU); one NIC."""
    assert kinds(fire_flyer, 0, 1) == ["nvlink"]
    assert kinds(fire_flyer, 0, 2) == ["pcie"] * 4
    g = fire_flyer.graph
    assert g.nodes[("gpu", 5)]["root_port"] == g.nodes[("gpu", 6)]["root_port"]
    shared = g.nodes[("gpu", 5)]["root_port"]
    assert fire_flyer.bandwidth((shared, ("host", 0))) == pytest.approx(37.5e9)
    assert kinds(fire_flyer, 0, 8)[2:5] == ["pcie", "ib", "ib"]
    # The preset now carries an ASSUMPTION PCIe latency (fire-flyer-2.yaml); without one the
    # path is unsupported rather than guessed.
    assert fire_flyer.latency_s(0, 2) == pytest.approx(fire_flyer.cluster.node.pcie.latency_s)
    no_latency = fire_flyer.cluster.node.pcie.model_copy(update={"latency_s": None})
    bare = fire_flyer.cluster.model_copy(
        update={"node": fire_flyer.cluster.node.model_copy(update={"pcie": no_latency})}
    )
    with pytest.raises(UnsupportedError):
        build_topology(bare.with_num_gpus(16)).latency_s(0, 2)


def test_zones_connect_through_the_cross_zone_link():
    cluster = load_cluster("fire-flyer-2", 64)
    cluster = revalidate(cluster, fabric={**cluster.fabric.model_dump(), "nodes_per_zone": 4})
    topo = build_topology(cluster)
    assert "zone" in kinds(topo, 0, 8 * 5)
    assert "zone" not in kinds(topo, 0, 8 * 3)


def test_rail_optimized_dgx():
    topo = build_topology(load_cluster("dgx-h100", 32))
    assert set(kinds(topo, 0, 8)) == {"pcie", "ib"}  # same rail: no forwarding
    assert kinds(topo, 0, 9)[0] == "nvlink"  # other rail: PXN-style forward first


def test_nvl72_domain_spans_trays():
    topo = build_topology(load_cluster("gb200-nvl72", 144))
    assert set(kinds(topo, 0, 71)) == {"nvlink"}  # 18 trays, one NVLink domain
    assert "ib" in kinds(topo, 0, 72)


def test_bad_inputs():
    topo = build_topology(load_cluster("dgx-h100", 16))
    with pytest.raises(SpecError):
        topo.route(0, 16)
    cluster = load_cluster("fire-flyer-2", 16)
    node = cluster.node.model_dump()
    node["pcie"]["root_ports"] = [[0, 1], [2]]
    with pytest.raises(SpecError) as info:
        build_topology(revalidate(cluster, node=node))
    assert info.value.field == "node.pcie.root_ports"


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["deepseek-v3-h800", "fire-flyer-2", "dgx-a100", "dgx-h100", "dgx-b200", "gb200-nvl72"]),
    data=st.data(),
)
def test_routes_are_connected_paths(name, data):
    cluster = load_cluster(name)
    cluster = cluster.with_num_gpus(min(cluster.num_gpus, 8 * cluster.node.gpus_per_node * 9))
    topo = _cached(cluster)
    src = data.draw(st.integers(0, cluster.num_gpus - 1))
    dst = data.draw(st.integers(0, cluster.num_gpus - 1))
    route = topo.route(src, dst)
    if src == dst:
        assert route == ()
        return
    assert route[0][0] == ("gpu", src) and route[-1][1] == ("gpu", dst)
    for (a, b), (c, _) in zip(route, route[1:]):
        assert b == c
    assert all(topo.graph.has_edge(*e) and topo.bandwidth(e) > 0 for e in route)


_TOPOS: dict = {}


def _cached(cluster):
    if cluster.name not in _TOPOS:
        _TOPOS[cluster.name] = build_topology(cluster)
    return _TOPOS[cluster.name]
