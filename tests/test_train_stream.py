"""Streamed self-distillation (`paradec train-drafter --stream`): features recorded while the target
answers equal a prefill's, chunks pack conversations, training resumes, the head it writes drafts exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from paradec.drafters import target_parts
from paradec.train.loop import TrainConfig
from paradec.train.stream import Packer, StreamConfig, StreamTrainer, answer

from conftest import assert_lossless, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, dtype=torch.float32)


def fake_prompts():
    for i in range(10_000):
        yield f"src:{i % 3}#{i}", " ".join(f"w{(5 * i + 3 * j) % 90}" for j in range(6 + i % 5))


def fake_docs():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        yield torch.randint(3, 96, (40,), generator=g).tolist()


def test_features_recorded_while_answering_are_a_prefills(model):
    prompts = [[5, 9, 17, 33], [40, 41, 42, 43, 44, 45]]
    for tokens, feats, plen in answer(model, prompts, 12):
        assert plen in (4, 6) and len(feats) == len(tokens) - 1
        _, hidden = model.target().prefill(tokens[:-1], hidden=True)
        assert torch.equal(hidden.to(torch.float16), feats)  # native rows: bits independent of the batch


def test_packer_cuts_conversations_into_aligned_chunks():
    packer = Packer(4)
    feats = torch.arange(6, dtype=torch.float16)[:, None]
    assert list(packer.add([1, 2, 3, 4, 5, 6, 7], feats, prompt_length=3)) != []
    chunks = list(packer.add([8, 9, 10, 11], torch.arange(10, 13, dtype=torch.float16)[:, None], prompt_length=2))
    assert len(chunks) == 1
    assert chunks[0]["tokens"].tolist() == [5, 6, 8, 9] and chunks[0]["features"][:, 0].tolist() == [4, 5, 10, 11]
    # row t reads f_t, x_{t+1} and guesses x_{t+2}: an answer token from row prompt_length - 2 on
    assert chunks[0]["answer"].tolist() == [True, True, True, True]
    first = Packer(4)
    (c,) = list(first.add(list(range(1, 6)), torch.zeros(4, 1, dtype=torch.float16), prompt_length=4))
    assert c["answer"].tolist() == [False, False, True, True]


def test_last_layer_reads_the_same_weights_on_both_runtimes():
    native = target_parts.last_layer(tiny_model("llama", seed=4))
    hf = target_parts.last_layer(tiny_model("llama", seed=4, runtime="hf"))
    for name in native:
        assert torch.allclose(native[name], hf[name]), name


def test_stream_trains_resumes_and_writes_a_head_that_drafts_exactly(model, tmp_path):
    cfg = StreamConfig(steps=6, sequences=3, answer_tokens=10, chunk=16, buffer=6, reuse=2.0, val_prompts=2,
                       eval_every=3, subset_docs=20)
    train = TrainConfig(kind="eagle", subset=48, unroll=2, batch=2, warmup=2, lr=3e-3)
    first = StreamTrainer(model, cfg, train, tmp_path, fake_prompts, fake_docs, "cmd", log=lambda line: None)
    while first.state["step"] < 3:
        first.train_steps(first.round() and 1)
        first._checkpoint()
    assert len(first.buffer) <= cfg.buffer
    rounds = first.state["round"]
    second = StreamTrainer(model, cfg, train, tmp_path, fake_prompts, fake_docs, "cmd", log=lambda line: None)
    assert second.state["round"] == rounds and second.state["step"] == first.state["step"]
    assert [c["tokens"].tolist() for c in second.buffer] == [c["tokens"].tolist() for c in first.buffer]
    for name, value in first.head.state_dict().items():
        assert torch.equal(value, second.head.state_dict()[name]), name
    validation = second.run()
    assert second.state["step"] == 6 and {"acc@1", "acc@2", "answer@1"} <= set(validation)
    assert len(json.loads((tmp_path / "validation-prompts.json").read_text())) == 2  # answered once, never trained on
    manifest = json.loads((tmp_path / "eagle.json").read_text())
    assert manifest["training"]["schedule"]["steps_done"] == 6 and manifest["training"]["data"]["conversations"] >= 6
    assert set(manifest["training"]["minutes"]) == {"answer", "train", "validate"}
    head = str(tmp_path / "eagle.safetensors")
    assert assert_lossless(model, [[5, 9, 17, 33], [7] * 10], "eagle", 16, head=head, cost_aware=False) >= 0
    third = StreamTrainer(model, dataclasses.replace(cfg, steps=8, reuse=1.0), train, tmp_path, fake_prompts, fake_docs,
                          log=lambda line: None)  # the steps and the data's reuse may change on resume, recorded
    assert third.state["changes"] == [{"step": 6, "from": {"steps": 6, "reuse": 2.0}}]
    with pytest.raises(ValueError, match="other options"):
        StreamTrainer(model, StreamConfig(steps=6, sequences=4, chunk=16, val_prompts=2), train, tmp_path,
                      fake_prompts, fake_docs)


def test_init_from_target_starts_the_layer_as_the_targets_last(model, tmp_path):
    cfg = StreamConfig(steps=1, sequences=2, answer_tokens=6, chunk=16, val_prompts=2, subset_docs=5)
    trainer = StreamTrainer(model, dataclasses.replace(cfg, init="target"), TrainConfig(subset=48), tmp_path, fake_prompts,
                            fake_docs, log=lambda line: None)
    w = target_parts.last_layer(model)
    assert torch.allclose(trainer.head.down.weight, w["down"])
    assert torch.allclose(trainer.head.q.weight, w["q"] * w["attn_norm"])
    d = trainer.head.config.hidden
    assert torch.equal(trainer.head.fc.weight[:, d:], torch.eye(d))


def test_each_round_answers_the_next_prompts_and_a_resume_goes_on_from_them(model, tmp_path):
    """A round takes exactly ``sequences`` prompts (it used to drop one more unseen, so a resume skipped
    too few and answered prompts again), and a round's shard written after the last checkpoint (a crash
    while training) is not read twice on resume."""
    cfg = StreamConfig(steps=4, sequences=2, answer_tokens=4, chunk=16, buffer=64, val_prompts=2, subset_docs=5)
    train = TrainConfig(kind="eagle", subset=48, unroll=1, batch=2, warmup=1)
    answered = []

    def make(out):
        trainer = StreamTrainer(model, cfg, train, out, fake_prompts, fake_docs, log=lambda line: None)
        answer = trainer._answer
        trainer._answer = lambda items: answered.extend(label for label, _ in items) or answer(items)
        return trainer

    first = make(tmp_path)
    first.round()
    first._checkpoint()
    saved = [c["tokens"].tolist() for c in first.buffer]
    first.round()  # not checkpointed: as if the run stopped while training on it
    second = make(tmp_path)
    assert [c["tokens"].tolist() for c in second.buffer] == saved
    second.round()
    assert answered == [f"src:{i % 3}#{i}" for i in (2, 3, 4, 5, 4, 5)]
