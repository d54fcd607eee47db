"""Train the embedded demo dLLM from scratch on the synthetic tasks (``diffusion/tasks.py``) and write it
as a LLaDA-format checkpoint (config.json, model.safetensors, tokenizer), the format ``diffusion/formats.py``
reads.

    taskset -c 1 python -m paradec.train.dllm --out src/paradec/diffusion/demo   # 12,000 steps, seed 0

Masked-diffusion SFT as LLaDA does it: the prompt stays visible; each sequence draws a mask ratio
t ~ U(0, 1) and masks every answer position (the answer and the EOS padding after it, up to a random
generation length) with probability t; the model, a bidirectional Llama-style transformer, is trained
with cross-entropy on the masked positions. (LLaDA weights each sequence's loss by 1 / t; a plain
mean per sequence trains a small model more steadily and targets the same conditionals.)

Deterministic in ``--seed`` on one thread; checkpoints every ``--checkpoint-every`` steps to
``<out>.train/checkpoint.pt`` and resumes from there; a progress bar shows the loss and, every
``--eval-every`` steps, exact-match accuracy of one-token-per-step decoding per task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..diffusion import tasks
from ..diffusion.formats import FORMATS, DiffusionSpec, llada_name, transformers_config
from .schedule import warmup_cosine

MIN_MASK = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    d_model: int = 64  # ~0.2M parameters: a step costs little on one shared CPU core
    n_layers: int = 3
    n_heads: int = 4
    mlp_hidden: int = 192
    max_length: int = 320  # a prompt and a generation of 256
    steps: int = 12000
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.01
    short_canvas: int = 16  # most batches: answer + EOS padding up to this many positions
    long_canvas: int = 256  # every long_every-th batch: up to this many (so long generations end in EOS too)
    long_every: int = 8
    long_batch: int = 8
    seed: int = 0


def build_tokenizer():
    """Word-level tokenizer over ``tasks.vocabulary()``: ids are the list order, text is space-joined words.

    Encoding a prompt appends ``<|answer|>`` (the answer starts after it: without it a revealed answer
    token could be read as part of the prompt); the chat template ends with it too."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = tasks.vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=tasks.UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True) for t in (tasks.EOS, tasks.MASK, tasks.UNK, tasks.ANSWER)])
    tok.post_processor = processors.TemplateProcessing(single=f"$A {tasks.ANSWER}",
                                                       special_tokens=[(tasks.ANSWER, words.index(tasks.ANSWER))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=tasks.UNK, eos_token=tasks.EOS,
                                   pad_token=tasks.EOS, mask_token=tasks.MASK, additional_special_tokens=[tasks.ANSWER])
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}" + tasks.ANSWER  # no roles
    return fast


def llada_config(c: TrainConfig, vocab: int, eos: int, mask: int) -> dict:
    """The model's config.json, in LLaDA's fields."""
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama", "activation_type": "silu",
        "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "rope": True, "rope_theta": 10000.0, "alibi": False,
        "attention_layer_norm": False, "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False,
        "layer_norm_with_affine": True, "block_group_size": 1, "input_emb_norm": False, "scale_logits": False,
        "weight_tying": False, "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_heads,
        "mlp_hidden_size": c.mlp_hidden, "vocab_size": vocab, "embedding_size": vocab, "max_sequence_length": c.max_length,
        "mask_token_id": mask, "eos_token_id": eos, "pad_token_id": eos,
    }


class Batches:
    """Training batches: (ids, attention bias, targets, loss weights), deterministic in the seed."""

    def __init__(self, c: TrainConfig, tok, rng: random.Random):
        self.c, self.tok, self.rng = c, tok, rng
        self.eos, self.mask = tok.eos_token_id, tok.mask_token_id
        self.names = list(tasks.TASKS)

    def encode(self, text: str, prompt: bool) -> list[int]:
        return self.tok(text, add_special_tokens=prompt).input_ids  # a prompt ends with <|answer|>

    def next(self, step: int):
        c, rng = self.c, self.rng
        long = step % c.long_every == c.long_every - 1
        rows = []
        for _ in range(c.long_batch if long else c.batch):
            ex = tasks.draw(rng.choice(self.names), rng, "train")
            prompt, answer = self.encode(ex.prompt, True), self.encode(ex.answer, False)
            low = len(answer) + 1
            canvas = rng.randint(max(low, c.short_canvas + 1), c.long_canvas) if long else rng.randint(low, max(low, c.short_canvas))
            target = answer + [self.eos] * (canvas - len(answer))
            t = max(rng.random(), MIN_MASK)
            masked = [rng.random() < t for _ in target]
            if not any(masked):
                masked[rng.randrange(len(target))] = True
            rows.append((prompt, target, masked))
        width = max(len(p) + len(t) for p, t, _ in rows)
        ids = torch.full((len(rows), width), self.eos, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        keys = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, (prompt, target, masked) in enumerate(rows):
            seq = prompt + [self.mask if m else t for t, m in zip(target, masked)]
            ids[r, : len(seq)] = torch.tensor(seq)
            keys[r, : len(seq)] = True
            for j, (t, m) in enumerate(zip(target, masked)):
                if m:
                    labels[r, len(prompt) + j] = t
            weights[r] = (labels[r] != -100).float() / max(sum(masked), 1)  # a plain mean per sequence
        bias = torch.zeros(len(rows), 1, width, width).masked_fill(~keys[:, None, None, :], torch.finfo(torch.float32).min)
        return ids, bias, labels, weights / len(rows)


def loss_of(model, batch) -> tuple[torch.Tensor, float]:
    """The batch's loss, and the fraction of its masked answer tokens (not the EOS padding) the model
    predicts right: it rises well before exact match does."""
    ids, bias, labels, weights = batch
    logits = model(input_ids=ids, attention_mask=bias).logits  # bidirectional: the bias masks padding only
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    content = (labels != -100) & (labels != model.config.eos_token_id)
    right = (logits.argmax(-1) == labels) & content
    return (ce * weights).sum(), float(right.sum()) / max(int(content.sum()), 1)


def as_paradec(hf, tok):
    """The model being trained, wrapped for the decoding loop (native runtime, float32)."""
    from ..model import Model

    model = Model.from_hf(hf, tok, runtime="native", name="dllm-demo (training)")
    model.diffusion = DiffusionSpec("llada", tok.mask_token_id)
    return model


def evaluate(hf, tok, per_task: int = 8, seed: int = 12345) -> dict[str, float]:
    """Exact-match (``Example.check``) accuracy per task of one-token-per-step greedy decoding, on
    held-out prompts (never trained on)."""
    from ..api import generate

    model = as_paradec(hf.eval(), tok)
    scores: dict[str, list[bool]] = {}
    for ex in tasks.sample_examples(per_task * len(tasks.TASKS), seed):
        out = generate(model, ex.prompt, "plain", max_new_tokens=16, method_options={"block_length": 16})
        scores.setdefault(ex.task, []).append(ex.check(out.text))
    hf.train()
    return {k: sum(v) / len(v) for k, v in scores.items()}


def export(hf, tok, c: TrainConfig, out: Path, summary: dict) -> None:
    """Write the LLaDA-format checkpoint (bfloat16 weights under LLaDA's names) and MANIFEST.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {llada_name(k): v.detach().to(torch.bfloat16).contiguous() for k, v in hf.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = llada_config(c, len(tasks.vocabulary()), tok.eos_token_id, tok.mask_token_id)
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    tok.save_pretrained(out)
    write_manifest(out, summary)


def write_manifest(directory: Path, summary: dict | None = None) -> None:
    """MANIFEST.json: the SHA-256 of every file of the directory, and the training summary (the command,
    seed, configuration, training time, history); ``summary`` None keeps the one already there."""
    path = directory / "MANIFEST.json"
    if summary is None:
        summary = {k: v for k, v in json.loads(path.read_text()).items() if k != "files"}
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != path.name)
    manifest = {"files": {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in files}, **summary}
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def lr_at(step: int, c: TrainConfig) -> float:
    return warmup_cosine(step, c.steps, c.warmup, c.lr, floor=0.05)


def train(c: TrainConfig, out: Path, eval_every: int, checkpoint_every: int, command: str, eval_per_task: int = 16) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(c.seed)
    tok = build_tokenizer()
    cfg = llada_config(c, len(tasks.vocabulary()), tok.eos_token_id, tok.mask_token_id)
    hf = LlamaForCausalLM(transformers_config(FORMATS["llada"], cfg, torch.float32)).float()
    opt = torch.optim.AdamW(hf.parameters(), lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(c.seed)
    step, start_time, cpu_start, history = 0, time.time(), time.process_time(), []
    ckpt = out.with_name(out.name + ".train") / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        if saved["config"] != asdict(c):
            raise SystemExit(f"{ckpt} was made with another configuration; remove it to start over")
        hf.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        step, history = saved["step"], saved["history"]
        start_time -= saved["seconds"]
        cpu_start -= saved["cpu_seconds"]
    batches = Batches(c, tok, rng)
    hf.train()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("training", total=c.steps, completed=step)
        running = accuracy = None
        while step < c.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, c)
            loss, acc = loss_of(hf, batches.next(step))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            opt.step()
            step += 1
            loss = loss.item()
            running = loss if running is None else 0.98 * running + 0.02 * loss
            accuracy = acc if accuracy is None else 0.98 * accuracy + 0.02 * acc
            bar.update(task, advance=1, description=f"loss {running:.3f} answer tokens {accuracy:.2f}")
            if step % eval_every == 0 or step == c.steps:
                scores = evaluate(hf, tok, eval_per_task)
                history.append({"step": step, "loss": round(running, 4), "answer_tokens": round(accuracy, 3),
                                "exact": {k: round(v, 3) for k, v in scores.items()}})
                bar.console.print(f"step {step}: loss {running:.3f} answer tokens {accuracy:.2f} exact "
                                  + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            if step % checkpoint_every == 0 or step == c.steps:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"config": asdict(c), "model": hf.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                            "torch_rng": torch.get_rng_state(), "step": step, "history": history,
                            "seconds": time.time() - start_time, "cpu_seconds": time.process_time() - cpu_start}, ckpt)
    summary = {"command": command, "config": asdict(c), "train_seconds": round(time.time() - start_time),
               "train_cpu_seconds": round(time.process_time() - cpu_start),
               "torch": torch.__version__, "history": history}
    export(hf.eval(), tok, c, out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m paradec.train.dllm", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the checkpoint directory to write")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, help=f"(default: {value})")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=250)
    args = p.parse_args(argv)
    c = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    command = shlex.join(["python", "-m", "paradec.train.dllm", *argv])
    train(c, Path(args.out), args.eval_every, args.checkpoint_every, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
