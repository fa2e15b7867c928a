"""The targets of issues 8 and 16, each with its measured value and whether this run met it."""

from __future__ import annotations

TARGETS = {
    "capped": 1.25,          # migratio/ceiling on the capped link, 0 ms, incompressible (issue 8)
    "latency": 1.25,         # migratio/max(link time, glance floor) at 50 ms RTT (issue 16 part 2)
    "compressed": 0.7,       # migratio/ceiling, capped, realistic images (issue 16 part 4)
    "no_worse": 0.05,        # incompressible or unshaped: at most 5 % worse than OLD_RATIOS (part 4)
    "already_present": 1.0,  # seconds of worker time
    "rss_mb": 200.0,         # worker peak, MB
    "rss_growth": 0.10,      # the largest payload's peak within 10 % of the smallest's
    "proxy_overhead": 0.10,  # the delay proxy at 0 ms slows the ceiling by at most 10 %
    "catalogue": 1.25,       # catalogue wall time / its bound (issue 16 part 3)
}
# the ratios before issue 16 (bench/RESULTS.md of 2026-11-26, veth, 4G image, qcow2 store, 0 ms)
OLD_RATIOS = {"migratio/ceiling": 1.09, "migratio/max(ceiling,glance-floor)": 1.43}


def _t(target: str, value, met: bool) -> dict:
    return {"target": target, "value": value, "met": bool(met)}


def _where(run: dict) -> str:
    return f"{run['case']}, {run.get('image', run['size'])}"


def per_run(run: dict) -> list[dict]:
    """The ratio targets one run can meet or miss."""
    out, r = [], run["ratios"]
    kind, store, rtt = run.get("kind", "random"), run.get("store", "qcow2"), run.get("rtt_ms", 0)
    ceiling, bound = r.get("migratio/ceiling"), r.get("migratio/max(link,glance-floor)")
    if ceiling is not None and run["capped"] and kind == "random" and store == "qcow2" and not rtt:
        out.append(_t(f"migratio/ceiling <= {TARGETS['capped']} ({_where(run)})", ceiling,
                      ceiling <= TARGETS["capped"]))
        old = OLD_RATIOS["migratio/ceiling"]
        out.append(_t(f"incompressible, capped: migratio/ceiling <= old {old} + 5 % ({_where(run)})", ceiling,
                      ceiling <= old * (1 + TARGETS["no_worse"])))
    old_key = "migratio/max(ceiling,glance-floor)"
    if r.get(old_key) is not None and not run["capped"] and store == "qcow2" and not rtt:
        old = OLD_RATIOS[old_key]
        out.append(_t(f"unshaped: {old_key} <= old {old} + 5 % ({_where(run)})", r[old_key],
                      r[old_key] <= old * (1 + TARGETS["no_worse"])))
    if bound is not None and rtt == 50:
        out.append(_t(f"50 ms RTT: migratio/max(link time, glance floor) <= {TARGETS['latency']} ({_where(run)})",
                      bound, bound <= TARGETS["latency"]))
    if ceiling is not None and run["capped"] and kind == "realistic":
        out.append(_t(f"capped, realistic: migratio/uncompressed ceiling <= {TARGETS['compressed']} "
                      f"({_where(run)})", ceiling, ceiling <= TARGETS["compressed"]))
    return out


def legacy_per_format(runs: list[dict]) -> list[dict]:
    found: dict[str, list[float]] = {}
    for run in runs:
        if "legacy" in run["flows"] and run["ratios"].get("legacy/migratio") is not None:
            found.setdefault(run.get("store", "qcow2"), []).append(run["ratios"]["legacy/migratio"])
    if not found:
        return []
    value = {store: f"{min(v):g}-{max(v):g}" for store, v in sorted(found.items())}
    return [_t("legacy follows the stored format; qcow2 and raw store in one run (legacy/migratio)", value,
               {"qcow2", "raw"} <= set(found))]


def already_present(runs: list[dict]) -> list[dict]:
    out = []
    for key, how in (("already_present", "via ssh"), ("already_present_api", "via api")):
        values = [r["flows"]["migratio"][key]["worker_s"] for r in runs if key in r["flows"].get("migratio", {})]
        if values:
            out.append(_t(f"already present < {TARGETS['already_present']:g} s of worker time ({how}; worst "
                          f"of {len(values)} runs)", round(max(values), 2), max(values) < TARGETS["already_present"]))
    return out


def rss(runs: list[dict]) -> list[dict]:
    peaks = [(r["flows"]["migratio"]["payload_bytes"], r.get("image", r["size"]), r["case"],
              r["flows"]["migratio"].get("peak_tree_pss_kib") or r["flows"]["migratio"]["peak_rss_kib"])
             for r in runs if "migratio" in r["flows"]]
    if not peaks:
        return []
    top = max(p[3] for p in peaks) * 1024 / 1e6
    out = [_t(f"worker peak < {TARGETS['rss_mb']:g} MB (all {len(peaks)} runs)", round(top, 1),
              top < TARGETS["rss_mb"])]
    small, large = min(peaks), max(peaks)
    if large[0] > small[0]:
        growth = large[3] / small[3] - 1
        out.append(_t(f"worker peak flat: {large[1]} ({large[2]}) within 10% of {small[1]} ({small[2]})",
                      round(growth, 3), growth <= TARGETS["rss_growth"]))
    return out


def targets(result: dict) -> list[dict]:
    """Each target with its measured value(s) and whether it was met."""
    runs = result["runs"]
    out = [t for run in runs for t in per_run(run)]
    out += legacy_per_format(runs) + already_present(runs) + rss(runs)
    overhead = result.get("proxy_overhead")
    if overhead:
        out.append(_t(f"delay proxy at 0 ms slows the ceiling by <= {TARGETS['proxy_overhead']:.0%}",
                      round(overhead["overhead"], 3), overhead["overhead"] <= TARGETS["proxy_overhead"]))
    catalogue = result.get("catalogue")
    if catalogue and catalogue.get("ratio") is not None:
        out.append(_t(f"catalogue within {TARGETS['catalogue']}x of its bound", catalogue["ratio"],
                      catalogue["ratio"] <= TARGETS["catalogue"]))
    rows = result.get("dedupe") or []
    if len(rows) > 1:
        first, last = rows[0]["migratio_ssh_s"], rows[-1]["migratio_ssh_s"]
        out.append(_t(f"dedupe flat: one call; time at {rows[-1]['images']} images within 2x of "
                      f"{rows[0]['images']}", round(last / first, 2),
                      last <= 2 * first and all(r["migratio_calls"] == 1 for r in rows)))
    return out
