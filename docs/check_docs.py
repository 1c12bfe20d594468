"""Check the Markdown documentation (the tox ``docs`` env runs this).

    python docs/check_docs.py

Fails (exit status 1, one line per problem) when
- a Markdown page in docs/ is not linked from docs/index.md;
- a relative link in a docs page (or in the README) points to a missing file;
- a component that this distribution (``pactframe``: the built-ins) registers is
  named on no docs page; components of other installed distributions, or of plugin
  objects registered by hand, are theirs to document and are not checked;
- a hook of ``pactframe.hookspecs`` is named on no docs page.

``tests/unit/test_docs.py`` runs the same checks one by one.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DISTRIBUTION = "pactframe"
DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
INDEX = DOCS / "index.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:...


def pages() -> list[Path]:
    """Every Markdown page under docs/, sorted."""
    return sorted(DOCS.rglob("*.md"))


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are examples)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    """Link targets (inline and reference-style) of a Markdown file, outside code."""
    text = prose(path.read_text(encoding="utf-8"))
    return _LINK.findall(text) + _REFERENCE.findall(text)


def local_target(source: Path, target: str) -> Path | None:
    """The file a relative link points to, or None for external links and bare anchors."""
    if _EXTERNAL.match(target) or target.startswith("#"):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    return (source.parent / path).resolve()


def unlinked_pages() -> list[str]:
    if not INDEX.exists():
        return ["docs/index.md is missing"]
    linked = {local_target(INDEX, t) for t in links(INDEX)}
    return [
        f"{page.relative_to(ROOT)} is not linked from docs/index.md"
        for page in pages()
        if page != INDEX and page.resolve() not in linked
    ]


def broken_links(files: Iterable[Path] | None = None) -> list[str]:
    if files is None:
        files = [*pages(), *(p for p in [ROOT / "README.md"] if p.exists())]
    problems = []
    for source in files:
        for target in links(source):
            path = local_target(source, target)
            if path is not None and not path.exists():
                problems.append(f"{source.relative_to(ROOT)}: broken link to {target!r}")
    return problems


def _docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in pages())


def _mentioned(word: str, text: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text) is not None


def own_entries(registry: Any = None) -> list[Any]:
    """The registry entries (default: every installed entry point) that come from
    this distribution; a third-party plugin in the environment adds none."""
    if registry is None:
        from pactframe.registry import build_registry

        registry = build_registry()
    return [e for e in registry.entries() if e.distribution.split(" ")[0] == DISTRIBUTION]


def undocumented_components(registry: Any = None) -> list[str]:
    entries = own_entries(registry)
    if not entries:
        return [f"no component of the {DISTRIBUTION!r} distribution is registered: install it"]
    text = _docs_text()
    return [
        f"the {entry.kind} {entry.name!r} ({entry.provider}) is named on no docs page"
        for entry in entries
        if not _mentioned(entry.name, text)
    ]


def hooks() -> list[str]:
    """The hook names that ``pactframe.hookspecs`` declares."""
    from pactframe import hookspecs

    return sorted(
        name
        for name in dir(hookspecs)
        if name.startswith("pactframe_")
        and hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT_NAME}_spec")
    )


def undocumented_hooks() -> list[str]:
    text = _docs_text()
    return [
        f"the hook {hook} is named on no docs page"
        for hook in hooks()
        if not _mentioned(hook, text)
    ]


CHECKS = (unlinked_pages, broken_links, undocumented_components, undocumented_hooks)


def main() -> int:
    problems = [problem for check in CHECKS for problem in check()]
    for problem in problems:
        print(f"docs: {problem}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"docs: {len(pages())} pages OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
