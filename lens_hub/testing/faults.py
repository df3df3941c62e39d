"""Fault injection rules for [`LoopbackHub`].

A rule names which requests it hits (method and a regex searched in the URL path) and what goes wrong. It fires a
given number of times, then disappears.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal["status", "truncate", "corrupt", "delay", "headers", "json", "body", "drip"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "truncate", "corrupt", "delay", "headers", "json", "body", "drip")

# Kinds that act on the response body: they only apply to responses that carry one (not HEAD).
BODY_FAULTS: frozenset[str] = frozenset({"truncate", "corrupt", "json", "body", "drip"})


@dataclass
class FaultRule:
    """One injected fault.

    Attributes:
        kind (`str`): `"status"` answers `status` instead of handling the request; `"truncate"` sends the full
            `Content-Length` but only `keep` (a fraction) of the body, then closes the connection; `"corrupt"`
            flips bytes in the body (same length); `"delay"` sleeps `seconds` before handling the request normally.
            A lying server: `"headers"` sets response `headers` (an ETag, X-Repo-Commit, X-Linked-Size...);
            `"json"` sets top-level `fields` of a JSON object answer (a repo's `sha`...); `"body"` sends `body`
            instead (its true length in `Content-Length`); `"drip"` sends the body one byte every `seconds`.
        method (`str`, *optional*): HTTP method to match (`None`: any).
        path_regex (`re.Pattern`): Searched in the request path (query string excluded, still URL-quoted).
        times (`int`): How many more requests the rule fires on.
        status (`int`): Status code for `"status"` faults.
        seconds (`float`): Sleep for `"delay"` faults.
        keep (`float`): Fraction of the body sent by `"truncate"` faults, in `[0, 1)`.
    """

    kind: FaultKind
    method: str | None
    path_regex: re.Pattern[str]
    times: int = 1
    status: int = 500
    seconds: float = 1.0
    keep: float = 0.5
    headers: dict[str, str | None] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""

    def matches(self, method: str, path: str, has_body: bool) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.kind in BODY_FAULTS and not has_body:
            return False
        return self.path_regex.search(path) is not None


class FaultInjector:
    """Thread-safe list of [`FaultRule`], consumed by the server as requests arrive."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(
        self,
        *,
        kind: FaultKind,
        method: str | None = None,
        path_regex: str = "",
        times: int = 1,
        status: int = 500,
        seconds: float = 1.0,
        keep: float = 0.5,
        headers: dict[str, str | None] | None = None,
        fields: dict[str, Any] | None = None,
        body: bytes = b"",
    ) -> FaultRule:
        """Register a rule (see [`FaultRule`]) and return it.

        Raises:
            `ValueError`: If an argument is out of range.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}: expected one of {', '.join(FAULT_KINDS)}.")
        if times < 1:
            raise ValueError(f"`times` must be >= 1, got {times}.")
        if not 0 <= keep < 1:
            raise ValueError(f"`keep` must be in [0, 1), got {keep}.")
        if kind == "status" and not 100 <= status <= 599:
            raise ValueError(f"`status` must be an HTTP status code, got {status}.")
        if seconds < 0:
            raise ValueError(f"`seconds` must be >= 0, got {seconds}.")
        rule = FaultRule(
            kind=kind,
            method=method.upper() if method else None,
            path_regex=re.compile(path_regex),
            times=times,
            status=status,
            seconds=seconds,
            keep=keep,
            headers=dict(headers or {}),
            fields=dict(fields or {}),
            body=body,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def take(self, method: str, path: str, *, has_body: bool) -> list[FaultRule]:
        """Return the rules that fire on this request (at most one of each kind), consuming one use of each."""
        fired: list[FaultRule] = []
        with self._lock:
            for rule in list(self._rules):
                if any(f.kind == rule.kind for f in fired) or not rule.matches(method, path, has_body):
                    continue
                fired.append(rule)
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
        return fired

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def pending(self) -> list[FaultRule]:
        """Rules that have not fired their last time yet."""
        with self._lock:
            return list(self._rules)


def corrupt_bytes(data: bytes) -> bytes:
    """Flip the bits of the first, middle and last bytes (length unchanged)."""
    if not data:
        return data
    out = bytearray(data)
    for i in {0, len(out) // 2, len(out) - 1}:
        out[i] ^= 0xFF
    return bytes(out)
