"""Figures from per-turn records, and the files a run leaves: JSON, Markdown, PNG, a terminal table.

Every figure is recomputed from the records (``summarize``), so the JSON alone reproduces the report.

- speedup = total plain time / total method time over the same turns (medians over repeats), with
  a 95 % bootstrap interval (``speedup_interval``); a cell whose interval includes 1.0 is marked
  ``≈``: the run cannot tell that method from plain decoding there;
- tokens per forward = (accepted draft tokens + forward passes) / forward passes;
- exactness: per turn, token-id equality with plain decoding (and with transformers' greedy
  ``generate``), with the first position where they differ.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

BASELINE = "plain"
HF_REFERENCE = "hf-generate"
OVERALL = "overall"
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 4000
SIMILAR = "≈"  # marks a speedup whose interval includes 1.0


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (a length difference counts); None when equal.

    >>> first_divergence([5, 6, 7], [5, 6, 7]), first_divergence([5, 6, 7], [5, 9, 7]), first_divergence([5], [5, 6])
    (None, 1, 1)
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def annotate_exactness(records: list[dict]) -> None:
    """Add ``equal_plain``/``diverge_plain`` and ``equal_hf``/``diverge_hf`` to each successful record."""
    refs = {(r["method"], r["prompt_id"], r["turn"], r["repeat"]): r["token_ids"] for r in records if "token_ids" in r}
    for r in records:
        if "token_ids" not in r:
            continue
        for ref, key in ((BASELINE, "plain"), (HF_REFERENCE, "hf")):
            other = refs.get((ref, r["prompt_id"], r["turn"], r["repeat"]))
            if other is not None:
                d = first_divergence(r["token_ids"], other)
                r[f"equal_{key}"], r[f"diverge_{key}"] = d is None, d


def _groups(records: list[dict]) -> dict[str, dict[tuple, list[dict]]]:
    """method → (prompt_id, turn) → successful records, by repeat."""
    out: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if "seconds" in r:
            out[r["method"]][(r["prompt_id"], r["turn"])].append(r)
    return out


def speedup_interval(method_turns: dict[tuple, list[dict]], plain_turns: dict[tuple, list[dict]], keys: list[tuple],
                     seed: int = 0) -> tuple[float, float] | None:
    """A percentile-bootstrap interval (``CONFIDENCE``) of the speedup over the turns ``keys``.

    Each replicate resamples the *prompts* with replacement (a prompt's turns go together: turn 2
    continues turn 1) and, inside every turn, the *repeats*, plain and method paired by repeat
    (they ran side by side, so a load spike hits both); then recomputes the speedup as the point
    estimate does: sum of plain medians / sum of method medians. Prompts carry the real spread of
    a method's speedup over texts, repeats the timing noise. Seeded: the same records give the same
    interval. None when there is nothing to resample (one prompt, one repeat).
    """
    rng = np.random.default_rng(seed)
    B = BOOTSTRAP_SAMPLES
    prompts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for k in keys:
        plain = {r["repeat"]: r["seconds"] for r in plain_turns[k]}
        method = {r["repeat"]: r["seconds"] for r in method_turns[k]}
        reps = sorted(plain.keys() & method.keys())
        if reps:
            prompts[k[0]].append((np.array([plain[r] for r in reps]), np.array([method[r] for r in reps])))
    turns = [t for ts in prompts.values() for t in ts]
    if not turns or (len(prompts) == 1 and all(len(p) == 1 for p, _ in turns)):
        return None
    # per prompt, B replicates of its summed plain and method medians over resampled repeats: (U, B) each
    plain_sums, method_sums = np.zeros((len(prompts), B)), np.zeros((len(prompts), B))
    for u, ts in enumerate(prompts.values()):
        for p, m in ts:
            pick = rng.integers(0, len(p), size=(B, len(p)))  # (B, repeats), the same draw for both: paired
            plain_sums[u] += np.median(p[pick], axis=1)
            method_sums[u] += np.median(m[pick], axis=1)
    drawn = rng.integers(0, len(prompts), size=(B, len(prompts)))  # (B, U): the prompts of each replicate
    column = np.arange(B)[:, None]
    ratios = plain_sums[drawn, column].sum(1) / method_sums[drawn, column].sum(1)  # (B,)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


def _stats(method_turns: dict[tuple, list[dict]], plain_turns: dict[tuple, list[dict]], keys: list[tuple],
           interval: bool) -> dict:
    keys = [k for k in keys if k in method_turns and k in plain_turns]
    if not keys:
        return {"turns": 0}
    med = lambda rs: statistics.median(r["seconds"] for r in rs)  # noqa: E731
    t_method = sum(med(method_turns[k]) for k in keys)
    t_plain = sum(med(plain_turns[k]) for k in keys)
    bounds = speedup_interval(method_turns, plain_turns, keys) if interval else None
    low, high = bounds or (None, None)
    firsts = [method_turns[k][0] for k in keys]  # greedy output is the same in every repeat; counts from the first
    tokens = sum(r["new_tokens"] for r in firsts)
    forwards = sum(r["forward_passes"] for r in firsts)
    accepted = sum(r["accepted_tokens"] for r in firsts)
    out = {
        "turns": len(keys),
        "seconds": t_method,
        "plain_seconds": t_plain,
        "speedup": t_plain / t_method if t_method > 0 else None,
        "speedup_low": low,  # the CONFIDENCE bootstrap interval; None for plain itself or nothing to resample
        "speedup_high": high,
        "new_tokens": tokens,
        "tokens_per_second": tokens / t_method if t_method > 0 else None,
        "forward_passes": forwards,
        "accepted_tokens": accepted,
        "tokens_per_forward": (accepted + forwards) / forwards if forwards else None,
    }
    for key in ("plain", "hf"):
        checked = [r for k in keys for r in method_turns[k] if f"equal_{key}" in r]
        if checked:
            bad = [r for r in checked if not r[f"equal_{key}"]]
            out[f"exact_{key}"] = {"checked": len(checked), "mismatches": len(bad),
                                  "first_divergence": [[r["prompt_id"], r["turn"], r["repeat"], r[f"diverge_{key}"]]
                                                       for r in bad]}
    return out


def summarize(records: list[dict], methods: list[str]) -> dict:
    """{method: {category | "overall": figures}} for the methods that produced records."""
    annotate_exactness(records)
    groups = _groups(records)
    plain = groups.get(BASELINE, {})
    categories = list(dict.fromkeys(r["category"] for r in records))
    out: dict = {}
    for m in methods:
        if m not in groups:
            continue
        turns, interval = groups[m], m != BASELINE
        out[m] = {c: _stats(turns, plain, [k for k in plain if plain[k][0]["category"] == c], interval) for c in categories}
        out[m][OVERALL] = _stats(turns, plain, list(plain), interval)
        errors = [r for r in records if r["method"] == m and "error" in r]
        if errors:
            out[m][OVERALL]["errors"] = len(errors)
    return out


# --- rendering ---------------------------------------------------------------------------------

def _fmt(x, spec=".2f", none="–") -> str:
    return none if x is None else format(x, spec)


def similar_to_plain(s: dict) -> bool:
    """Whether the speedup's interval includes 1.0 (the run cannot tell the method from plain decoding)."""
    return s.get("speedup_low") is not None and s["speedup_low"] <= 1.0 <= s["speedup_high"]


def _speedup(s: dict) -> str:
    """``1.21× (1.08–1.36)``; ``≈1.06× (0.97–1.15)`` when the interval includes 1.0."""
    if not s.get("turns"):
        return "–"
    text = f"{SIMILAR if similar_to_plain(s) else ''}{s['speedup']:.2f}×"
    if s.get("speedup_low") is not None:
        text += f" ({s['speedup_low']:.2f}–{s['speedup_high']:.2f})"
    return text


LEGEND = (f"Speedup = total plain-decoding time / total method time on the same turns (median over repeats), "
          f"with its {CONFIDENCE:.0%} bootstrap interval over prompts and repeats in brackets; "
          f"{SIMILAR} marks a speedup whose interval includes 1.00: this run cannot tell it from plain decoding.")


def _exact(s: dict, key: str) -> str:
    e = s.get(f"exact_{key}")
    if not e:
        return "–"
    if not e["mismatches"]:
        return f"{e['checked']}/{e['checked']}"
    firsts = ", ".join(f"{p}#{t + 1}@{d}" for p, t, _, d in e["first_divergence"][:3])
    return f"{e['checked'] - e['mismatches']}/{e['checked']} (first diff: {firsts})"


def table_rows(summary: dict, categories: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["method"] + categories + [OVERALL, "tok/s", "tokens/forward", "exact vs plain", "exact vs hf-generate"]
    rows = []
    for m, per in summary.items():
        o = per[OVERALL]
        rows.append([m] + [_speedup(per.get(c, {})) for c in categories] + [
            _speedup(o), _fmt(o.get("tokens_per_second"), ".1f"), _fmt(o.get("tokens_per_forward")),
            _exact(o, "plain"), _exact(o, "hf")])
    return header, rows


def _exact_count(s: dict, key: str) -> str:
    e = s.get(f"exact_{key}")
    return f"{e['checked'] - e['mismatches']}/{e['checked']}" if e else "–"


def terminal_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The terminal's table: one short line per method (overall figures), so that it fits 80 columns;
    speedups per category and first differences are in report.md."""
    header = ["method", "speedup", f"{CONFIDENCE:.0%} interval", "tok/s", "tok/fwd", "exact", "= hf"]
    rows = []
    for m, per in summary.items():
        o = per[OVERALL]
        has = o.get("turns") and o.get("speedup") is not None
        speedup = f"{SIMILAR if similar_to_plain(o) else ''}{o['speedup']:.2f}×" if has else "–"
        interval = f"{o['speedup_low']:.2f}–{o['speedup_high']:.2f}" if o.get("speedup_low") is not None else "–"
        rows.append([m, speedup, interval, _fmt(o.get("tokens_per_second"), ".1f"), _fmt(o.get("tokens_per_forward")),
                     _exact_count(o, "plain"), _exact_count(o, "hf")])
    return header, rows


TERMINAL_NOTE = (f"Overall figures. Speedup = total plain-decoding time / total method time on the same turns "
                 f"(median over repeats), with its {CONFIDENCE:.0%} bootstrap interval over prompts and repeats; "
                 f"{SIMILAR} marks a speedup whose interval includes 1.00. Exact = turns whose token ids equal plain "
                 f"decoding's (= hf: transformers' generate's). Per category and first differences: report.md.")


def rich_table(summary: dict, title: str = ""):
    from rich import box
    from rich.table import Table

    header, rows = terminal_rows(summary)
    table = Table(title=title or "speedup over plain decoding (same prompts, same run)", caption=TERMINAL_NOTE,
                  box=box.SIMPLE_HEAD, caption_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def markdown(summary: dict, categories: list[str], meta: dict, unavailable: dict[str, str]) -> str:
    header, rows = table_rows(summary, categories)
    lines = [f"# paradec bench: {meta.get('model')} ({meta.get('dtype')})", ""]
    lines += [f"Command: `{meta.get('command')}`", ""]
    lines += [f"- started {meta.get('started')}, {meta.get('prompts')} prompts ({', '.join(categories)}), "
              f"max_new_tokens {meta.get('max_new_tokens')}, repeats {meta.get('repeats')}, greedy, batch 1",
              f"- {meta.get('threads')} threads on {meta.get('cpu_count')} CPUs ({meta.get('processor')}), "
              f"torch {meta.get('torch')}",
              f"- load average (1/5/15 min) before {meta.get('load_before')} (with the run's own set-up), after "
              f"{meta.get('load_after')}, highest 1-min sample during the run {meta.get('load_max_1min')}",
              f"- CPUs other processes kept busy: {meta.get('others_before')} in a quiet moment after set-up, "
              f"{meta.get('others_during')} on average during the run"]
    lines += [f"- **warning:** {w}" for w in meta.get("warnings", [])]
    lines += ["", LEGEND + " Exact = turns whose token ids equal the reference's "
              "(`prompt#turn@position` of the first difference otherwise).", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Per category", "",
              "| method | category | turns | tokens | seconds | tok/s | tokens/forward | forward passes | speedup |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, per in summary.items():
        for c in categories + [OVERALL]:
            s = per.get(c, {})
            if s.get("turns"):
                lines.append(f"| {m} | {c} | {s['turns']} | {s['new_tokens']} | {s['seconds']:.2f} | "
                             f"{_fmt(s['tokens_per_second'], '.1f')} | {_fmt(s['tokens_per_forward'])} | "
                             f"{s['forward_passes']} | {_speedup(s)} |")
    if unavailable:
        lines += ["", "## Not run", ""] + [f"- `{n}`: unavailable: {why}" for n, why in unavailable.items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict, categories: list[str], path: Path, title: str = "", peers: set[str] = frozenset()) -> None:
    """Grouped bars: speedup over plain per category (and overall), one bar per method, with its
    interval; peers hatched; bars whose interval includes 1.0 faded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in summary if m != BASELINE]
    groups = categories + [OVERALL]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * len(groups) * max(len(methods), 1) + 2), 4.5))
    width = 0.8 / max(len(methods), 1)
    top = 1.0
    for i, m in enumerate(methods):
        cells = [summary[m].get(g, {}) for g in groups]
        ys = [c.get("speedup") or 0.0 for c in cells]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, ys, width, label=m + (" (peer)" if m in peers else ""), hatch="//" if m in peers else None,
                      edgecolor="white" if m in peers else None)
        for bar, c in zip(bars, cells):
            if similar_to_plain(c):
                bar.set_alpha(0.35)
        known = [(x, y, c) for x, y, c in zip(xs, ys, cells) if c.get("speedup_low") is not None]
        if known:
            ax.errorbar([x for x, _, _ in known], [y for _, y, _ in known], fmt="none", ecolor="black", elinewidth=0.8,
                        capsize=2, yerr=[[y - c["speedup_low"] for _, y, c in known], [c["speedup_high"] - y for _, y, c in known]])
        top = max(top, *ys, *(c["speedup_high"] for _, _, c in known))
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, top * 1.1)
    ax.set_xticks(range(len(groups)), [g.replace("_", "\n") for g in groups])
    ax.set_ylabel(f"speedup over plain decoding ({CONFIDENCE:.0%} interval)")
    ax.set_title(f"{title}\nfaded: the interval includes 1.0" if title else "faded: the interval includes 1.0", fontsize=9)
    if methods:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=min(5, len(methods)), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(outdir: Path, records: list[dict], methods: list[str], categories: list[str], meta: dict,
              unavailable: dict[str, str]) -> tuple[dict, dict[str, Path]]:
    """Write results.json, report.md and speedup.png into ``outdir``; return the summary and the paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, methods)
    paths = {"json": outdir / "results.json", "markdown": outdir / "report.md", "plot": outdir / "speedup.png"}
    everything = {"meta": meta, "unavailable": unavailable, "summary": summary, "records": records}
    paths["json"].write_text(json.dumps(everything, indent=1))
    paths["markdown"].write_text(markdown(summary, categories, meta, unavailable))
    title = (f"{meta.get('model')} {meta.get('dtype')}, max_new_tokens {meta.get('max_new_tokens')}, "
             f"load before {meta.get('load_before')}")
    peers = {r["method"] for r in records if r.get("kind") == "peer"}
    plot(summary, categories, paths["plot"], title, peers)
    return summary, paths
