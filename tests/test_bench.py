"""The benchmark's plumbing on tiny images: result shape, byte counts, cleanup. Never its timings."""

import json
import os
from pathlib import Path

import pytest

from bench import report
from bench import run as bench_run
from bench.netns import namespaces
from bench.suite import Options, run_bench

pytestmark = pytest.mark.lab
MiB = 1024 * 1024
ROOT = os.geteuid() == 0
CASES = ["veth-capped", "loopback"] if ROOT else ["loopback"]  # a network namespace needs root
SIZE, DATA_PERCENT = "32M", 25


@pytest.fixture(scope="module")
def bench(lab, tmp_path_factory):
    """One small benchmark run on the test session's lab: every flow, dedupe with 2 and 4 images."""
    scratch = tmp_path_factory.mktemp("bench")
    opts = Options(sizes=[SIZE], data_percent=DATA_PERCENT, cap_mbit=400, cases=CASES,
                   dedupe_counts=[2, 4], dedupe_sample=1)
    lines: list[str] = []
    result = run_bench(lab, opts, scratch, log=lines.append)
    path, text = bench_run.write_results(result, scratch / "results")
    return {"result": json.loads(path.read_text()), "markdown": text, "log": lines, "lab": lab,
            "results_dir": scratch / "results"}


def runs(bench, case=None):
    return [r for r in bench["result"]["runs"] if case is None or r["case"] == case]


def test_result_has_every_case_flow_and_ratio(bench):
    result = bench["result"]
    assert [r["case"] for r in runs(bench)] == CASES
    for run in runs(bench):
        assert run["size"] == SIZE
        assert set(run["flows"]) == {"ceiling", "glance-floor", "legacy", "migratio"}
        for name, flow in run["flows"].items():
            assert flow["wall_s"] > 0
            if name != "glance-floor":  # that one runs on the head node only
                assert flow["peak_rss_kib"] > 0 and flow["memory_samples"] > 0
        assert set(run["ratios"]) == {"migratio/ceiling", "migratio/max(ceiling,glance-floor)", "legacy/migratio"}
    assert result["machine"]["cpus"] >= 1
    assert result["assumptions"] and result["targets"]
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    assert (bench["results_dir"] / "latest.md").read_text() == bench["markdown"]


def test_migratio_job_verified_and_second_job_already_present(bench):
    for run in runs(bench):
        m = run["flows"]["migratio"]
        assert m["verified"], m
        assert m["dest_image_id"] and m["worker_s"] <= m["wall_s"]
        assert m["already_present"]["worker_s"] > 0 and m["already_present_api"]["worker_s"] > 0
        assert "transfer" not in m["already_present"]["steps"]
        assert set(m["steps"]) >= {"locate", "dedupe", "transfer", "register", "verify"}


def test_glance_floor_sends_nothing_over_the_link(bench):
    for run in runs(bench):
        floor = run["flows"]["glance-floor"]
        assert floor["bytes_sent"] == 0 and floor["payload_bytes"] == bench["result"]["images"][0]["file_bytes"]


def test_bytes_counts_are_consistent(bench):
    image = bench["result"]["images"][0]
    assert image["virtual_bytes"] == 32 * MiB and image["data_mib"] == 8
    assert image["allocated_bytes"] <= image["file_bytes"]
    for run in runs(bench):
        ceiling, legacy, migratio = (run["flows"][f] for f in ("ceiling", "legacy", "migratio"))
        assert ceiling["payload_bytes"] == image["allocated_bytes"]
        assert migratio["payload_bytes"] == image["file_bytes"]
        assert legacy["payload_bytes"] == image["virtual_bytes"]  # raw: every zero is sent
        for flow in (ceiling, legacy, migratio):
            # what ssh sent is the payload plus framing and encryption overhead
            assert flow["payload_bytes"] <= flow["ssh_sent"] <= flow["payload_bytes"] * 1.05 + MiB
            if run["link"] == "veth":  # the link saw at least that (plus TCP/IP headers, control)
                assert flow["ssh_sent"] <= flow["link_sent"] <= flow["ssh_sent"] * 1.1 + MiB
                assert flow["bytes_sent"] == flow["link_sent"]
            else:
                assert flow["bytes_sent"] == flow["ssh_sent"]
        assert legacy["ssh_sent"] > migratio["ssh_sent"]  # raw and unsparse vs the qcow2


def test_dedupe_rows(bench):
    rows = bench["result"]["dedupe"]
    assert [r["images"] for r in rows] == [2, 4]
    for row in rows:
        assert row["images_on_destination"] >= row["images"]
        assert row["migratio_calls"] == 1 and row["legacy_calls"] == 1 + row["images_on_destination"]
        assert row["migratio_ssh_s"] > 0 and row["migratio_api_s"] > 0 and row["legacy_s"] > 0
        assert row["legacy_sampled"] and row["legacy_shows_measured"] == 1


def test_destination_and_source_left_as_found(bench):
    lab = bench["lab"]
    names = [i["name"] for i in lab.site_a.api().list_images()]
    assert not [n for n in names if n.startswith("bench-")]
    leftovers = [i["name"] for i in lab.site_b.api().list_images()]
    assert not [n for n in leftovers if n.startswith(("bench-", "legacy-"))]


@pytest.mark.skipif(not ROOT, reason="the veth case needs root (network namespaces)")
def test_namespace_and_veth_removed(bench):
    link = bench["result"]["veth"]
    assert link["netns"] not in namespaces()
    assert not Path(f"/sys/class/net/{link['root_if']}").exists()
    veth = runs(bench, "veth-capped")[0]
    assert veth["capped"] and veth["link"] == "veth"


def test_options_quick_and_lists():
    opts = bench_run.options(bench_run.parse_args(["--quick", "--cases", "loopback", "--dedupe-counts", ""]))
    assert opts.sizes == ["512M", "1G"] and opts.cases == ["loopback"] and opts.dedupe_counts == []
    assert opts.cap_kib == int(200e6 / 8 // 1024)
    full = bench_run.options(bench_run.parse_args([]))
    assert full.sizes == ["4G", "16G"] and full.dedupe_counts == [10, 100, 1000]
    assert report.targets({"runs": [], "dedupe": []}) == []
