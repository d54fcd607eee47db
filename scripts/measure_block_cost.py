"""Cost of one target forward over k new rows relative to k = 1, with and without HFTarget's
padding of 2-3 row float32 blocks to 4 rows (median of 25 forwards after a chat prompt).

    python scripts/measure_block_cost.py [--dtype float32] [--max-rows 8]

Measured 2026-11-22 on the (nearly) idle 2-core machine, float32, three runs (k=1 ≈ 42-61 ms):
k=3 2.0-2.9x raw vs 1.5-1.6x padded (padding pays); k=2 1.66-1.74x raw vs 1.58-2.18x padded
(inconclusive at this noise); k=4 1.4-2.1x.
"""

import argparse
import time

import paradec  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

from paradec.model.hf import HFTarget


def median_forward(model, prompt_ids, k: int, pad: bool, runs: int = 25) -> float:
    HFTarget.PAD_ROWS = {model.dtype: 4} if pad else {}
    target = model.target()
    target.prefill(prompt_ids)
    mask = torch.tril(torch.ones(k, k, dtype=torch.bool))  # a chain of k rows
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        target.forward([5] * k, list(range(k)), mask)
        times.append(time.perf_counter() - start)
        target.commit([0])
    return sorted(times)[runs // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-rows", type=int, default=8)
    args = parser.parse_args()
    padding = dict(HFTarget.PAD_ROWS)
    model = paradec.load(args.model, args.dtype)
    ids = paradec.encode_prompt(model, "Tell me about the history of Rome in detail.", chat=True)
    base = median_forward(model, ids, 1, pad=False)
    print(f"k=1: {base * 1e3:.1f} ms")
    for k in range(2, args.max_rows + 1):
        raw, padded = median_forward(model, ids, k, False) / base, median_forward(model, ids, k, True) / base
        print(f"k={k}: {raw:.2f}x raw, {padded:.2f}x with padding to 4")
    HFTarget.PAD_ROWS = padding


if __name__ == "__main__":
    main()
