"""Names and identifiers, each checked by one rule: Hub repo ids, commit SHAs, semantic versions, subfolders,
revisions.

Every other module (the lens config, the registry schema, name resolution, publishing) validates through these
functions, so a rule changes in one place. They raise `InvalidNameError`, which is both a ``ValueError`` (so
pydantic validators turn it into a located validation error and callers that catch ``ValueError`` keep working)
and a `LensHubError`; its message names what is wrong and the fix. Callers wrap it in their own error class with
the field or option that was wrong.

Every rule is ASCII-only: a name that looks like another (``gрt2`` with a Cyrillic ``р``) must not be able to
stand for it, and the Hub refuses such names anyway.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidNameError

# The Hub's rules for a repo id (huggingface_hub.utils.validate_repo_id, restricted to ASCII): "name" or
# "namespace/name"; each part is letters, digits, "-", "_" and ".", starts and ends with a letter, digit or "_",
# and is at most 96 characters; no "--" or ".." anywhere; not ending in ".git".
REPO_ID_PART_MAX = 96
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Semantic versioning 2.0 without build metadata: numeric parts without leading zeros; pre-release identifiers are
# non-empty, dot-separated, [0-9A-Za-z-]+, and numeric ones have no leading zeros. [0-9], not \d: \d also matches
# other scripts' digits. The pattern is also used by pydantic (Rust regex), so it sticks to the common syntax.
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER = re.compile(rf"^{_NUM}\.{_NUM}\.{_NUM}(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?$")
SEMVER_MAX = 64  # a tag name, shown everywhere: long enough for any real pre-release
# A subfolder is also part of a tag name ("{subfolder}/v1.0.0"), so it follows both the Hub's path rules and git's
# ref rules: components of letters, digits, "-", "_" and "."; none starting with "." or ending with ".lock".
_SUBFOLDER_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
SUBFOLDER_MAX = 200
REVISION_MAX = 256
# git check-ref-format refuses these anywhere in a ref name (control characters and whitespace are checked apart).
_REVISION_FORBIDDEN = ("..", "@{", "~", "^", ":", "?", "*", "[", "\\")


def _non_ascii(value: str, example: str) -> str | None:
    """Why ``value`` is not ASCII (naming the first foreign character and what NFKC would make of it), or None."""
    if value.isascii():
        return None
    bad = next(c for c in value if not c.isascii())
    name = unicodedata.name(bad, "unnamed character")
    normal = unicodedata.normalize("NFKC", value)
    hint = f"; did you mean {normal!r}?" if normal.isascii() else f"; write it in ASCII, like {example!r}"
    return f"{value!r} contains the non-ASCII character {bad!r} (U+{ord(bad):04X} {name}){hint}"


def _has_control(value: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in value)


def repo_id_problem(value: object) -> str | None:
    """Why ``value`` is not a Hub repo id (one sentence naming the rule it breaks), or None if it is one."""
    if not isinstance(value, str):
        return f"a Hub id must be a string like 'org/name', not {type(value).__name__}"
    why = _non_ascii(value, "org/name")
    if why is None and _has_control(value):
        why = f"{value!r} contains a control character"
    if why is None and (value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1):
        why = f"{value!r} looks like a local path; a lens records the Hub id of its base model, never a local path"
    if why is None and ("--" in value or ".." in value):
        why = f"{value!r} contains {'--' if '--' in value else '..'!r}, which the Hub does not allow in an id"
    if why is None and value.lower().endswith(".git"):
        why = f"{value!r} ends with '.git', which the Hub does not allow"
    if why is None and any(len(part) > REPO_ID_PART_MAX for part in value.split("/")):
        why = f"{value[:40]!r}... has a part longer than {REPO_ID_PART_MAX} characters"
    if why is None and not REPO_ID.fullmatch(value):
        why = (
            f"{value!r} is not 'name' or 'org/name' made of letters, digits, '-', '_' and '.' (each part starting "
            "and ending with a letter, digit or '_')"
        )
    return why


def validate_repo_id(value: str) -> str:
    """Return ``value`` if it is a Hub repo id (``name`` or ``namespace/name``), else raise `InvalidNameError`.

    The rules are the Hub's, in ASCII: each part letters, digits, ``-``, ``_``, ``.``, starting and ending with a
    letter, digit or ``_``, at most 96 characters; no ``--`` or ``..``; not ending in ``.git``.
    """
    why = repo_id_problem(value)
    if why is not None:
        raise InvalidNameError(f"{why}. A Hugging Face Hub id looks like 'gpt2' or 'org/name'.")
    return value


def is_commit(value: str | None) -> bool:
    """Whether ``value`` is a full 40-hex commit SHA (what "pinned" means everywhere in lens-hub)."""
    # fullmatch: "$" alone would also accept a trailing newline.
    return isinstance(value, str) and COMMIT_SHA.fullmatch(value) is not None


def is_semver(value: str) -> bool:
    """Whether ``value`` is a semantic version ``X.Y.Z`` (optionally ``-prerelease``), without a leading ``v``.

    Pre-release identifiers are non-empty, dot-separated, made of ``[0-9A-Za-z-]``, and numeric ones have no leading
    zeros (``1.0.0-rc.1``, not ``1.0.0-a..b``, ``1.0.0-.`` or ``1.0.0-01``); at most 64 characters.
    """
    return isinstance(value, str) and len(value) <= SEMVER_MAX and SEMVER.fullmatch(value) is not None


def check_version(version: str | None) -> str | None:
    """A version a user typed (``1.2.0``, ``v1.2.0``), without its ``v``; None stays None (the next free version).

    Raises:
        InvalidNameError: Not a semantic version.
    """
    if version is None:
        return None
    v = version.removeprefix("v")
    if not is_semver(v):
        raise InvalidNameError(f"version {version!r} (--version) is not a semantic version like 1.2.0 (or 1.2.0-rc.1).")
    return v


def semver_key(version: str) -> tuple:
    """Sort key of a semantic version: releases after their pre-releases, numeric parts compared as numbers."""
    core, _, pre = version.partition("-")
    numbers = tuple(int(x) for x in core.split("."))
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (numbers, 0 if pre else 1, pre_key)


def check_subfolder(value: str) -> str:
    """Return ``value`` if it is a relative folder inside a repo (``''`` for the root), else raise `InvalidNameError`.

    A subfolder also names the version tags (``{subfolder}/v1.0.0``), so it must be valid as a path on the Hub and
    in a git ref: ``/``-separated components of ASCII letters, digits, ``-``, ``_`` and ``.``; no empty, ``.`` or
    ``..`` component, none starting with ``.`` or ending with ``.lock``; at most 200 characters.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"must be a folder name like 'lens/gpt2', not {type(value).__name__}")
    if not value:
        return value
    why = _non_ascii(value, "lens/gpt2")
    if why is None and len(value) > SUBFOLDER_MAX:
        why = f"is longer than {SUBFOLDER_MAX} characters"
    if why is None and (value.startswith("/") or value.endswith("/") or "\\" in value):
        why = "is not relative (no leading or trailing '/', no '\\')"
    if why is None:
        for part in value.split("/"):
            if part in ("", ".", ".."):
                why = f"has an empty, '.' or '..' component ({part!r})"
            elif not _SUBFOLDER_PART.fullmatch(part) or part.endswith(".lock"):
                why = (
                    f"has the component {part!r}; components are letters, digits, '-', '_' and '.' (not starting "
                    "with '.', not ending with '.lock', no spaces)"
                )
            if why:
                break
    if why is not None:
        raise InvalidNameError(f"{why}: must be a relative folder like 'lens/gpt2' that can also name a tag")
    return value


def check_revision(value: str) -> str:
    """Return ``value`` if it is a safe git revision for ``hf://REPO@REVISION``, else raise `InvalidNameError`.

    A revision is a branch, a tag (``sub/v1.0.0``), ``refs/pr/N`` or a commit SHA. It is put into Hub URLs and cache
    paths (and from there into model cards and pages), so it must be a well-formed git ref name of the characters
    Hub refs use: at most 256 ASCII letters, digits and ``. _ - / +``, no leading or trailing ``/``, no empty,
    ``.`` or ``..`` components, no component starting with ``.`` or ending with ``.lock``, no ``..``.

    Example:
        ``check_revision("main")``, ``check_revision("lens/gpt2/v1.0.0")``; ``check_revision("../../x")`` raises.
    """
    if not isinstance(value, str) or not value:
        raise InvalidNameError("a revision must be a non-empty branch, tag or commit, like 'main' or 'v1.0.0'")
    why = _non_ascii(value, "v1.0.0")
    if why is None and len(value) > REVISION_MAX:
        why = f"is longer than {REVISION_MAX} characters"
    if why is None and (_has_control(value) or any(c.isspace() for c in value)):
        why = "contains a control character or whitespace"
    if why is None and (value.startswith("/") or value.endswith("/")):
        why = "starts or ends with '/'"
    if why is None:
        bad = next((s for s in _REVISION_FORBIDDEN if s in value), None)
        if bad is not None:
            why = f"contains {bad!r}"
    if why is None:  # git allows more, but a Hub branch or tag never needs it, and it would reach cards and pages
        odd = next((c for c in value if not (c.isalnum() or c in "._-/+")), None)
        if odd is not None:
            why = f"contains {odd!r} (a revision is letters, digits and . _ - / +)"
    if why is None:
        for part in value.split("/"):
            if part == "" or part.startswith(".") or part.endswith(".lock"):
                why = f"has the component {part!r} (empty, starting with '.' or ending with '.lock')"
                break
    if why is not None:
        raise InvalidNameError(
            f"revision {value[:80]!r} {why}; pass a branch, tag or commit like 'main', 'v1.0.0' or a 40-hex SHA "
            "(a tag with a '/' is written percent-encoded in hf:// names: sub%2Fv1.0.0)"
        )
    return value
