"""Check the built documentation site (``make docs`` runs it after ``mkdocs build``).

Fails, naming the page, when a page still shows a Sphinx role as text (``:class:``, ``:meth:``...:
mkdocstrings renders them literally; docstrings use its own ``[`name`][path]`` cross-references),
when it shows a literal double backtick (a docstring section garbled, as a Returns line that
griffe split at a colon into a "type" and a description), or when a page loads anything from
outside the site (a script, a stylesheet, a font, an image): the site must render on a network
that drops outside traffic. Plain links to other sites are fine.

Usage: ``python scripts/check_site.py [SITE_DIR]`` (default ``site``).
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|obj|exc|ref|doc):`?")
# Attributes that make the browser fetch something, by tag (an <a href> is only a link).
LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src", "video": "src",
         "embed": "src", "link": "href"}  # fmt: skip
# Text that reads as a literal in reStructuredText: a section griffe garbled, or a role's remains.
LITERAL = re.compile(r"``")
EXTERNAL = re.compile(r"^(?:https?:)?//", re.IGNORECASE)
CSS_EXTERNAL = re.compile(r"(?:url\(\s*['\"]?|@import\s+['\"])(?:https?:)?//", re.IGNORECASE)


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.loads: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        attribute = LOADS.get(tag)
        values = dict(attrs)
        if tag == "link" and (values.get("rel") or "") in ("canonical", "alternate", "next", "prev"):
            return  # metadata, nothing fetched
        if attribute and EXTERNAL.match(values.get(attribute) or ""):
            self.loads.append(f"<{tag} {attribute}={values[attribute]}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def problems(site: Path) -> list[str]:
    found = []
    for path in sorted(site.rglob("*.html")):
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        name = path.relative_to(site)
        text = "".join(page.text)
        for pattern, what in ((ROLE, "a Sphinx role"), (LITERAL, "a literal double backtick")):
            for match in pattern.finditer(text):
                context = " ".join(text[max(0, match.start() - 40) : match.end() + 40].split())
                found.append(f"{name}: shows {what}: ...{context}...")
        found += [f"{name}: loads {load} from outside the site" for load in page.loads]
    for path in sorted(site.rglob("*.css")):
        if CSS_EXTERNAL.search(path.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{path.relative_to(site)}: a stylesheet loads from outside the site")
    return found


def main() -> int:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "site")
    if not site.is_dir():
        print(f"{site}: no built site (run mkdocs build first)", file=sys.stderr)
        return 2
    found = problems(site)
    for line in found:
        print(line, file=sys.stderr)
    pages = len(list(site.rglob("*.html")))
    print(f"{site}: {pages} pages, {len(found)} problems (Sphinx roles or double backticks shown, outside loads)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
