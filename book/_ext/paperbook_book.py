"""Sphinx glue for the paperbook book (loaded through _config.yml `local_extensions`).

- Hide nbdev's directive comments (`#| export`, `#| default_exp ...`) on the rendered pages: they
  steer the library export and mean nothing to a reader. The lines are comments, so dropping them
  does not change what a cell computes.
- Read (and so execute) the reproduction dashboard last, after every chapter has written its
  metrics.json under $PAPERBOOK_RUNS.
"""

import json

LAST = ("book/dashboard",)


def _strip_directives(app, docname, source):
    if not app.env.doc2path(docname).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(True)
        kept = [line for line in src if not line.lstrip().startswith("#|")]
        while kept and not kept[0].strip():
            kept.pop(0)
        cell["source"] = kept
    source[0] = json.dumps(nb)


def _read_last(app, env, docnames):
    for name in LAST:
        if name in docnames:
            docnames.remove(name)
            docnames.append(name)


def setup(app):
    app.connect("source-read", _strip_directives)
    app.connect("env-before-read-docs", _read_last)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
