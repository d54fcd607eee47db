"""What a user constrains the output to, and its compilation against a model's vocabulary.

    Constraint.json_schema({"type": "object", "properties": {"name": {"type": "string"}}})
    Constraint.json_object()                      # any JSON object
    Constraint.regex(r"\\d{3}-\\d{4}")
    Constraint.grammar(text)                      # GBNF (llama.cpp) or Lark (llguidance's dialect)

``compile_constraint`` checks everything the library can check (a schema, a regex, a grammar) and
raises a ``ParadecError`` with the library's message, so that a bad constraint is refused before any
decoding (exit 2 on the command line, 400 on the server).

JSON is generated in one layout, ``{"a": 1, "b": [2, 3]}`` (no free whitespace): the quotes of keys and
the separators are then forced, so they cost no forward (``forced.py``), and the output still parses
as any JSON does. A schema's own ``"x-guidance"`` options (llguidance's) override this layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import ParadecError
from .vocab import Vocabulary, library, vocabulary

KINDS = ("json_schema", "regex", "grammar")
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
NO_FORCING = '%llguidance {"no_forcing": true}\n'  # for vocabularies that cannot spell every text (vocab.py)


@dataclass(frozen=True)
class Constraint:
    """kind: "json_schema", "regex" or "grammar"; source: the schema as JSON text, the regular
    expression, or the grammar text (GBNF or Lark). Build one with the class methods."""

    kind: str
    source: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ParadecError(f"a constraint is one of {', '.join(KINDS)}, not {self.kind!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ParadecError(f"the {self.label} is empty")

    @classmethod
    def json_schema(cls, schema: dict | bool | str) -> "Constraint":
        """A JSON Schema (a dict, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ParadecError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, (dict, bool)):
            raise ParadecError(f"a JSON schema is an object (or true/false), not {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def json_object(cls) -> "Constraint":
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        """The whole output matches ``pattern`` (Rust ``regex`` syntax: Python's, without look-around
        and back-references)."""
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, text: str) -> "Constraint":
        """A context-free grammar: GBNF (llama.cpp's ``root ::= ...``) or Lark (``start: ...``)."""
        return cls("grammar", text)

    @property
    def label(self) -> str:
        return {"json_schema": "JSON schema", "regex": "regular expression", "grammar": "grammar"}[self.kind]

    def lark(self) -> str:
        """The constraint in llguidance's Lark dialect (every kind becomes one ``start`` rule)."""
        llg = library()
        if self.kind == "json_schema":
            schema = json.loads(self.source)
            if isinstance(schema, dict):
                schema = {**schema, "x-guidance": {**JSON_LAYOUT, **schema.get("x-guidance", {})}}
            return f"start: %json {json.dumps(schema)}"
        if self.kind == "regex":
            return f"start: /{llg.regex_to_lark(self.source)}/"
        from llguidance.gbnf_to_lark import any_to_lark

        try:
            return any_to_lark(self.source)
        except Exception as exc:  # noqa: BLE001 (the converter's own errors: a bad GBNF grammar)
            raise ParadecError(f"invalid grammar: {exc}") from None


@dataclass(frozen=True)
class Grammar:
    """A constraint compiled for one model's vocabulary: what each generation's ``Guide`` starts from."""

    constraint: Constraint
    text: str  # llguidance's grammar
    vocab: Vocabulary


def compile_constraint(constraint: Constraint, model) -> Grammar:
    """Check ``constraint`` against ``model``'s vocabulary; a ParadecError carries the library's message."""
    if isinstance(constraint, Grammar):
        return constraint
    if not isinstance(constraint, Constraint):
        raise ParadecError(f"constraint must be a paradec.Constraint, got {type(constraint).__name__}")
    llg = library()
    vocab = vocabulary(model)
    lark = constraint.lark()
    if not vocab.canonical:
        lark = NO_FORCING + lark
    text = llg.LLMatcher.grammar_from_lark(lark)
    error, messages = llg.LLMatcher.validate_grammar_with_warnings(text, vocab.tokenizer)
    if error:
        raise ParadecError(f"invalid {constraint.label}: {messages[0].strip()}")
    return Grammar(constraint, text, vocab)
