"""A griffe extension that turns lrgroups' docstring conventions into what mkdocstrings renders.

- Sphinx roles (``:class:`~lrgroups.Rule```, ``:func:`plan```) become mkdocs-autorefs cross-references,
  so the API reference links them and a strict build fails on one that points at nothing documented. A
  role whose target resolves in the loaded packages (as written, relative to the object, its class or
  module, or under ``lrgroups``) and is rendered (it has a docstring) becomes ``[`label`][path]``; one
  that names something outside them (``torch.optim.Optimizer``: the build is offline, with no
  inventories) becomes plain code.
- An ``Example:`` heading is read as Google style's ``Examples:`` section (doctests rendered as code),
  and a doctest outside such a section (a class docstring that opens with one) is fenced as ``pycon``.

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj):`(~?)([^`<>]+?)`")
SECTION = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")
PACKAGES = ("lrgroups", "benchmarks")


class DocstringMarkup(griffe.Extension):
    """Rewrite every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = fence_doctests(obj.docstring.value)
        obj.docstring.value = ROLE.sub(lambda m: _link(m, obj, loader), text)


def fence_doctests(text: str) -> str:
    """``Example:`` becomes ``Examples:``; doctest runs outside an Examples section are fenced."""
    lines, out, section, i = text.splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        heading = SECTION.match(line)
        if heading and heading.group(2) in ("Example", "Examples"):
            out.append(f"{heading.group(1)}Examples:")
            section = "Examples"
            i += 1
            continue
        if heading:
            section = heading.group(2)
        if line.lstrip().startswith(">>>") and section != "Examples":
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _link(match: re.Match, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    role, tilde, target = match.groups()
    target = target.strip().rstrip("()")
    label = target.rsplit(".", 1)[-1] if tilde else target
    if role in ("func", "meth"):
        label += "()"
    scopes = [obj.path, obj.parent.path if obj.parent else None, obj.module.path, *PACKAGES]
    for scope in (None, *scopes):
        path = f"{scope}.{target}" if scope else target
        if path.split(".", 1)[0] not in PACKAGES:
            continue
        try:
            found = loader.modules_collection[path]
            documented = found.docstring is not None
        except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if documented:
            return f"[`{label}`][{path}]"
    return f"`{label}`"
