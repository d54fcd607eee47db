"""Count tokens per target forward and acceptance per draft depth of several methods on the benchmark's
prompts (held out from ``paradec train-drafter``'s data), greedy. Counts only: nothing is timed.

Every method decodes the same prompts (the first turn of each, chat template) for the same number of
tokens; greedy decoding is lossless, so all of them deliver the same tokens and only the number of
target forwards differs. Prints one JSON line per method: tokens per forward overall and per
category, draft nodes per forward, and per depth d the share of steps whose draft reached d whose
accepted path reached it too (``Stats.accepted[d] / Stats.drafted[d]``).

    python scripts/count_acceptance.py --methods ngram,recycling,medusa,eagle --limit 2 --max-new-tokens 64 \\
        --options '{"eagle": {"row_costs": [1, 1, 1, 1, 1.1, 1.1, 1.1, 1.1, 1.3]}}'

``--keep``: one drafter per method for all the prompts, as ``paradec bench`` and the server keep it
(what a drafter learnt on one prompt carries into the next); otherwise a new drafter per prompt.
"""

from __future__ import annotations

import argparse
import json

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

from paradec.api import encode_prompt
from paradec.bench.data import load_prompts
from paradec.drafters import make_drafter

CATEGORIES = "multi_turn,translation,summarization,qa,math_reasoning,rag,code"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--runtime", default="native")
    ap.add_argument("--methods", default="ngram,recycling,medusa,eagle")
    ap.add_argument("--options", default="{}", help="JSON: method → method options")
    ap.add_argument("--categories", default=CATEGORIES)
    ap.add_argument("--limit", type=int, default=2, help="prompts per category")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="one drafter per method across the prompts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = paradec.load(args.model, dtype=args.dtype, runtime=args.runtime)
    options = json.loads(args.options)
    prompts = load_prompts(args.categories.split(","), args.limit, args.seed)
    ids = [encode_prompt(model, p.turns[0], chat=True) for p in prompts]
    reference = None
    for method in args.methods.split(","):
        tokens = forwards = nodes = 0
        per_cat: dict[str, list[int]] = {}
        drafted: list[int] = []
        accepted: list[int] = []
        outputs = []
        kept = make_drafter(method, model, **options.get(method, {})) if args.keep else None
        for prompt, prompt_ids in zip(prompts, ids):
            if kept is not None:
                r = paradec.generate(model, prompt_ids, kept, max_new_tokens=args.max_new_tokens)
            else:
                r = paradec.generate(model, prompt_ids, method, max_new_tokens=args.max_new_tokens,
                                     method_options=options.get(method, {}))
            s = r.stats
            outputs.append(r.token_ids)
            got = s.accepted_tokens + s.forward_passes
            tokens, forwards, nodes = tokens + got, forwards + s.forward_passes, nodes + s.draft_nodes
            cat = per_cat.setdefault(prompt.category, [0, 0])
            cat[0] += got
            cat[1] += s.forward_passes
            for mine, theirs in ((drafted, s.drafted), (accepted, s.accepted)):
                mine.extend([0] * (len(theirs) - len(mine)))
                for d, v in enumerate(theirs):
                    mine[d] += v
        reference = reference or outputs
        print(json.dumps({
            "method": method,
            "same_tokens_as_first_method": outputs == reference,
            "prompts": len(prompts),
            "forwards": forwards,
            "tokens_per_forward": round(tokens / max(1, forwards), 3),
            "per_category": {c: round(t / max(1, f), 3) for c, (t, f) in per_cat.items()},
            "draft_nodes_per_forward": round(nodes / max(1, forwards), 2),
            "acceptance_per_depth": [round(a / d, 3) if d else None for a, d in zip(accepted, drafted)],
        }), flush=True)


if __name__ == "__main__":
    main()
