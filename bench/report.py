"""The human side of a result: a markdown table, ratios, dedupe cost and the targets met or missed."""

from __future__ import annotations

MiB = 1024 * 1024
TARGETS = {
    "capped": 1.25,         # migratio/ceiling on the capped link
    "unshaped": 1.5,        # migratio/ceiling unshaped
    "legacy": 2.0,          # legacy/migratio on the capped link, at least
    "already_present": 1.0,  # seconds of worker time
    "rss_mb": 200.0,        # worker peak, MB
    "rss_growth": 0.10,     # largest image's peak within 10% of the smallest's
}


def _mb(kib) -> str:
    return "-" if kib is None else f"{kib * 1024 / 1e6:.0f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def runs_table(result: dict) -> list[str]:
    lines = ["| case | image | flow | wall s | MiB sent | MB/s | peak RSS MB (largest process / tree PSS) | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for run in result["runs"]:
        for flow, r in run["flows"].items():
            rate = r["payload_bytes"] / r["wall_s"] / 1e6 if r["wall_s"] else 0
            rss = _mb(r.get("peak_rss_kib"))
            if r.get("peak_tree_pss_kib"):
                rss += f" / {_mb(r['peak_tree_pss_kib'])}"
            lines.append(f"| {run['case']} | {run['size']} | {flow} | {_s(r['wall_s'])} | "
                         f"{r['bytes_sent'] / MiB:.0f} | {rate:.1f} | {rss} | {_notes(flow, r)} |")
    return lines


def _notes(flow: str, r: dict) -> str:
    if flow == "legacy":
        return (f"{r.get('format')}; dedupe {_s(r['dedupe_s'])} s ({r['dedupe_calls']} calls), "
                f"rsync {_s(r['transfer_s'])} s, image-create {_s(r['register_s'])} s")
    if flow == "glance-floor":
        return "the destination Glance alone: image-create --file on the head node (no link)"
    if flow == "migratio":
        steps = ", ".join(f"{k} {v:g}" for k, v in r.get("steps", {}).items() if v >= 0.1)
        return f"steps (s): {steps}" if steps else ""
    return ""


def ratios_table(result: dict) -> list[str]:
    lines = ["| case | image | migratio/ceiling | migratio/max(ceiling, glance-floor) | legacy/migratio | "
             "already present, worker s (via ssh / via api) |", "|---|---|---:|---:|---:|---:|"]
    for run in result["runs"]:
        ratios, m = run["ratios"], run["flows"].get("migratio", {})
        present = m.get("already_present", {}).get("worker_s")
        via_api = m.get("already_present_api", {}).get("worker_s")
        lines.append(f"| {run['case']} | {run['size']} | {ratios.get('migratio/ceiling', '-')} | "
                     f"{ratios.get('migratio/max(ceiling,glance-floor)', '-')} | "
                     f"{ratios.get('legacy/migratio', '-')} | {_s(present)} / {_s(via_api)} |")
    return lines


def dedupe_table(result: dict) -> list[str]:
    if not result.get("dedupe"):
        return []
    lines = ["| images on destination | migratio via ssh (1 call) s | migratio via api (1 call) s | "
             "legacy s | legacy calls |", "|---:|---:|---:|---:|---:|"]
    for row in result["dedupe"]:
        sampled = (f" (extrapolated from {row['legacy_shows_measured']} image-show calls)"
                   if row["legacy_sampled"] else "")
        lines.append(f"| {row['images_on_destination']} | {_s(row['migratio_ssh_s'])} | "
                     f"{_s(row['migratio_api_s'])} | {_s(row['legacy_s'])}{sampled} | {row['legacy_calls']} |")
    return lines


def targets(result: dict) -> list[dict]:
    """Each target with its measured value(s) and whether it was met."""
    out = []
    runs = result["runs"]
    for run in runs:
        ratio = run["ratios"].get("migratio/ceiling")
        if ratio is not None:
            limit = TARGETS["capped"] if run["capped"] else TARGETS["unshaped"]
            out.append({"target": f"migratio/ceiling <= {limit} ({run['case']}, {run['size']})",
                        "value": ratio, "met": ratio <= limit})
        ratio = run["ratios"].get("legacy/migratio")
        if ratio is not None and run["capped"]:
            out.append({"target": f"legacy/migratio >= {TARGETS['legacy']} ({run['case']}, {run['size']})",
                        "value": ratio, "met": ratio >= TARGETS["legacy"]})
        m = run["flows"].get("migratio", {})
        for key, how in (("already_present", "via ssh"), ("already_present_api", "via api")):
            present = m.get(key, {}).get("worker_s")
            if present is not None:
                out.append({"target": f"already present < {TARGETS['already_present']:g} s of worker time "
                                      f"({how}; {run['case']}, {run['size']})", "value": present,
                            "met": present < TARGETS["already_present"]})
    out += _rss_targets(runs)
    rows = result.get("dedupe") or []
    if len(rows) > 1:
        first, last = rows[0]["migratio_ssh_s"], rows[-1]["migratio_ssh_s"]
        out.append({"target": f"dedupe flat: one call; time at {rows[-1]['images']} images within 2x of "
                              f"{rows[0]['images']}", "value": round(last / first, 2),
                    "met": last <= 2 * first and all(r["migratio_calls"] == 1 for r in rows)})
    return out


def _rss_targets(runs: list[dict]) -> list[dict]:
    out = []
    by_case: dict[str, list[dict]] = {}
    for run in runs:
        if "migratio" in run["flows"]:
            by_case.setdefault(run["case"], []).append(run)
    for case, case_runs in by_case.items():
        peaks = [(r["size"], r["flows"]["migratio"].get("peak_tree_pss_kib") or
                  r["flows"]["migratio"]["peak_rss_kib"]) for r in case_runs]
        top = max(kib for _, kib in peaks) * 1024 / 1e6
        out.append({"target": f"worker peak < {TARGETS['rss_mb']:g} MB ({case})", "value": round(top, 1),
                    "met": top < TARGETS["rss_mb"]})
        if len(peaks) > 1:
            growth = peaks[-1][1] / peaks[0][1] - 1
            out.append({"target": f"worker peak flat: {peaks[-1][0]} within 10% of {peaks[0][0]} ({case})",
                        "value": round(growth, 3), "met": growth <= TARGETS["rss_growth"]})
    return out


def markdown(result: dict) -> str:
    m, o = result["machine"], result["options"]
    cap = f"{o['cap_mbit']:g} Mbit/s" if o["cap_mbit"] else "none"
    lines = [f"# migratio benchmark, {result['started_at']}", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, {m['memory_mib']} MiB RAM; "
             f"load average at start {_load(m['loadavg_start'])}, at end {_load(m.get('loadavg_end'))}. "
             f"Cap on capped cases: {cap}. Images: {', '.join(o['sizes'])} virtual, "
             f"{o['data_percent']:g}% data. Took {result.get('duration_s', 0) / 60:.0f} min.", "",
             "## Runs", "", *runs_table(result), "", "## Ratios", "", *ratios_table(result), ""]
    if result.get("dedupe"):
        lines += ["## Dedupe check cost", "", *dedupe_table(result), ""]
    lines += ["## Targets", ""]
    lines += [f"- {'met' if t['met'] else 'MISSED'}: {t['target']}: {t['value']}" for t in result["targets"]]
    if result.get("aws"):
        lines += ["", "## AWS ebs-direct", "", "```", str(result["aws"]).strip(), "```"]
    lines += ["", "## Assumptions", "", *[f"- {a}" for a in result["assumptions"]], ""]
    return "\n".join(lines)


def _load(value) -> str:
    return "?" if not value else "/".join(f"{x:.1f}" for x in value)
