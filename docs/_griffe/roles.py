"""A griffe extension: turn the docstrings' reST roles into links in the API reference.

cacheorm's docstrings cross-reference with Sphinx roles
(``:class:`~cacheorm.BackendError```, ``:meth:`update```). mkdocstrings reads
Markdown, so this rewrites each role, before the docstring is parsed, as an
autorefs link (``[`BackendError`][cacheorm.BackendError]``) when the target
is on a reference page, and as plain code otherwise, so ``mkdocs build
--strict`` never meets a link it cannot resolve.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")


def _public_names() -> frozenset[str]:
    """``cacheorm.__all__``, read from the source (the docs build does not install cacheorm)."""
    init = Path(__file__).resolve().parents[2] / "src" / "cacheorm" / "__init__.py"
    for statement in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in statement.targets
        ):
            return frozenset(ast.literal_eval(statement.value)) | {"testing"}
    raise RuntimeError(f"no __all__ in {init}")


#: The public names rendered on the reference pages (``cacheorm.<name>``).
_PUBLIC = _public_names()


def _owner(obj: griffe.Object) -> tuple[str, griffe.Object] | None:
    """The reference path and object of the public class ``obj`` is (or is in), or None."""
    node: griffe.Object | None = obj
    while node is not None and node.kind is not griffe.Kind.CLASS:
        node = node.parent  # type: ignore[assignment]
    if node is None:
        return None
    if node.name in _PUBLIC:
        return f"cacheorm.{node.name}", node
    if node.path.startswith("cacheorm.testing."):
        return node.path, node
    return None


def _resolve(target: str, obj: griffe.Object) -> str | None:
    """The reference identifier of ``target`` as seen from ``obj``, or None if not rendered."""
    if target.startswith("cacheorm."):
        parts = target.split(".")
        if parts[1] == "testing" or (parts[1] in _PUBLIC and not parts[1].startswith("_")):
            return target
        return None
    first = target.split(".")[0]
    owner = _owner(obj)
    if owner is not None and first in owner[1].members:
        return f"{owner[0]}.{target}"
    if first in _PUBLIC:
        return f"cacheorm.{target}"
    return None


class RolesToLinks(griffe.Extension):
    """Rewrite Sphinx roles in every docstring as autorefs links or code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None or ":`" not in docstring.value:
            return

        def link(match: re.Match[str]) -> str:
            target = match["target"]
            text = target.rsplit(".", 1)[-1] if match["tilde"] else target
            resolved = _resolve(target, obj)
            return f"[`{text}`][{resolved}]" if resolved else f"`{text}`"

        docstring.value = _ROLE.sub(link, docstring.value)
