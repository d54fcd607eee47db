"""Regenerate docs/decoding_view.png: the decoding view of SmolLM2 (float32, auto) in headless Chromium.

    python scripts/view_screenshot.py [--out docs/decoding_view.png]

auto gets the cost curve by hand (``--costs``), so the picture does not depend on this machine's load.
Needs Debian's chromium (apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import paradec
from paradec.viz import Trace, write_view

PROMPT = ("Summarise in one sentence: The Amazon rainforest covers much of the Amazon basin of South America. "
          "The majority of the forest is contained within Brazil, with 60% of the rainforest.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/decoding_view.png")
    p.add_argument("--costs", default='{"2": 1.3, "4": 1.45, "8": 1.7, "16": 2.4}', help="auto's cost curve, JSON")
    args = p.parse_args()
    model = paradec.load("smollm2-135m", dtype="float32")
    prompt = paradec.encode_prompt(model, PROMPT, chat=True)
    trace = Trace()
    result = paradec.generate(model, prompt, max_new_tokens=48, on_step=trace.step,
                              method_options={"costs": json.loads(args.costs)})
    print(result.stats.summary())
    # show a step whose tree has both accepted and rejected nodes
    step = max(range(len(trace.steps)), key=lambda i: (len(trace.steps[i].accepted) > 0, len(trace.steps[i].nodes)))
    with tempfile.TemporaryDirectory() as tmp:
        page = write_view(Path(tmp) / "view.html", trace, result, model.tokenizer, prompt, model.name)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp}/profile",
                        f"--screenshot={Path(args.out).resolve()}", "--window-size=1100,1000", "--hide-scrollbars",
                        f"{page.as_uri()}#step={step + 1}"], check=True, capture_output=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
