"""The benchmark result as a Markdown report."""

from __future__ import annotations


def _fmt(value, spec, empty="–"):
    return empty if value is None else format(value, spec)


def _mib(nbytes):
    if nbytes is None:
        return "–"
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def markdown(result: dict, command: str | None = None) -> str:
    m = result["machine"]
    lines = ["| case | dtype | impl | fwd ms | bwd ms | fwd+bwd ms | × torch (fwd / bwd / both) "
             "| GB/s (both) | % of bound (both) | cache | fwd peak |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ratios = " / ".join(_fmt(r[f"{p}_vs_torch"], ".2f") for p in ("forward", "backward", "both"))
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['forward_ms']:.3f} | {r['backward_ms']:.3f} "
            f"| {r['both_ms']:.3f} | {ratios} | {r['both_gbps']:.1f} "
            f"| {_fmt(None if r['both_of_bound'] is None else 100 * r['both_of_bound'], '.0f')} "
            f"| {_mib(r['cache_bytes'])} | {_mib(r['forward_peak_bytes'])} |")
    head = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s) for Numba and PyTorch "
            f"(torch reports {m.get('torch_threads', '–')}), last-level cache {_mib(m.get('llc_bytes'))}; "
            f"numpy {m['numpy']}, numba {m.get('numba')}, torch {m.get('torch')}; "
            f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.",
            "",
            f"Triad bandwidth bound (same threads, same run, best of "
            f"{len(result.get('triad_gbps_all', [])) or 1} measurements: "
            f"{', '.join(f'{v:.1f}' for v in result.get('triad_gbps_all', []))}): "
            f"{_fmt(result['bandwidth_gbps'], '.1f')} GB/s. "
            f"Times are medians of {result.get('rounds', 1)} rounds × {result['repeat']} runs after warm-up.",
            ""]
    if command:
        head[:0] = [f"Command: `{command}`", ""]
    s = result["summary"]
    tail = [""]
    if "numba_vs_torch_geomean" in s:
        tail.append(f"- Numba vs PyTorch, forward+backward: geometric-mean speedup "
                    f"{s['numba_vs_torch_geomean']:.2f}×; faster on every case: "
                    f"{'yes' if s['numba_faster_everywhere'] else 'no'} "
                    f"(min {min(s['numba_vs_torch_both'].values()):.2f}×).")
    if s.get("numba_of_bound_beyond_llc"):
        parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["numba_of_bound_beyond_llc"].items())
        tail.append(f"- Numba forward+backward as a share of the bandwidth bound, where x exceeds the LLC: {parts}.")
        touch = {f"{r['case']} {r['dtype']}": r["first_touch_ms"] for r in result["rows"]
                 if r["impl"] == "numba" and r.get("first_touch_ms") is not None}
        if touch:
            parts = ", ".join(f"{k} {v:.2f} ms" for k, v in touch.items())
            tail.append(f"- First touch of a fresh x-sized output (page faults, zeroing), beyond a reused one: {parts} "
                        "(what np.empty and torch.empty pay per output; the numba rows' outputs are recycled blocks "
                        "from the second call on, backends/output_pool.py).")
    if s.get("numpy_closed_vs_graph_backward"):
        parts = ", ".join(f"{k} {v:.2f}×" for k, v in s["numpy_closed_vs_graph_backward"].items())
        tail.append(f"- NumPy closed-form backward vs the graph backward: {parts}.")
    tail += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(head + lines + tail) + "\n"


def _head(result: dict, command: str | None, threads_text: str) -> list[str]:
    m = result["machine"]
    head = [f"Machine: {m['cpu']}, {m['cores']} cores, {threads_text}; numpy {m['numpy']}, numba {m.get('numba')}, "
            f"torch {m.get('torch')}; load average {m['loadavg_start'][0]:.2f} at start, "
            f"{m['loadavg_end'][0]:.2f} at end. Times are medians of {result['rounds']} rounds × "
            f"{result['repeat']} runs after warm-up.", ""]
    return [f"Command: `{command}`", "", *head] if command else head


def _ms_cells(r: dict) -> str:
    return f"{r['forward_ms']:.3f} | {r['backward_ms']:.3f} | {r['both_ms']:.3f}"


def markdown_torch(result: dict, command: str | None = None) -> str:
    """The module-level table: ms per phase and torch / normlab (> 1: normlab faster)."""
    m = result["machine"]
    lines = _head(result, command, f"{m['threads']} thread(s) for Numba and PyTorch "
                                   f"(torch reports {m.get('torch_threads', '–')})")
    lines += ["| case | dtype | impl | level | fwd ms | bwd ms | fwd+bwd ms | torch / normlab (fwd / bwd / both) |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ratios = " / ".join(_fmt(r.get(f"{p}_ratio"), ".2f") for p in ("forward", "backward", "both"))
        lines.append(f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['level']} | {_ms_cells(r)} | "
                     f"{ratios if 'both_ratio' in r else '–'} |")
    s = result["summary"]
    lines.append("")
    if "module_ratio_geomean" in s:
        lines.append(f"- torch.nn / normlab.torch, forward+backward: geometric mean {s['module_ratio_geomean']:.2f}×; "
                     f"normlab.torch faster on every case: {'yes' if s['normlab_faster_everywhere'] else 'no'} "
                     f"(range {min(s['module_ratio_both'].values()):.2f}–"
                     f"{max(s['module_ratio_both'].values()):.2f}×).")
    for key, who in (("normlab_layer_overhead_ms", "normlab.torch − numba kernels"),
                     ("torch_layer_overhead_ms", "torch.nn − ATen kernels")):
        if s.get(key):
            parts = ", ".join(f"{k} {v:+.3f}" for k, v in s[key].items())
            lines.append(f"- Layer around the kernels, forward+backward ms ({who}): {parts}.")
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def markdown_sync(result: dict, command: str | None = None) -> str:
    """The synchronization table: per rank's shard, slowest rank's medians; overhead split."""
    m = result["machine"]
    lines = _head(result, command, f"{m['world_size']} ranks on 127.0.0.1 (gloo), {m['threads_per_rank']} "
                                   f"thread(s) per rank for Numba and PyTorch")
    lines += ["| case (global batch) | shard rows | dtype | impl | fwd ms | bwd ms | fwd+bwd ms | × local (both) |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    local = {(r["case"], r["dtype"]): r["both_ms"] for r in result["rows"] if r["impl"] == "local"}
    for r in result["rows"]:
        shards = "+".join(map(str, r["shard_rows"]))
        lines.append(f"| {r['case']} | {shards} | {r['dtype']} | {r['impl']} | {_ms_cells(r)} | "
                     f"{r['both_ms'] / local[(r['case'], r['dtype'])]:.2f} |")
    lines.append("")
    for key, s in result["summary"].items():
        lines.append(f"- {key}: sync − local = {s['overhead_ms']:+.3f} ms per forward+backward "
                     f"({s['sync_over_local']:.2f}× local), of which arithmetic (sync-math − local) "
                     f"{s['math_ms']:+.3f} ms and communication incl. waiting (sync − sync-math) "
                     f"{s['communication_ms']:+.3f} ms; the two collectives alone {s['collectives_ms']:.3f} ms.")
    lines += [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _targets(s: dict) -> str:
    """The kernel suite's targets for one run (runner.TARGET_*), as one line."""
    from .runner import TARGET_EVERY_CASE, TARGET_GEOMEAN, TARGET_OF_BOUND

    if "numba_vs_torch_both" not in s:
        return "–"
    ratios = s["numba_vs_torch_both"]
    worst = min(ratios, key=ratios.get)
    parts = [f"min {ratios[worst]:.2f}× ({worst}; target ≥ {TARGET_EVERY_CASE:.1f}×)",
             f"geo-mean {s['numba_vs_torch_geomean']:.2f}× (≥ {TARGET_GEOMEAN:.1f}×)"]
    big = s.get("numba_of_bound_beyond_llc")
    if big:
        low = min(big, key=big.get)
        parts.append(f"beyond the LLC, fresh outputs: min {100 * big[low]:.0f}% of the bound ({low}; "
                     f"≥ {100 * TARGET_OF_BOUND:.0f}%)")
    met = s.get("targets_met", {})
    return "; ".join(parts) + f" — met: {', '.join(k for k, v in met.items() if v) or 'none'}" + (
        f"; missed: {', '.join(k for k, v in met.items() if not v)}" if not all(met.values()) else "")


def markdown_kernel_threads(result: dict, command: str | None = None) -> str:
    """The kernel suite at several thread counts: per case, numba's ratio to ATen and share of the bound (fresh
    outputs and out= buffers) side by side, the targets per count, then each run's full table."""
    runs = result["runs"]
    counts = list(runs)
    m = result["machine"]
    lines = [f"Command: `{command}`", ""] if command else []
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, last-level cache {_mib(m.get('llc_bytes'))}; "
                 f"numpy {m['numpy']}, numba {m.get('numba')}, torch {m.get('torch')}.")
    for t, run in runs.items():
        rm = run["machine"]
        lines.append(f"- {t} thread(s): bound {_fmt(run['bandwidth_gbps'], '.1f')} GB/s (best triad of "
                     f"{', '.join(f'{v:.1f}' for v in run.get('triad_gbps_all', []))}); load average "
                     f"{rm['loadavg_start'][0]:.2f} at start, {rm['loadavg_end'][0]:.2f} at end.")
    per = " / ".join(f"{t} thr" for t in counts)
    lines += ["", f"| case | dtype | x | numba × torch ({per}) | numba+out × torch ({per}) "
                  f"| % of bound, fresh ({per}) | % of bound, out= ({per}) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    index = {t: {(r["case"], r["dtype"], r["impl"]): r for r in run["rows"]} for t, run in runs.items()}
    keys = list(dict.fromkeys((r["case"], r["dtype"]) for r in next(iter(runs.values()))["rows"]))

    def cells(impl, field, scale=1.0, spec=".2f", suffix="×"):
        values = [index[t].get((*k, impl), {}).get(field) for t in counts]
        return " / ".join("–" if v is None else f"{scale * v:{spec}}{suffix}" for v in values)

    for k in keys:
        x_bytes = index[counts[0]][(*k, "numba")]["x_bytes"] if (*k, "numba") in index[counts[0]] else None
        lines.append(f"| {k[0]} | {k[1]} | {_mib(x_bytes)} | {cells('numba', 'both_vs_torch')} "
                     f"| {cells('numba+out', 'both_vs_torch')} | {cells('numba', 'both_of_bound', 100, '.0f', '%')} "
                     f"| {cells('numba+out', 'both_of_bound', 100, '.0f', '%')} |")
    lines += ["", "Targets (numba, fresh outputs):"]
    lines += [f"- {t} thread(s): {_targets(run['summary'])}" for t, run in runs.items()]
    for t, run in runs.items():
        lines += ["", f"### {t} thread(s)", "", markdown(run).rstrip()]
    return "\n".join(lines) + "\n"
