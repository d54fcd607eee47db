"""Structured output: a constraint (JSON schema, regex, grammar) that every generated text must match.

The grammar machinery is llguidance's (``pip install paradec[structured]``): it compiles a constraint
against the model's vocabulary and, at any state, gives the bitmask of the tokens that may come next and
rolls its state back token by token. What is paradec's own is how that meets parallel decoding:

- ``spec.py``: ``Constraint``, what a user asks for, and ``compile`` (every error before any decoding);
- ``vocab.py``: the vocabulary as the library reads it (each token's bytes), once per model;
- ``guide.py``: one generation's grammar state, the masks of a draft tree (each node's row masked by
  the state of its path) and the tokens the grammar forces;
- ``forced.py``: forced tokens as a free draft: the chain the grammar forces, the method's draft
  hung under it, and the method's own view of the step afterwards.

Exactness: the target's logits are masked before verification at every node, so greedy output with any
method equals plain constrained greedy decoding token for token, and sampling draws from the masked
distribution (the rejection rule is exact for any draft distribution).
"""

from .spec import Constraint, Grammar, compile_constraint

__all__ = ["Constraint", "Grammar", "compile_constraint"]
