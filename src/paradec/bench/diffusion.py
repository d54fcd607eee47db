"""``paradec bench --suite parallel``: quality against parallelism of the diffusion decoders on the
synthetic ParallelBench-like tasks (``diffusion/tasks.py``), per task and decoder.

Every contender decodes the same seeded examples greedily. Per task and contender: exact match
(``Example.check``: any valid answer counts), forwards, positions decided per forward, the forward
ratio against the one-token-per-step baseline (``one-per-step``: how many times fewer forwards), and
rows read per forward (what the prefix / dual caches save: a proxy for a forward's cost) and wall
time (recorded for timed runs; the counts do not depend on the machine). The
lossless decoder's output is compared token for token with the baseline's. ``ar-order`` decodes
left to right, one position per forward (blocks of one): the autoregressive order on the same model.

Where parallel decoding loses quality is read per task: the *dependent* tasks (``tasks.DEPENDENT``:
several valid answers, positions that must agree with each other) are where committing positions
independently can mix two answers into a non-answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParadecError
from ..diffusion import tasks
from ..diffusion.decoders import BASELINE


@dataclass(frozen=True)
class Contender:
    label: str
    decoder: str
    options: dict = field(default_factory=dict)


BASELINE_LABEL = "one-per-step"
CONTENDERS = (  # the default set, in report order; options on top of the run's block length
    Contender(BASELINE_LABEL, BASELINE),
    Contender("ar-order", BASELINE, {"block_length": 1}),
    Contender("steps-half", BASELINE, {"steps_fraction": 2}),
    Contender("steps-quarter", BASELINE, {"steps_fraction": 4}),
    Contender("threshold-0.9", "threshold", {"threshold": 0.9}),
    Contender("threshold-0.7", "threshold", {"threshold": 0.7}),
    Contender("threshold-0.5", "threshold", {"threshold": 0.5}),
    Contender("threshold-0.9-prefix", "threshold", {"threshold": 0.9, "cache": "prefix"}),
    Contender("threshold-0.9-dual", "threshold", {"threshold": 0.9, "cache": "dual"}),
    Contender("factor-1", "factor", {"factor": 1.0}),
    Contender("localleap", "localleap"),
    Contender("credit", "credit"),
    Contender("early-commit", "early_commit"),
    Contender("lossless", "lossless"),
    Contender("learned", "learned"),
)


def resolve(methods: str, extra: dict[str, dict]) -> list[Contender]:
    """Contenders from ``--methods``: 'default' / 'all' (the set above), or comma-separated labels of
    it or decoder names (with their defaults); ``extra`` (``--method-options``) adds options by label
    or name. The baseline always runs first."""
    from ..diffusion import learned, lossless  # noqa: F401  (they register themselves)
    from ..diffusion.decoders import DECODERS

    by_label = {c.label: c for c in CONTENDERS}
    if methods in ("default", "all"):
        chosen = list(CONTENDERS)
    else:
        chosen = []
        for word in (w.strip() for w in methods.split(",")):
            if word in by_label:
                chosen.append(by_label[word])
            elif word in DECODERS:
                chosen.append(Contender(word, word))
            elif word:
                raise ParadecError(f"unknown contender '{word}'; choose labels ({', '.join(by_label)}) "
                                   f"or decoders ({', '.join(sorted(DECODERS))})")
    chosen = [by_label[BASELINE_LABEL]] + [c for c in chosen if c.label != BASELINE_LABEL]
    unknown = set(extra) - {c.label for c in chosen} - {c.decoder for c in chosen}
    if unknown:
        raise ParadecError(f"--method-options names contender(s) not in this run: {', '.join(sorted(unknown))}")
    return [Contender(c.label, c.decoder, {**c.options, **extra.get(c.decoder, {}), **extra.get(c.label, {})})
            for c in chosen]


def decoder_options(c: Contender, block_length: int) -> dict:
    """The contender's decoder options at this block length (``steps_fraction`` k: block_length / k steps)."""
    options = {"block_length": block_length, **c.options}
    k = options.pop("steps_fraction", None)
    if k is not None:
        options["steps"] = max(1, options["block_length"] // k)
    return options


def run(model, contenders: list[Contender], per_task: int, seed: int, gen_length: int, block_length: int,
        task_names: list[str] | None = None, progress=None) -> tuple[list[dict], dict[str, str]]:
    """Decode every example with every contender; one record per (contender, example), and the
    contenders that could not run (label → why)."""
    from ..api import encode_prompt
    from ..sampling import SamplingParams
    from ..diffusion.decoders import make_decoder
    from ..diffusion.loop import denoise

    names = task_names or list(tasks.TASKS)
    examples = tasks.sample_examples(per_task * len(names), seed, names)
    decoders, unavailable = {}, {}
    for c in contenders:
        try:
            decoders[c.label] = make_decoder(c.decoder, model, **decoder_options(c, block_length))
        except ParadecError as exc:
            if c.label == BASELINE_LABEL:
                raise
            unavailable[c.label] = str(exc)
    if progress is not None:
        progress.start(len(examples) * len(decoders))
    records = []
    for i, ex in enumerate(examples):
        for label, decoder in decoders.items():
            if progress is not None:
                progress.describe(f"{label} {ex.task} #{i}")
            rows = [0]
            start = time.perf_counter()
            out = drain(denoise(model, decoder, encode_prompt(model, ex.prompt), SamplingParams(), gen_length,
                                trace=lambda canvas, *_: rows.__setitem__(0, canvas.rows)))
            seconds = time.perf_counter() - start
            s = out.stats
            records.append({"contender": label, "decoder": decoder.name, "task": ex.task, "example": i,
                            "prompt": ex.prompt, "text": out.text, "token_ids": out.token_ids, "correct": ex.check(out.text),
                            "forwards": s.forward_passes, "decided": s.accepted_tokens + s.forward_passes,
                            "new_tokens": s.new_tokens, "rows": rows[0], "seconds": seconds})
            if progress is not None:
                progress.advance()
    return records, unavailable


def drain(loop):
    """Run a denoising loop to its end; its ``Result``."""
    while True:
        try:
            next(loop)
        except StopIteration as end:
            return end.value


def summarize(records: list[dict], labels: list[str]) -> dict:
    """label → task (and 'overall') → exact match, forwards, positions per forward, forward ratio and
    wall-time ratio vs the baseline (how many times fewer / faster), and equality with the baseline's
    tokens. Recomputed from the records alone."""
    base = {r["example"]: r for r in records if r["contender"] == BASELINE_LABEL}
    out: dict = {}
    for label in labels:
        rows = [r for r in records if r["contender"] == label]
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["task"], []).append(r)
        groups["overall"] = rows
        out[label] = {}
        for task, rs in groups.items():
            forwards = sum(r["forwards"] for r in rs)
            base_forwards = sum(base[r["example"]]["forwards"] for r in rs)
            seconds, base_seconds = sum(r["seconds"] for r in rs), sum(base[r["example"]]["seconds"] for r in rs)
            out[label][task] = {
                "examples": len(rs), "exact": sum(r["correct"] for r in rs) / len(rs),
                "forwards": forwards, "positions_per_forward": sum(r["decided"] for r in rs) / max(forwards, 1),
                "forward_ratio": base_forwards / max(forwards, 1),
                "rows_per_forward": sum(r["rows"] for r in rs) / max(forwards, 1),
                "same_as_baseline": sum(r["token_ids"] == base[r["example"]]["token_ids"] for r in rs) / len(rs),
                "seconds": seconds, "time_ratio": base_seconds / seconds if seconds else 0.0,
            }
    return out


def markdown(summary: dict, task_names: list[str], meta: dict, unavailable: dict[str, str]) -> str:
    lines = [f"# paradec bench --suite parallel: {meta['model']}", "", f"`{meta['command']}`", "",
             f"{meta['per_task']} examples per task, generation length {meta['gen_length']}, block length "
             f"{meta['block_length']}, greedy. Cells: exact match / forward ratio against one-per-step "
             "(x times fewer forwards). Dependent tasks (several valid answers) are marked *.", ""]
    if "threads" in meta:  # a timed run: wall times are only comparable within it
        lines += [f"Wall times: {meta['threads']} thread(s), {meta.get('cpu_count')} CPUs, load average "
                  f"{meta.get('load_before')} before / {meta.get('load_after')} after; contenders interleaved "
                  "per example.", ""]
    cols = task_names + ["overall"]
    lines.append("| contender | " + " | ".join(t + ("*" if t in tasks.DEPENDENT else "") for t in cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for label, per in summary.items():
        cells = [f"{per[t]['exact']:.2f} / {per[t]['forward_ratio']:.2f}x" if t in per else "-" for t in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Positions decided per forward (overall), identical output to one-per-step:", ""]
    for label, per in summary.items():
        o = per["overall"]
        lines.append(f"- {label}: {o['positions_per_forward']:.2f} positions/forward, {o['forwards']} forwards "
                     f"of {o['rows_per_forward']:.0f} rows on average, {o['seconds']:.2f} s "
                     f"({o['time_ratio']:.2f}x one-per-step's speed), "
                     f"same tokens as one-per-step on {o['same_as_baseline']:.0%} of the examples")
    lines += ["", "Where parallel decoding loses quality (exact match more than 2 points below one-per-step):", ""]
    losses, base = [], summary[BASELINE_LABEL]
    for label, per in summary.items():
        for t in task_names:
            if t in per and per[t]["exact"] < base[t]["exact"] - 0.02:
                losses.append(f"- {label} on {t}{' (dependent)' if t in tasks.DEPENDENT else ''}: "
                              f"{base[t]['exact']:.2f} → {per[t]['exact']:.2f} at {per[t]['forward_ratio']:.2f}x fewer forwards")
    lines += losses or ["- none"]
    for label, why in unavailable.items():
        lines.append(f"\n{label}: unavailable: {why}")
    return "\n".join(lines) + "\n"


AXES = {"positions_per_forward": "positions decided per forward",
        "time_ratio": "x one-per-step's speed (wall time)"}


def plot(summary: dict, task_names: list[str], path: Path, x: str = "positions_per_forward") -> Path | None:
    """Exact match against ``x`` (a summary field of ``AXES``), one panel per task (and overall)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = task_names + ["overall"]
    width = 3
    rows = -(-len(cols) // width)
    fig, axes = plt.subplots(rows, width, figsize=(4 * width, 3.2 * rows), squeeze=False)
    markers = "osD^v<>phX*P8H"
    for ax, task in zip(axes.flat, cols):
        for i, (label, per) in enumerate(summary.items()):
            if task in per:
                ax.scatter(per[task][x], per[task]["exact"], marker=markers[i % len(markers)], label=label)
        ax.set_title(task + (" (dependent)" if task in tasks.DEPENDENT else ""))
        ax.set_xlabel(AXES[x])
        ax.set_ylabel("exact match")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)  # beside the panels
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(out: Path, records: list[dict], summary: dict, task_names: list[str], meta: dict,
              unavailable: dict[str, str]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "parallel.json", "md": out / "parallel.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "summary": summary, "unavailable": unavailable,
                                         "records": records}, indent=1) + "\n")
    paths["md"].write_text(markdown(summary, task_names, meta, unavailable))
    if plot(summary, task_names, out / "parallel.png"):
        paths["png"] = out / "parallel.png"
        paths["time_png"] = plot(summary, task_names, out / "parallel-time.png", x="time_ratio")
    return paths
