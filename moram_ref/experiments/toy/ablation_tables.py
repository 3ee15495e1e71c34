"""Markdown tables of ``moram-ref ablation``'s results (rendered into docs/results.md by ``moram-ref report``).

Every generator takes the parsed ``results.json`` and returns Markdown; nothing here computes a result that
the run did not record, except means and confidence intervals over its per-seed values.
"""

from __future__ import annotations

import numpy as np

from moram_ref import metrics, provenance
from moram_ref.experiments.toy.demo import cells_phrase, format_cell, seeds_phrase

COLUMNS = (("average", "Average"), ("last", "Last"), ("forgetting", "forgetting"), ("transfer", "Transfer"),
           ("atoms99", "atoms for 99 %"), ("own_share", "own-task share"))


def ci_cell(values) -> dict:
    """``{"mean", "ci95"}`` of values over seeds (Student t, 95 %); ``ci95`` None for a single seed."""
    mean, half = metrics.confidence_interval(np.asarray(values, float))
    return {"mean": mean, "ci95": None if np.isnan(half) else half}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean and 95 % CI half-width of ``a − b`` over seeds (paired: same seed, same data)."""
    return ci_cell(np.asarray(a, float) - np.asarray(b, float))


def signed_cell(cell: dict) -> str:
    text = f"{100 * cell['mean']:+.1f}"
    return text if cell["ci95"] is None else f"{text} ± {100 * cell['ci95']:.1f}"


def _count_cell(cell: dict) -> str:
    """``mean ± half-width`` of a plain number (not a percentage), two decimals."""
    return f"{cell['mean']:.2f}" if cell["ci95"] is None else f"{cell['mean']:.2f} ± {cell['ci95']:.2f}"


def _metric_values(setting: dict, key: str) -> list[float]:
    return [r["metrics"][key] for r in setting["runs"]]


def _row_cells(setting: dict) -> list[str]:
    s = setting["summary"]
    cells = []
    for key, _ in COLUMNS:
        cells.append(_count_cell(s[key]) if key == "atoms99" else format_cell(s[key]))
    return cells


def ablation_table(results: dict) -> str:
    """Granularity (g = 1, 2, 4, 8 at k = 8 atoms) and top-k budget (k = 1, 2, 4, 8, R) per stream."""
    lines = ["| stream | atoms per unit g | units kept | " + " | ".join(h for _, h in COLUMNS)
             + " | Last − (g = 1, k = 8), paired |", "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for stream, res in results["streams"].items():
        runs = res["runs"]
        ref = runs.get("g1_k8")
        for key, setting in runs.items():
            g, k = setting["group"], setting["top_k"]
            kept = "all" if k is None else str(k // g)
            diff = "—" if ref is None or key == "g1_k8" else signed_cell(
                paired_difference(_metric_values(setting, "last"), _metric_values(ref, "last")))
            name = f"**{g}**" if key == "g1_k8" else str(g)
            lines.append(f"| {stream} | {name} | {kept} (k = {'R' if k is None else k} atoms) | "
                         + " | ".join(_row_cells(setting)) + f" | {diff} |")
    seeds = results["seeds"]
    per_row = " per row, the main job's data and atoms"
    note = (f"\n\n{seeds_phrase(seeds, per_row)}; cells are "
            f"{cells_phrase(seeds, 'mean ± 95 % CI half-width over seeds')}, in % (atoms for 99 %: a count). "
            "A unit of g atoms gets one "
            "weight from the score σ_u = Σ_{i∈u} s_i / √g; the top-k budget counts atoms, so k = 8 keeps 8/g units. "
            "The row g = 1, k = 8 (bold) is MoRAM with the main job's settings. atoms for 99 %: per input of every "
            "domain after the last task, layer 1, inputs with any weight; own-task share: the mean share of each "
            "domain's own atoms in the weight on its inputs (layer 1). The last column is the "
            + ("paired difference over seeds." if len(seeds) > 1 else "difference in the one run."))
    if results.get("steps_override") is not None:
        note += f" Steps per task overridden to {results['steps_override']} (a quick check, not the main settings)."
    if results.get("environment"):  # results written before it was recorded have none
        note += (f" Computed by {provenance.describe(results['environment'])}; another NumPy or BLAS rounds "
                 "differently and gives other numbers (`moram_ref/provenance.py`).")
    return "\n".join(lines) + note


def _share_table(share: np.ndarray, tasks: list[str]) -> list[str]:
    lines = ["| atoms of ↓ / inputs of → | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for g, row in enumerate(share):
        lines.append(f"| {tasks[g]} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return lines


def routing_table(results: dict) -> str:
    """MoRAM's routing (g = 1, k = 8) per stream: weight shares after task 1, 2 and the last; per-domain
    silencing and atoms for 99 %; key norms over training. Means over seeds."""
    out = []
    for stream, res in results["streams"].items():
        if "g1_k8" not in res["runs"]:
            continue
        runs, tasks = res["runs"]["g1_k8"]["runs"], res["tasks"]
        n_layers = len(runs[0]["routing"][0])
        rec = lambda t, layer, key: np.mean([r["routing"][t][layer][key] for r in runs], axis=0)  # noqa: E731
        for t in sorted({0, min(1, len(tasks) - 1), len(tasks) - 1}):
            out += [f"**{stream}, share of the weight on each domain's inputs, layer 1, after {tasks[t]}**", ""]
            out += _share_table(rec(t, 0, "share"), tasks) + [""]
        out += [f"**{stream}, after the last task, per domain**", "",
                "| layer | quantity | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for layer in range(n_layers):
            share = rec(-1, layer, "share")
            own = " | ".join(f"{share[d, d]:.2f}" for d in range(len(tasks)))
            out.append(f"| {layer + 1} | own atoms' share | {own} |")
            out.append(f"| {layer + 1} | inputs silenced by δ | "
                       + " | ".join(f"{100 * v:.1f} %" for v in rec(-1, layer, "silent")) + " |")
            out.append(f"| {layer + 1} | atoms for 99 % | " + " | ".join(f"{v:.2f}" for v in rec(-1, layer, "atoms99"))
                       + " |")
        out += ["", f"**{stream}, mean key norm ‖A_i‖ of each task's atoms (frozen after its task)**", "",
                "| layer | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for layer in range(n_layers):
            out.append(f"| {layer + 1} | " + " | ".join(f"{v:.3f}" for v in rec(-1, layer, "key_norm")) + " |")
        out.append("")
    seeds = results["seeds"]
    over = "means over" if len(seeds) > 1 else "from"
    out.append(f"MoRAM with the main job's settings (r = k = 8, τ = 0.01, δ = 0.2 at evaluation), {over} "
               f"{seeds_phrase(seeds, None).lower()}. Shares: of the total weight Σw on a domain's test inputs, the part each "
               "task's atoms take (in each seed a column sums to 1, or to 0 when δ silences every input of the "
               "domain, so a mean column can sum to less). Atoms for 99 %: over inputs that keep any weight. Key "
               "norms: a fresh key is uniform in ±1/√d_in per entry, norm ≈ 1/√3 ≈ 0.58; keys are frozen at the "
               "end of their task, so each task's norm is final once its task ends.")
    return "\n".join(out)


def takeover_table(results: dict) -> str:
    """The takeover grid: digits with / without LayerNorm × τ × lr × steps."""
    head = ("| LayerNorm | τ | lr | steps | newest atoms' share on earlier domains | own atoms' share | key norm "
            "last / first task | key–input alignment, first task | …, last task | input coherence | Last |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["takeover"]["cells"]:
        s = c["summary"]
        f2 = lambda k: _count_cell(s[k])  # noqa: E731
        lines.append(f"| {'on' if c['layer_norm'] else 'off'} | {c['temperature']} | {c['lr']} | {c['steps']} | "
                     f"{format_cell(s['newest'])} | {format_cell(s['own'])} | {f2('key_norm_ratio')} | "
                     f"{f2('alignment_first')} | {f2('alignment_last')} | {s['coherence']['mean']:.2f} | "
                     f"{format_cell(s['last'])} |")
    pooled = []
    for layer_norm in (True, False):
        runs = [r for c in results["takeover"]["cells"] if c["layer_norm"] == layer_norm for r in c["runs"]]
        if len(runs) > 2:
            newest = np.array([r["newest"] for r in runs])
            ratio = np.array([r["key_norm_ratio"] for r in runs])
            spread = newest.std() > 0 and ratio.std() > 0  # a correlation needs both to vary
            pooled.append(f"LayerNorm {'on' if layer_norm else 'off'}: the newest atoms take over half the weight in "
                          f"{int(np.sum(newest > 0.5))} of {len(runs)} runs (mean share {100 * newest.mean():.1f} %); "
                          f"correlation of that share with the key-norm ratio over the runs "
                          + (f"{np.corrcoef(newest, ratio)[0, 1]:.2f}" if spread else
                             "undefined (one of them is the same in every run)"))
    seeds = results["seeds"]
    return "\n".join(lines) + ("\n\nPooled over the grid: " + "; ".join(pooled) + "." if pooled else "") + (
        f"\n\nDigits stream, MoRAM (r = k = 8, δ = 0.2 at evaluation), {seeds_phrase(seeds, None).lower()}, layer 1, after "
        f"the last domain; {cells_phrase(seeds, 'mean ± 95 % CI over seeds')}; shares and Last in %. Newest atoms' "
        "share: the part of the weight "
        "on the four earlier domains' inputs that the last domain's atoms take (20 % would be an even split over 5 "
        "tasks). Key–input alignment: the mean cosine between a task's keys and the mean direction of the layer's "
        "inputs. Input coherence: the length of the mean unit input (1: every input points the same way).")
