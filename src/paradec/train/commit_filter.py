"""Train a diffusion LM's learned commit filter (``paradec.diffusion.learned``, Learn2PD-style) on its
own decoding traces.

Traces come from the reference decode (one token per step): at every step, each masked position's
features (``learned.features``) and whether its current candidate equals the token the reference
decode finally put there. The filter, a two-layer MLP over those features, is fitted to these labels.

    python -m paradec.train.commit_filter --model DIR --out DIR/commit_filter.safetensors [--prompts FILE]

Prompts: a JSON-lines file of strings, or (by default) the synthetic tasks' training prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..diffusion.decoders import make_decoder
from ..diffusion.learned import CommitFilter, features
from ..diffusion.loop import denoise
from ..diffusion.tasks import sample_examples
from ..sampling import SamplingParams
from .dllm import write_manifest


def collect(model, prompts: list[list[int]], gen_length: int, block_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``prompts`` one token per step; return features (m, F) of every masked position at every
    step and labels (m,): 1 where the candidate equals the token finally decided there."""
    decoder = make_decoder("low_confidence", model, block_length=block_length)
    xs, ys = [], []
    for ids in prompts:
        steps = []

        def trace(canvas, b, view, selection):
            start, _ = canvas.block_range(b)
            steps.append((canvas, start, features(view), view.candidates()[0], view.masked.clone()))

        gen = denoise(model, decoder, ids, SamplingParams(), gen_length, trace=trace)
        for _ in gen:
            pass
        for canvas, start, feats, tokens, masked in steps:
            final = torch.tensor(canvas.tokens[start : start + len(tokens)])
            xs.append(feats[masked])
            ys.append((tokens[masked] == final[masked]).float())
    return torch.cat(xs), torch.cat(ys)


def train_filter(x: torch.Tensor, y: torch.Tensor, epochs: int = 200, seed: int = 0) -> CommitFilter:
    """Full-batch Adam on binary cross-entropy (the traces are small)."""
    torch.manual_seed(seed)
    net = CommitFilter()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    from ..api import encode_prompt
    from ..model import load

    p = argparse.ArgumentParser(prog="python -m paradec.train.commit_filter", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a diffusion LM (built-in name or directory)")
    p.add_argument("--out", required=True, help="where to write the filter (.safetensors)")
    p.add_argument("--prompts", help="JSON-lines file of prompt strings (default: the synthetic tasks' prompts)")
    p.add_argument("--count", type=int, default=400, help="prompts to trace (default: %(default)s)")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load(args.model, "float32")
    if args.prompts:
        texts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()][: args.count]
    else:
        texts = [ex.prompt for ex in sample_examples(args.count, seed=args.seed + 10_000, split="train")]
    x, y = collect(model, [encode_prompt(model, t) for t in texts], args.gen_length, args.block_length)
    net = train_filter(x, y, seed=args.seed)
    with torch.no_grad():
        pred = net(x) >= 0.9
    precision = float(y[pred].mean()) if pred.any() else float("nan")
    meta = {"model": args.model, "examples": int(len(y)), "final_fraction": round(float(y.mean()), 4),
            "precision_at_0.9": round(precision, 4), "command": "python -m paradec.train.commit_filter " + " ".join(sys.argv[1:] if argv is None else argv)}
    net.save(Path(args.out), meta)
    if (Path(args.out).parent / "MANIFEST.json").is_file():  # a shipped model's directory: its checksums include the filter
        write_manifest(Path(args.out).parent)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
