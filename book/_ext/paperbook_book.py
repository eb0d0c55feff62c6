"""Sphinx glue for the paperbook book (loaded through _config.yml `local_extensions`).

- Hide nbdev's directive comments (`#| export`, `#| default_exp ...`) on the rendered pages: they
  steer the library export and mean nothing to a reader. The lines are comments, so dropping them
  does not change what a cell computes.
- Read (and so execute) the reproduction dashboard last, after every chapter has written its
  metrics.json under $PAPERBOOK_RUNS.
"""

import json

LAST = ("book/dashboard",)


def strip_directives(text: str) -> str:
    """A notebook's JSON text without nbdev's `#|` lines (and the blank lines they leave at a cell's top).
    book/execute.py executes the notebooks as this makes them, so that the build finds them in its cache."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(True)
        kept = [line for line in src if not line.lstrip().startswith("#|")]
        while kept and not kept[0].strip():
            kept.pop(0)
        cell["source"] = kept
    return json.dumps(nb)


def _strip_directives(app, docname, source):
    if app.env.doc2path(docname).endswith(".ipynb"):
        source[0] = strip_directives(source[0])


def _read_last(app, env, docnames):
    for name in LAST:
        if name in docnames:
            docnames.remove(name)
            docnames.append(name)


def setup(app):
    app.connect("source-read", _strip_directives)
    app.connect("env-before-read-docs", _read_last)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
