"""The operator's settings for a server. Requests choose only within them.

Light to import (the drafters are imported when a config is checked), so that ``paradec --help``
can show these defaults without loading torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ParadecError

if TYPE_CHECKING:
    from ..model import Model

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20  # 1 MiB of JSON is ~250k tokens of English, more than any context window
MAX_VIEWS = 16  # decoding views kept (requests that asked for one), the oldest dropped first
STALL_AFTER = 60.0  # seconds without a finished step before /health says "stalled"
COST_CURVES = ("measure", "off")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    method / method_options: the default decoding method and its options (a request may name another
                        method; it gets that method's defaults)
    draft:              the draft model of the ``draft`` method and of ``auto`` (a model spec or a loaded ``Model``).
                        Only the operator names it: a request can't make the server open a file
    request_options:    the method options a request may set, as ``"method.option"`` entries (such as
                        ``"ngram.max_depth"``), or ``"all"``. None by default. The drafters' configs
                        bound every value, but an option still changes how much work a request costs
    share_drafter_state: keep one drafter per (method, options) for every request. Learning methods
                        (Token Recycling's table) then use what earlier requests taught them: text
                        from other clients, which also shows in each response's stats and speed.
                        Off by default, so every request starts from a fresh drafter
    timeout / max_timeout: a request's time limit in seconds, counted from its arrival: the default,
                        and the most a request may ask for with ``"paradec": {"timeout": s}``. None = no
                        limit. Without ``timeout``, requests get ``max_timeout``
    stall_after:        /health answers 503 "stalled" once the running generation has gone this many
                        seconds without finishing a decoding step (the prefill is one step)
    max_body_bytes:     a larger request body gets 413 before any of it is parsed
    allowed_hosts:      the host names the ``Host`` header may carry (``"*"``: any). Against DNS
                        rebinding: a web page whose domain is re-pointed at 127.0.0.1 sends its own name
    max_views:          decoding views kept for requests that asked for one (``"paradec": {"view": true}``),
                        the oldest dropped first; 0 refuses such requests
    views_dir:          keep the views in this folder instead of in memory, where every process of the
                        server reads them (``--replicas`` sets it to a private folder of its own)
    max_batch:          sequences decoded together, one forward per step for all (a request with n
                        choices brings n); requests join and leave the batch between steps
    max_queue:          requests that may wait while the batch is full; more get 429
    cost_curve:         "measure": read the runtime's cost curve at start-up (``paradec.costs``: measured
                        once per machine, model, format and thread count, a few seconds, then cached)
                        and let the batch stop drafting while drafts cost more forward time than they
                        save at its size (``paradec.serve.switch``); "off": every request drafts as
                        its method decides (``auto`` still reads the curve, on its first request)
    default_max_tokens: cap for chat requests without max_tokens (default: the rest of the context)
    api_key:            required as ``Authorization: Bearer KEY`` on every route but /health
    """

    method: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)
    draft: str | Model | None = None
    model_name: str | None = None
    api_key: str | None = None
    max_queue: int = 32
    max_batch: int = 8
    cost_curve: str = "measure"
    default_max_tokens: int | None = None
    request_options: frozenset[str] = frozenset()
    share_drafter_state: bool = False
    timeout: float | None = None
    max_timeout: float | None = None
    stall_after: float = STALL_AFTER
    max_body_bytes: int = MAX_BODY_BYTES
    max_views: int = MAX_VIEWS
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    views_dir: str | None = None

    def __post_init__(self) -> None:
        from ..drafters import METHODS

        if self.method not in METHODS:
            raise ParadecError(f"unknown method '{self.method}'; choose one of: {', '.join(sorted(METHODS))}")
        if "draft" in self.method_options:
            raise ParadecError("give the draft model as ServeConfig.draft (--draft), not as a method option")
        object.__setattr__(self, "request_options", frozenset(self.request_options))
        for entry in self.request_options:
            check_request_option(entry)
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        if not self.allowed_hosts or not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise ValueError(f"allowed_hosts must be non-empty host names (or '*'), got {self.allowed_hosts!r}")
        for name in ("timeout", "max_timeout", "stall_after"):
            value = getattr(self, name)
            if value is None and name != "stall_after":
                continue
            if not (is_number(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.timeout is not None and self.max_timeout is not None and self.timeout > self.max_timeout:
            raise ValueError(f"timeout ({self.timeout}) must not exceed max_timeout ({self.max_timeout})")
        if self.cost_curve not in COST_CURVES:
            raise ValueError(f"cost_curve must be one of {', '.join(COST_CURVES)}, got {self.cost_curve!r}")
        for name, low in (("max_queue", 0), ("max_batch", 1), ("max_body_bytes", 1), ("max_views", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.views_dir is not None and not (isinstance(self.views_dir, str) and os.path.isdir(self.views_dir)):
            raise ValueError(f"views_dir must be an existing directory, got {self.views_dir!r}")
        if not isinstance(self.share_drafter_state, bool):
            raise ValueError(f"share_drafter_state must be true or false, got {self.share_drafter_state!r}")

    def allows(self, method: str, option: str) -> bool:
        """Whether a request may set ``option`` of ``method`` (never one that names a file: ``file_options``)."""
        if option in file_options():
            return False
        return "all" in self.request_options or f"{method}.{option}" in self.request_options

    @property
    def default_timeout(self) -> float | None:
        return self.timeout if self.timeout is not None else self.max_timeout


def file_options() -> frozenset[str]:
    """The option names that name a file or a model in any method or diffusion decoder (``draft``,
    ``eagle.head``, ``learned.filter``, ...): requests never set them, whatever ``--request-options``."""
    from ..diffusion import learned, lossless  # noqa: F401  (the decoders they define register themselves)
    from ..diffusion.decoders import DECODERS
    from ..drafters import METHODS
    from ..options import path_options

    return frozenset().union(*(path_options(cls.Config) for cls in (*METHODS.values(), *DECODERS.values())))


def check_request_option(entry: str) -> None:
    """``entry`` is "all" or "method.option" naming a real option that requests may be given."""
    from ..drafters import METHODS

    if entry == "all":
        return
    method, _, option = entry.partition(".")
    if method not in METHODS:
        raise ParadecError(f"request option '{entry}': unknown method '{method}'; use method.option or 'all'")
    options = sorted(f.name for f in dataclasses.fields(METHODS[method].Config))
    if option not in options:
        raise ParadecError(
            f"request option '{entry}': method '{method}' has no option '{option}'; "
            f"its options: {', '.join(options) or 'none'}"
        )
    if option in file_options():
        raise ParadecError(f"request option '{entry}': requests can never name a file or a model on this machine; "
                           "give it with --draft or --method-options")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
