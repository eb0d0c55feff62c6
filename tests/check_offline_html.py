"""Check that a built book loads no script, style, font or image from outside itself.

Usage: python tests/check_offline_html.py _build/html   (exit status 1 and a list when it does)
"""

import re
import sys
from pathlib import Path

# What a page *loads*: script/img/iframe src, <link href> (stylesheets, preloads, icons), CSS url(...)
# and @import. Plain <a href> links to other sites are fine: they load nothing.
_TAG = re.compile(r"<(script|link|img|iframe|source)\b[^>]*>", re.I)
_ATTR = re.compile(r"\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_CSS = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])((?:https?:)?//[^\"')\s]+)", re.I)
_EXTERNAL = re.compile(r"^(?:https?:)?//", re.I)


def external_loads(html: str) -> list[str]:
    "URLs outside the book that an HTML page (or CSS text) would load."
    found = []
    for tag in _TAG.finditer(html):
        text = tag.group(0)
        if tag.group(1).lower() == "link" and re.search(r"rel=[\"']?(?:canonical|alternate)", text, re.I):
            continue
        found += [u for u in _ATTR.findall(text) if _EXTERNAL.match(u)]
    return found + _CSS.findall(html)


def main(root: str) -> int:
    root_p = Path(root)
    pages = sorted(root_p.rglob("*.html"))
    if not pages:
        print(f"no HTML pages under {root_p}")
        return 1
    bad = {}
    for p in pages + sorted(root_p.rglob("*.css")):
        urls = external_loads(p.read_text(errors="replace"))
        if urls:
            bad[p] = sorted(set(urls))
    for p, urls in bad.items():
        print(f"{p}: loads {', '.join(urls)}")
    print(f"offline check: {len(pages)} pages, {len(bad)} files load something from outside the book")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
