"""Structured output on the server: ``response_format`` (``json_object``, ``json_schema``) through the official
``openai`` client, the ``paradec`` extension's regex and grammar, bad constraints answered 400 before any
decoding; every answer equals ``paradec.generate`` under the same constraint."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pydantic
import pytest

import paradec
from paradec import Constraint
from paradec.serve.app import ServeConfig

from serve_helpers import LiveServer
from test_constraints import SCHEMA, bpe_model

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def bpe_chat():
    """The tiny byte-level BPE model of test_constraints, with a chat template."""
    return bpe_model(seed=1, chat=True)


@pytest.fixture(scope="module")
def server(bpe_chat):
    with LiveServer(bpe_chat, ServeConfig(method="auto", method_options={"costs": {"16": 1.5}})) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "Ada"}]


def same_as_library(model, result_text: str, constraint: Constraint, **kwargs) -> None:
    ours = paradec.generate(model, MESSAGES, "plain", constraint=constraint, **kwargs)
    assert result_text == ours.text


def test_json_schema_through_the_openai_client(bpe_chat, client):
    out = client.chat.completions.create(
        model="tiny-bpe", messages=MESSAGES, max_tokens=80, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}})
    choice = out.choices[0]
    same_as_library(bpe_chat, choice.message.content, Constraint.json_schema(SCHEMA), max_new_tokens=80)
    if choice.finish_reason == "stop":
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    else:
        assert out.model_extra["paradec"]["stats"]["constraint"] == "incomplete"


def test_json_object_and_the_clients_parse(bpe_chat, client):
    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=3)
        ok: bool

    for seed in range(3):  # sampled: a few draws, each must parse into the model when it ends by itself
        try:
            parsed = client.chat.completions.parse(model="tiny-bpe", messages=MESSAGES, max_tokens=60, seed=seed,
                                                   response_format=Person)
        except openai.LengthFinishReasonError:
            continue
        assert isinstance(parsed.choices[0].message.parsed, Person)
    out = client.chat.completions.create(model="tiny-bpe", messages=MESSAGES, max_tokens=60, temperature=0,
                                         response_format={"type": "json_object"})
    same_as_library(bpe_chat, out.choices[0].message.content, Constraint.json_object(), max_new_tokens=60)
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)


def test_regex_and_grammar_in_the_paradec_field(bpe_chat, client):
    out = client.completions.create(model="tiny-bpe", prompt="Ada", max_tokens=20, temperature=0,
                                    extra_body={"paradec": {"regex": r"[0-9]{3}-[0-9]{4}"}})
    assert out.choices[0].finish_reason == "stop"
    import re

    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", out.choices[0].text)
    grammar = 'root ::= "yes" | "no" | "maybe " [a-z]+'  # GBNF
    out = client.completions.create(model="tiny-bpe", prompt="Ada", max_tokens=20, temperature=0,
                                    extra_body={"paradec": {"grammar": grammar}})
    ours = paradec.generate(bpe_chat, "Ada", "plain", max_new_tokens=20, constraint=Constraint.grammar(grammar))
    assert out.choices[0].text == ours.text


@pytest.mark.parametrize("body,param,message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format", "objectx"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "json_schema.schema"),
    ({"paradec": {"regex": "a(b"}}, "paradec.regex", "unclosed group"),
    ({"paradec": {"grammar": "start: foo"}}, "paradec.grammar", "unknown name"),
    ({"response_format": {"type": "json_object"}, "paradec": {"regex": "a"}}, "paradec.regex", "one constraint"),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]}, None, "stop strings"),
])
def test_bad_constraints_answer_400_before_decoding(server, body, param, message):
    before = server.worker.completed
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 5, **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert server.worker.completed == before  # nothing was decoded
