"""Names and identifiers, each checked by one rule: Hub repo ids, commit SHAs, semantic versions, subfolders.

Every other module (the lens config, the registry schema, name resolution, publishing) validates through these
functions, so a rule changes in one place. They raise ``ValueError`` naming the fix; callers wrap it in their own
error class with the field or option that was wrong.
"""

from __future__ import annotations

import re

# A Hub repo id: "name" or "namespace/name" (no leading slash, no "..", no backslash).
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[\w.-]+$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


def validate_repo_id(value: str) -> str:
    """Return ``value`` if it is a Hub repo id, else raise ``ValueError`` naming the fix."""
    if not REPO_ID.match(value) or ".." in value or value.endswith((".", "-")):
        raise ValueError(
            f"{value!r} is not a Hugging Face Hub model id (like 'gpt2' or 'org/name'); a lens records the Hub "
            "id of its base model, never a local path. Pass base_model='org/name'."
        )
    return value


def is_commit(value: str | None) -> bool:
    """Whether ``value`` is a full 40-hex commit SHA (what "pinned" means everywhere in lens-hub)."""
    return value is not None and COMMIT_SHA.match(value) is not None


def is_semver(value: str) -> bool:
    """Whether ``value`` is a semantic version ``X.Y.Z`` (optionally ``-prerelease``), without a leading ``v``."""
    return SEMVER.match(value) is not None


def semver_key(version: str) -> tuple:
    """Sort key of a semantic version: releases after their pre-releases, numeric parts compared as numbers."""
    core, _, pre = version.partition("-")
    numbers = tuple(int(x) for x in core.split("."))
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (numbers, 0 if pre else 1, pre_key)


def check_subfolder(value: str) -> str:
    """Return ``value`` if it is a relative folder inside a repo (``''`` for the root), else raise ``ValueError``."""
    if value and (
        value.startswith("/")
        or value.endswith("/")
        or "\\" in value
        or any(p in ("", ".", "..") for p in value.split("/"))
    ):
        raise ValueError("must be a relative folder like 'lens/gpt2' (no leading/trailing '/', no '.' or '..')")
    return value
