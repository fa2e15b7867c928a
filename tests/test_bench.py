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
CASES = ["veth-50ms-capped", "loopback"] if ROOT else ["loopback"]  # a network namespace needs root
IMAGES = ["random-qcow2", "realistic-raw"]  # the raw store runs at 0 ms only: on loopback
SIZE, DATA_PERCENT = "32M", 25


@pytest.fixture(scope="module")
def bench(lab, tmp_path_factory):
    """One small benchmark run on the test session's lab: every flow, a 50 ms case through the delay
    proxy, a qcow2 and a raw store, dedupe with 2 and 4 images."""
    scratch = tmp_path_factory.mktemp("bench")
    opts = Options(sizes=[SIZE], data_percent=DATA_PERCENT, cap_mbit=400, cases=CASES, images=IMAGES,
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
    expected = [(c, i) for c in CASES for i in IMAGES if c == "loopback" or i.endswith("qcow2")]
    assert [(r["case"], f"{r['kind']}-{r['store']}") for r in runs(bench)] == expected
    for run in runs(bench):
        assert run["size"] == SIZE
        assert set(run["flows"]) == {"ceiling", "glance-floor", "legacy", "migratio"}
        for name, flow in run["flows"].items():
            assert flow["wall_s"] > 0
            if name != "glance-floor":  # that one runs on the head node only
                assert flow["peak_rss_kib"] > 0 and flow["memory_samples"] > 0
        assert set(run["ratios"]) == {"migratio/ceiling", "migratio/max(ceiling,glance-floor)", "legacy/migratio",
                                      "link_s", "migratio/max(link,glance-floor)"}
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


def image_of(bench, run) -> dict:
    return next(i for i in bench["result"]["images"] if i["id"] == run["image_id"])


def test_glance_floor_sends_nothing_over_the_link(bench):
    for run in runs(bench):
        floor = run["flows"]["glance-floor"]
        assert floor["bytes_sent"] == 0 and floor["payload_bytes"] == image_of(bench, run)["file_bytes"]


def test_images_record_size_data_and_how_well_they_compress(bench):
    images = {i["label"]: i for i in bench["result"]["images"]}
    assert set(images) == {f"{SIZE} random qcow2", f"{SIZE} realistic raw"}
    for image in images.values():
        assert image["virtual_bytes"] == 32 * MiB and 0 < image["data_bytes"] < image["virtual_bytes"]
    assert images[f"{SIZE} random qcow2"]["zstd1_ratio"] < 1.05     # pseudo-random data
    assert images[f"{SIZE} realistic raw"]["zstd1_ratio"] > 1.3     # files from /usr
    # a raw store holds the whole disk: Glance wrote every byte, zeros included
    assert images[f"{SIZE} realistic raw"]["file_bytes"] == 32 * MiB


def test_legacy_sends_the_stored_file_and_dedupes_twice(bench):
    for run in runs(bench):
        legacy, image = run["flows"]["legacy"], image_of(bench, run)
        assert legacy["format"] == run["store"] == image["store"]
        assert legacy["payload_bytes"] == image["file_bytes"]  # as stored: the qcow2, or the raw whole
        assert legacy["dedupe_loops"] == 2 and legacy["dedupe_glance_runs"] >= 6


def test_latency_case_goes_through_the_delay_proxy(bench):
    latency = [r for r in runs(bench) if r["rtt_ms"]]
    assert latency or not ROOT
    for run in latency:
        assert run["rtt_ms"] == 50 and run["link"].endswith("+50ms")
        proxy = run["proxy"]
        assert proxy["connections"] >= 4  # ceiling, floor, legacy's ssh and rsync, migratio's
        assert 0 < proxy["peak_held_bytes"] <= proxy["buffer_bytes"]
        assert run["flows"]["migratio"]["verified"]
    if latency:
        overhead = bench["result"]["proxy_overhead"]
        assert overhead["direct_s"] > 0 and overhead["proxy_s"] > 0 and overhead["bytes"] > 0
        assert "Proxy overhead" in bench["markdown"]


def test_bytes_counts_are_consistent(bench):
    for run in runs(bench):
        image = image_of(bench, run)
        assert image["allocated_bytes"] <= image["file_bytes"]
        ceiling, legacy, migratio = (run["flows"][f] for f in ("ceiling", "legacy", "migratio"))
        assert ceiling["payload_bytes"] == image["allocated_bytes"]
        assert migratio["payload_bytes"] == image["file_bytes"]
        for flow in (ceiling, legacy, migratio):
            # what ssh sent is the payload plus framing and encryption overhead
            assert flow["payload_bytes"] <= flow["ssh_sent"] <= flow["payload_bytes"] * 1.05 + MiB
            if run["link"].startswith("veth"):  # the link saw at least that (plus TCP/IP headers, control)
                assert flow["ssh_sent"] <= flow["link_sent"] <= flow["ssh_sent"] * 1.1 + MiB
                assert flow["bytes_sent"] == flow["link_sent"]
            else:
                assert flow["bytes_sent"] == flow["ssh_sent"]


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
    veth = runs(bench, "veth-50ms-capped")[0]
    assert veth["capped"] and veth["link"] == "veth+50ms"


def test_options_quick_and_lists():
    opts = bench_run.options(bench_run.parse_args(["--quick", "--cases", "loopback", "--dedupe-counts", ""]))
    assert opts.sizes == ["512M"] and opts.cases == ["loopback"] and opts.dedupe_counts == []
    assert opts.cap_kib == int(200e6 / 8 // 1024)
    full = bench_run.options(bench_run.parse_args([]))
    assert full.sizes == ["2G"] and full.dedupe_counts == [10, 100, 1000] and full.streams is None
    assert {"veth-50ms", "veth-50ms-capped", "veth-10ms", "veth-10ms-capped"} <= set(full.cases)
    assert full.images == ["realistic-qcow2", "random-qcow2", "realistic-raw"]
    assert report.targets({"runs": [], "dedupe": []}) == []


def test_streams_reach_the_site_conf_only_when_given():
    assert "streams" not in bench_run.options(bench_run.parse_args([])).site_extra(capped=True)
    assert bench_run.options(bench_run.parse_args(["--streams", "auto"])).site_extra(False) == {"streams": "auto"}
    assert bench_run.options(bench_run.parse_args(["--streams", "4"])).site_extra(True)["streams"] == 4
    with pytest.raises(ValueError, match="--streams"):
        bench_run.options(bench_run.parse_args(["--streams", "many"]))


def test_report_renders_the_catalogue_and_its_target():
    catalogue = {"images": 100, "workers": 2, "wall_s": 80.0, "bytes": 1600 * MiB, "ceiling_rate_bps": 200e6,
                 "fixed_cost_s": 0.6, "bound_s": 38.4, "ratio": 2.08, "per_step_s": {"dedupe": 0.2}}
    result = {"runs": [], "dedupe": [], "catalogue": catalogue}
    found = report.targets(result)
    assert [(t["value"], t["met"]) for t in found] == [(2.08, False)]
    text = report.markdown({**result, "targets": found, "started_at": "now", "images": [], "assumptions": [],
                            "machine": {"cpus": 2, "cpu_model": "x", "kernel": "k", "memory_mib": 1,
                                        "loadavg_start": [0, 0, 0]},
                            "options": {"cap_mbit": 200, "cases": [], "sizes": []}})
    assert "## Catalogue" in text and "| 100 | 2 | 80.0 |" in text and "MISSED: catalogue within 1.25x" in text
