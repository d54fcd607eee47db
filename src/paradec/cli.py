"""The ``paradec`` command line: generate, methods, models (bench and serve plug in as subcommands)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings

from .errors import ParadecError

# Modules that add a subcommand with ``add_parser(subparsers)``; they import heavy deps lazily.
SUBCOMMAND_MODULES: tuple[str, ...] = ("paradec.bench.cli", "paradec.bench.cost", "paradec.bench.serving",
                                       "paradec.bench.extraction", "paradec.serve.cli", "paradec.parallel.cli",
                                       "paradec.train.cli")

EXAMPLE_PROMPT = (
    "Summarise this passage in two sentences.\n\n"
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans seven "
    "million square kilometres, of which five and a half million are covered by the rainforest. The "
    "region includes territory belonging to nine nations, and the majority of the forest is contained "
    "within Brazil, with 60% of the rainforest, followed by Peru with 13% and Colombia with 10%."
)

DTYPE_HELP = (
    "weights and compute dtype (default: %(default)s). On the native runtime every lossless method's "
    "greedy output equals plain greedy decoding token for token in every dtype and --quant (a row's "
    "logits do not depend on the other rows of its block); on --runtime hf that holds in float32/float64 "
    "up to near ties, and bfloat16 outputs drift. README: What is guaranteed"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    from .model import DEFAULT_DTYPE, DEFAULT_MODEL, DTYPES

    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, Hugging Face model directory or .gguf file (default: %(default)s)")
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=list(DTYPES), help=DTYPE_HELP)
    add_runtime_args(p)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    from .runtime import DEFAULT_QUANT, DEFAULT_RUNTIME, QUANTS, RUNTIMES

    p.add_argument("--runtime", default=DEFAULT_RUNTIME, choices=RUNTIMES,
                   help="what runs the model: 'native' (paradec's own: packed weights, C++ kernels built once with "
                        "the machine's compiler, bit-identical rows) or 'hf' (the transformers model, the reference; "
                        "any architecture) (default: %(default)s)")
    p.add_argument("--quant", default=DEFAULT_QUANT, choices=QUANTS,
                   help="weights of the native runtime: 'auto' (in bfloat16: a GGUF file's own blocks as they are, "
                        "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K, other block types dequantised with a notice; "
                        "otherwise none), 'none' (in --dtype), 'int8' (8-bit blocks) or 'int4' (4-bit blocks; embeddings and "
                        "LM head 8-bit); quantised layers multiply with 8-bit activations, as llama.cpp does "
                        "(default: %(default)s)")
    p.add_argument("--require-kernels", action="store_true",
                   help="fail when the native runtime's C++ kernels cannot be built or loaded, instead of falling "
                        "back to plain torch, whose rows are not bit-identical (also: PARADEC_REQUIRE_KERNELS=1)")


def add_placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-threads", type=int, metavar="N",
                   help="pearl: threads of the draft model's own pool, on cores of its own (default: from the "
                        "machine's cores and the two models' measured costs; one core: the draft drafts in turn)")
    p.add_argument("--target-threads", type=int, metavar="M",
                   help="pearl: threads the target verifies with while the draft drafts (default: the other cores)")


def placement_options(args: argparse.Namespace) -> dict:
    """pearl's --draft-threads / --target-threads as its method options (another method refuses them)."""
    return {name: getattr(args, name) for name in ("draft_threads", "target_threads") if getattr(args, name) is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import encode_prompt, stream
    from .model import load
    from .sampling import SamplingParams

    SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fail before loading
    if args.n < 1:
        raise ParadecError(f"--n must be at least 1, got {args.n}")
    if args.html and (args.n > 1 or args.first_finish):
        raise ParadecError("--html shows one generation: not with --n or --first-finish")
    model = load(args.model, args.dtype, args.runtime, args.quant)
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict):
        raise ParadecError("--method-options must be a JSON object")
    if args.draft:
        options["draft"] = args.draft
    options.update(placement_options(args))
    chat = args.chat or args.prompt is None  # the built-in example is a chat request
    prompt_ids = encode_prompt(model, args.prompt if args.prompt is not None else EXAMPLE_PROMPT, chat)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, stop=args.stop, method_options=options)
    if (constraint := constraint_of(args)) is not None:
        from .constraints import compile_constraint

        kwargs["constraint"] = compile_constraint(constraint, model)  # a bad one: exit 2 before decoding
    if args.n > 1 or args.first_finish:
        return print_branches(args, model, prompt_ids, kwargs)
    trace = None
    if args.html:
        from .viz import Trace

        trace = Trace()
    s = stream(model, prompt_ids, args.method, on_step=trace.step if trace is not None else None, **kwargs)
    for piece in s:
        if not args.json:
            print(piece, end="", flush=True)
    if trace is not None:
        from .viz import write_view

        try:
            write_view(args.html, trace, s.result, model.tokenizer, prompt_ids, model.name)
        except OSError as exc:
            raise ParadecError(f"cannot write the view to {args.html}: {exc.strerror or exc}") from exc
    if args.json:
        print(json.dumps(s.result.to_dict()))
    else:
        print()
        if trace is not None:
            print(f"paradec: wrote the decoding view to {args.html}", file=sys.stderr)
        print(s.result.stats.summary(), file=sys.stderr)
    if s.result.stats.constraint == "incomplete":
        print(f"paradec: warning: the output does not complete the constraint (stop: {s.result.stats.stop_reason}); "
              "raise --max-new-tokens", file=sys.stderr)
    return 0


def constraint_of(args: argparse.Namespace):
    """The ``paradec.Constraint`` of --json-schema FILE, --regex or --grammar FILE (None without one)."""
    from .constraints import Constraint

    def read(path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise ParadecError(f"cannot read {path}: {exc.strerror or exc}") from None

    if args.json_schema:
        return Constraint.json_schema(read(args.json_schema))
    if args.regex is not None:
        return Constraint.regex(args.regex)
    if args.grammar:
        return Constraint.grammar(read(args.grammar))
    return None


def print_branches(args: argparse.Namespace, model, prompt, kwargs: dict) -> int:
    """``--n N``: N samples decoded together; ``--first-finish``: only the first of them to end."""
    from .parallel.branches import first_finish, generate_n

    if args.first_finish:
        out = first_finish(model, prompt, args.n, args.method, **kwargs)
        if args.json:
            print(json.dumps({"winner": out.winner, "results": [r.to_dict() for r in out.results]}))
            return 0
        print(out.result.text)
        print(f"[first-finish] branch {out.winner} of {args.n} ended first; "
              + out.result.stats.summary(), file=sys.stderr)
        return 0
    results = generate_n(model, prompt, args.n, args.method, **kwargs)
    if args.json:
        print(json.dumps([r.to_dict() for r in results]))
        return 0
    for i, r in enumerate(results):
        print(f"--- sample {i} ---\n{r.text}")
        print(r.stats.summary(), file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import BUILTIN_METHODS, DIFFUSION_DECODERS

    width = max(len(n) for n in [*BUILTIN_METHODS, *DIFFUSION_DECODERS])
    for name in sorted(BUILTIN_METHODS):
        print(f"{name:<{width}}  {BUILTIN_METHODS[name].summary}")
    print("\ndiffusion LMs (e.g. --model dllm-demo; docs/diffusion.md):")
    for name, summary in DIFFUSION_DECODERS.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .model import BUILTIN_MODELS

    width = max(len(n) for n in BUILTIN_MODELS)
    for name, builtin in BUILTIN_MODELS.items():
        print(f"{name:<{width}}  {builtin.description}  [install: {builtin.install}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paradec", description="Parallel decoding for language models: faster generation, same output.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with a decoding method, streamed to the terminal")
    g.add_argument("prompt", nargs="?", help="the prompt (default: a built-in summarisation example)")
    add_model_args(g)
    g.add_argument("--method", default="auto",
                   help="decoding method, see `paradec methods`; 'auto' picks the fastest lossless one step by step, "
                        "from this machine's cost curve (measured once, a few seconds, cached) and the drafts' "
                        "acceptance; 'plain' is no parallel decoding (default: %(default)s)")
    g.add_argument("--draft", metavar="MODEL",
                   help="draft model for the `draft` method, and a candidate of `auto` (same kinds of spec as --model)")
    g.add_argument("--method-options", metavar="JSON", help='method config as a JSON object, e.g. \'{"max_draft": 8}\'')
    add_placement_args(g)
    g.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens; 0 = off (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default)")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--json", action="store_true", help='print one JSON object {"text", "token_ids", "stats"} instead of streaming '
                                                       "(with --n: a list of them)")
    g.add_argument("--n", type=int, default=1, help="samples of the prompt, decoded together (one forward per step for "
                                                   "all; the prompt is read once); sampling seeds are --seed + i "
                                                   "(default: %(default)s)")
    g.add_argument("--first-finish", action="store_true",
                   help="First Finish Search: print only the first of the --n samples to end")
    shape = g.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE",
                       help="structured output: the text is JSON that validates against this JSON Schema (written in one "
                            "layout, keys' quotes and separators forced, so drafted for free)")
    shape.add_argument("--regex", metavar="REGEX", help="structured output: the whole text matches this regular expression")
    shape.add_argument("--grammar", metavar="FILE",
                       help="structured output: the text is a sentence of this grammar, GBNF (llama.cpp) or Lark "
                            "(llguidance). With any of the three, every method's greedy output equals plain decoding "
                            "under the same constraint, and the tokens the grammar forces are drafted for free "
                            "(needs pip install 'paradec[structured]')")
    g.add_argument("--html", metavar="PATH",
                   help="also write a page (one self-contained HTML file) showing each step's draft tree, accepted "
                        "path and bonus token, and the output coloured by how each token was produced")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("methods", help="list decoding methods")
    m.set_defaults(func=cmd_methods)
    ms = sub.add_parser("models", help="list built-in model names")
    ms.set_defaults(func=cmd_models)

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are never downloaded
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not sys.warnoptions:  # libraries' deprecation notices are for developers (`python -W default` shows them)
        warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="paradec: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "require_kernels", False):  # read where the runtime is built, here or in a server's replicas
        os.environ["PARADEC_REQUIRE_KERNELS"] = "1"
    try:
        return args.func(args)
    except ParadecError as exc:
        print(f"paradec: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"paradec: error: --method-options is not valid JSON: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
