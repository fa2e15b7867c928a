"""The human side of a result: images, runs, the claim per case, catalogue, dedupe cost, targets."""

from __future__ import annotations

from bench.targets import TARGETS, targets

__all__ = ["TARGETS", "markdown", "targets"]
MiB = 1024 * 1024


def _mb(kib) -> str:
    return "-" if kib is None else f"{kib * 1024 / 1e6:.0f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _image(run: dict) -> str:
    return run.get("image", run["size"])


def images_table(result: dict) -> list[str]:
    lines = ["| image | virtual | data MiB | stored MiB (allocated) | zstd -1 ratio of the data |",
             "|---|---:|---:|---:|---:|"]
    for i in result["images"]:
        lines.append(f"| {i.get('label', i['size'])} | {i['virtual_bytes'] / MiB:.0f} MiB | "
                     f"{i.get('data_bytes', 0) / MiB:.0f} | {i['allocated_bytes'] / MiB:.0f} | "
                     f"{i.get('zstd1_ratio', '-')} |")
    return lines


def runs_table(result: dict) -> list[str]:
    lines = ["| case | image | flow | wall s | MiB sent | MB/s | peak RSS MB (largest process / tree PSS) | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for run in result["runs"]:
        for flow, r in run["flows"].items():
            rate = r["payload_bytes"] / r["wall_s"] / 1e6 if r["wall_s"] else 0
            rss = _mb(r.get("peak_rss_kib"))
            if r.get("peak_tree_pss_kib"):
                rss += f" / {_mb(r['peak_tree_pss_kib'])}"
            lines.append(f"| {run['case']} | {_image(run)} | {flow} | {_s(r['wall_s'])} | "
                         f"{r['bytes_sent'] / MiB:.0f} | {rate:.1f} | {rss} | {_notes(flow, r)} |")
    return lines


def _notes(flow: str, r: dict) -> str:
    if flow == "legacy":
        return (f"{r.get('format')} as stored; dedupe x2 {_s(r['dedupe_s'])} s "
                f"({r.get('dedupe_glance_runs', '-')} glance runs), rsync {_s(r['transfer_s'])} s, "
                f"image-create {_s(r['register_s'])} s")
    if flow == "glance-floor":
        return "the destination Glance alone: image-create --file on the head node (no link)"
    if flow == "migratio":
        steps = ", ".join(f"{k} {v:g}" for k, v in r.get("steps", {}).items() if v >= 0.1)
        return f"steps (s): {steps}" if steps else ""
    return ""


def claims_table(result: dict) -> list[str]:
    """The claim per case: legacy/migratio (per stored format), migratio/ceiling, migratio/max(link, floor)."""
    lines = ["| case | RTT ms | image | legacy/migratio | migratio/ceiling | one-stream ceiling/migratio | "
             "link time s | migratio/max(link time, glance floor) | already present, worker s (via ssh / via api) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        ratios, m = run["ratios"], run["flows"].get("migratio", {})
        present = m.get("already_present", {}).get("worker_s")
        via_api = m.get("already_present_api", {}).get("worker_s")
        lines.append(f"| {run['case']} | {run.get('rtt_ms', 0):g} | {_image(run)} | "
                     f"{ratios.get('legacy/migratio', '-')} | {ratios.get('migratio/ceiling', '-')} | "
                     f"{ratios.get('one-stream-ceiling/migratio', '-')} | {_s(ratios.get('link_s'))} | "
                     f"{ratios.get('migratio/max(link,glance-floor)', '-')} | "
                     f"{_s(present)} / {_s(via_api)} |")
    return lines


def proxy_line(result: dict) -> list[str]:
    p = result.get("proxy_overhead")
    if not p:
        return []
    runs = ", ".join(f"{_s(d)}/{_s(x)}" for d, x in zip(p["direct_runs_s"], p["proxy_runs_s"]))
    return [f"Proxy overhead: the ceiling ({p['link']}, {p.get('image', '')}, {p['bytes'] / MiB:.0f} MiB, one ssh "
            f"stream) direct / through bench/delay_proxy.py at 0 ms, back to back: {runs} s; median of the "
            f"pairs' ratios: {p['overhead'] * 100:+.1f} %.", ""]


def catalogue_table(result: dict) -> list[str]:
    c = result.get("catalogue")
    if not c:
        return []
    lines = ["## Catalogue", "", "| images | workers | wall s | MiB | ceiling MB/s | fixed cost s/job | bound s | "
             "wall/bound |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {c.get('images')} | {c.get('workers')} | {_s(c.get('wall_s'))} | {c.get('bytes', 0) / MiB:.0f} | "
             f"{c.get('ceiling_rate_bps', 0) / 1e6:.1f} | {_s(c.get('fixed_cost_s'))} | {_s(c.get('bound_s'))} | "
             f"{c.get('ratio', '-')} |", ""]
    for key, label in (("fixed_cost_steps_s", "Fixed cost per step (s, the near-empty image's job)"),
                       ("per_step_s", "Mean per job and step in the catalogue (s)")):
        if c.get(key):
            lines += [f"{label}: " + ", ".join(f"{k} {_s(v)}" for k, v in c[key].items()), ""]
    lines.append(f"Target: catalogue within {TARGETS['catalogue']}x of bound = bytes / ceiling rate + "
                 f"images x fixed cost / workers.")
    return [*lines, ""]


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


def markdown(result: dict) -> str:
    m, o = result["machine"], result["options"]
    cap = f"{o['cap_mbit']:g} Mbit/s" if o["cap_mbit"] else "none"
    streams = f" migratio site conf streams: {o['streams']}." if o.get("streams") else ""
    lines = [f"# migratio benchmark, {result['started_at']}", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, {m['memory_mib']} MiB RAM; "
             f"load average at start {_load(m['loadavg_start'])}, at end {_load(m.get('loadavg_end'))}. "
             f"Cap on capped cases: {cap}. Cases: {', '.join(o['cases'])}; raw-store images only at RTT "
             f"{', '.join(f'{x:g}' for x in o.get('raw_store_rtts', [0]))} ms.{streams} "
             f"Took {result.get('duration_s', 0) / 60:.0f} min.", "",
             "## Images", "", *images_table(result), "", *proxy_line(result),
             "## Runs", "", *runs_table(result), "", "## Claims per case", "", *claims_table(result), "",
             *catalogue_table(result)]
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
