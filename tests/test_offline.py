"""The offline check that `make book` runs on the built HTML."""

from check_offline_html import external_loads


def test_flags_what_a_page_loads_from_outside():
    html = """<script src="https://cdn.example.org/x.js"></script><script src="_static/ok.js"></script>
    <link rel="stylesheet" href="//fonts.example.org/a.css"><link rel="canonical" href="https://site/x.html">
    <a href="https://arxiv.org/abs/2104.12369">paper</a><style>@font-face{src:url("https://f.example/x.woff2")}</style>"""
    assert sorted(external_loads(html)) == ["//fonts.example.org/a.css", "https://cdn.example.org/x.js",
                                            "https://f.example/x.woff2"]


def test_local_page_is_clean():
    assert external_loads('<script src="../_static/mathjax/tex-chtml.js"></script>') == []
