"""paperbook.data: the registry of real data sets, resolution order, checks, downloads from a loopback server."""

import gzip
import hashlib
import http.server
import json
import os
import threading
from functools import partial
from pathlib import Path

import pytest

from paperbook import data
from paperbook.data import DataFile, DataSet

from helpers import cli

SHARED = Path(os.environ.get("PAPERBOOK_DATA") or "/nonexistent")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FILES = {"a.txt": b"alpha\n" * 100, "sub/b.bin": bytes(range(256)) * 7}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    "A registered data set `toy` of two files, served by a loopback HTTP server; an empty cache and data root."
    served = tmp_path / "served"
    for name, content in FILES.items():
        (served / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (served / "toy" / name).write_bytes(content)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ds = DataSet("toy", "a toy data set", source="here", licence="CC0", chapters=("example",),
                 files=tuple(DataFile(n, len(c), _sha(c), f"http://unused/{n}") for n, c in FILES.items()))
    monkeypatch.setitem(data.REGISTRY, "toy", ds)
    monkeypatch.setenv("PAPERBOOK_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("PAPERBOOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PAPERBOOK_DATA", str(tmp_path / "root"))
    monkeypatch.setenv("PAPERBOOK_PROGRESS", "0")
    yield {"ds": ds, "served": served / "toy", "cache": tmp_path / "cache" / "data" / "toy", "root": tmp_path / "root"}
    server.shutdown()


def test_fetch_then_cache_hit(toy):
    assert data.locate("toy", download=False, quiet=True).source == "generated"
    path = data.fetch("toy", progress=False)
    assert path == toy["cache"] and (path / "sub/b.bin").read_bytes() == FILES["sub/b.bin"]
    found = data.locate("toy", download=False)
    assert (found.source, found.path) == ("cache", toy["cache"])
    assert found.record()["sha256"] == toy["ds"].digest and len(found.record()["sha256"]) == 64
    (toy["served"] / "a.txt").unlink()  # a second locate reads the cache, not the server
    assert data.locate("toy").source == "cache"


def test_locate_downloads_when_allowed(toy, monkeypatch):
    monkeypatch.delenv("PAPERBOOK_OFFLINE", raising=False)
    found = data.locate("toy")  # online (loopback), auto_download: fetched unasked
    assert found.source == "cache" and (toy["cache"] / "a.txt").is_file()


def test_offline_never_downloads(toy, monkeypatch, capsys):
    monkeypatch.setenv("PAPERBOOK_OFFLINE", "1")
    found = data.locate("toy")
    assert found.source == "generated" and found.path is None and not toy["cache"].exists()
    err = capsys.readouterr().err
    assert "data set 'toy' not found" in err and "paperbook data fetch toy" in err  # the one-line notice
    assert found.record() == {"source": "generated", "sha256": None, "path": None}


def test_a_wrong_download_never_enters_the_cache(toy):
    (toy["served"] / "a.txt").write_bytes(b"beta\n" * 120)  # same name and size (600 bytes), other content
    with pytest.raises(ValueError, match=r"a\.txt: SHA-256 [0-9a-f]{16}\.\.\., expected"):
        data.fetch("toy", progress=False)
    assert not (toy["cache"] / "a.txt").exists()
    toy["cache"].mkdir(parents=True)
    (toy["cache"] / "a.txt").write_bytes(b"beta\n" * 120)  # a wrong copy already in the cache is not kept
    with pytest.raises(ValueError, match=r"cache/data/toy/a\.txt: SHA-256"):
        data.fetch("toy", progress=False)


def test_a_truncated_download_is_refused_by_name(toy):
    (toy["served"] / "sub/b.bin").write_bytes(FILES["sub/b.bin"][:1000])
    with pytest.raises(ValueError, match=r"b\.bin: 1,000 bytes of content, expected 1,792"):
        data.fetch("toy", progress=False)
    assert not (toy["cache"] / "sub" / "b.bin").exists()


def test_folder_first_and_gzipped_copies_count(toy):
    folder = toy["root"] / "toy"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt.gz").write_bytes(gzip.compress(FILES["a.txt"]))  # compressed copy, same content hash
    (folder / "sub/b.bin").write_bytes(FILES["sub/b.bin"])
    found = data.locate("toy", download=False)
    assert (found.source, found.path) == ("folder", folder)


def test_a_damaged_folder_names_the_file(toy):
    folder = toy["root"] / "toy"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(FILES["a.txt"][:-1] + b"!")
    (folder / "sub/b.bin").write_bytes(FILES["sub/b.bin"])
    with pytest.raises(ValueError, match=r"a\.txt: SHA-256 .* expected"):
        data.locate("toy")
    assert data.where("toy").startswith("damaged: ") and "a.txt" in data.where("toy")  # `paperbook data list`
    (folder / "a.txt").write_bytes(FILES["a.txt"])
    (folder / "sub/b.bin").unlink()
    with pytest.raises(ValueError, match=r"lacks 1 file\(s\) of 'toy': sub/b.bin"):
        data.locate("toy")


def test_an_incomplete_cache_or_system_folder_is_passed_over(toy, monkeypatch, tmp_path):
    import dataclasses

    toy["cache"].mkdir(parents=True)
    (toy["cache"] / "a.txt").write_bytes(FILES["a.txt"])  # a fetch that stopped after the first file
    assert data.locate("toy", download=False, quiet=True).source == "generated"
    assert data.fetch("toy", progress=False) == toy["cache"]  # the fetch completes it
    assert data.locate("toy", download=False, quiet=True).source == "cache"
    system = tmp_path / "usr-share-toy"
    system.mkdir()
    (system / "a.txt").write_bytes(FILES["a.txt"])  # a system package's folder without sub/b.bin
    monkeypatch.setitem(data.REGISTRY, "toy", dataclasses.replace(toy["ds"], system_dirs=(str(system),)))
    assert data.locate("toy", download=False, quiet=True).path == toy["cache"]
    (system / "sub").mkdir()
    (system / "sub/b.bin").write_bytes(FILES["sub/b.bin"])
    assert data.locate("toy", download=False, quiet=True).path == system  # complete: before the cache


def test_a_truncated_gzip_is_an_error_not_a_crash(toy):
    folder = toy["root"] / "toy"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt.gz").write_bytes(gzip.compress(FILES["a.txt"])[:20])
    (folder / "sub/b.bin").write_bytes(FILES["sub/b.bin"])
    with pytest.raises(ValueError, match="truncated or damaged"):
        data.locate("toy")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'iwls'; known: iwls2020"):
        data.locate("iwls")


def test_digest_by_hand():
    ds = DataSet("d", "", source="", licence="", chapters=(),
                 files=(DataFile("b", 1, "22"), DataFile("a", 1, "11")))
    assert ds.digest == _sha(b"a 11\nb 22\n")
    assert DataSet("e", "", source="", licence="", chapters=(), files=(DataFile("x", None, None),)).digest is None


def test_cli_list_shows_missing_sets_with_size_and_licence(tmp_path):
    env_dir = tmp_path / "empty"
    env_dir.mkdir()
    r = cli("data", "list", env_extra={"PAPERBOOK_DATA": str(env_dir), "PAPERBOOK_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    for name in ("iwls2020", "ecoli", "melbourne_pedestrian", "nasbench_macro", "rhythmic_gymnastics", "lvis_v0_5"):
        assert "missing" in lines[name], lines[name]
    assert "133.8 MB" in lines["iwls2020"] and "CC BY 4.0" in lines["melbourne_pedestrian"]
    bad = cli("data", "fetch", "nope")
    assert bad.returncode == 2 and "unknown data set 'nope'" in bad.stderr


def test_cli_fetch_path_and_verify(toy, capsys):
    from paperbook.cli import main

    assert main(["data", "path", "toy"]) == 2 and "not on this machine" in capsys.readouterr().err
    assert main(["data", "fetch", "toy", "nope"]) == 2 and "unknown data set 'nope'" in capsys.readouterr().err
    assert not toy["cache"].exists()  # a bad name among the good ones: nothing is fetched
    assert main(["data", "verify", "toy"]) == 0 and capsys.readouterr().out == "toy: missing (not checked)\n"
    assert main(["data", "fetch"]) == 2 and "needs data set names" in capsys.readouterr().err
    assert main(["data", "fetch", "toy"]) == 0 and capsys.readouterr().out == f"toy: {toy['cache']}\n"
    assert main(["data", "path", "toy"]) == 0 and capsys.readouterr().out == f"{toy['cache']}\n"
    assert main(["data", "verify", "toy"]) == 0
    assert capsys.readouterr().out == f"toy: ok (2 files in {toy['cache']}, sizes and SHA-256 as recorded)\n"
    (toy["cache"] / "a.txt").write_bytes(FILES["a.txt"][:-1] + b"!")  # damaged after the fetch
    assert main(["data", "verify", "toy"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("toy: ") and "a.txt" in out and "ok (" not in out
    assert main(["data", "verify"]) == 1  # no names: every registered set, each on its own line
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == list(data.REGISTRY)
    assert main(["data", "list"]) == 0
    toy_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("toy "))
    assert toy_line.split()[1:3] == ["2", "kB"]  # 600 + 1,792 bytes


# ---- the real files, where this repository has them ----------------------------------------------------
needs_shared = pytest.mark.skipif(not (SHARED / "iwls2020").is_dir(), reason="no PAPERBOOK_DATA with the real data")


@needs_shared
def test_the_recorded_hashes_are_those_of_the_real_files():
    for name in ("iwls2020", "ecoli", "melbourne_pedestrian", "nasbench_macro", "rhythmic_gymnastics"):
        found = data.locate(name, download=False)
        assert found.source == "folder" and found.path == SHARED / name


@needs_shared
def test_runs_record_which_data_they_used(tmp_path):
    sets = ["--set", "functions=ex31,ex44", "--set", "jobs=1", "--set", "abc_check=false"]
    real = cli("run", "iwls2020", *sets, "--out", tmp_path / "real")
    assert real.returncode == 0, real.stderr[-2000:]
    gen = cli("run", "iwls2020", "--set", "functions=comparator-20", "--set", "jobs=1", "--set", "abc_check=false",
              "--out", tmp_path / "gen", env_extra={"PAPERBOOK_DATA": str(tmp_path / "nothing")})
    assert gen.returncode == 0, gen.stderr[-2000:]
    rec = {k: json.loads((tmp_path / k / "metrics.json").read_text())["data"]["iwls2020"] for k in ("real", "gen")}
    assert rec["real"]["source"] == "folder" and rec["real"]["sha256"] == data.REGISTRY["iwls2020"].digest
    assert rec["gen"]["source"] == "generated"
    assert "data set 'iwls2020' not found" in gen.stderr  # the fallback says so


# ---- small pieces, by hand ----------------------------------------------------------------------------
def test_sizes_digests_and_addresses_by_hand():
    ds = DataSet("d", "", source="", licence="", chapters=(), files=(DataFile("x", None, None), DataFile("y", 5, "ab")))
    assert ds.size == 5 and ds.digest is None  # an unrecorded size counts 0; one missing hash: no digest
    files = data._table("a 3 ff\nsub/b 4 ee", "https://host/v1/{name}")
    assert files == (DataFile("a", 3, "ff", "https://host/v1/a"), DataFile("sub/b", 4, "ee", "https://host/v1/sub/b"))
    ex00 = next(f for f in data.REGISTRY["iwls2020"].files if f.name == "ex00.train.pla")
    assert ex00.url.endswith("/Benchmark/ex00.train.pla") and ex00.size == 224031
    rows = {r["name"]: r for r in data.status()}
    assert rows["lvis_v0_5"]["size_mb"] is None and rows["fashion_mnist"]["size_mb"] == 55.0  # 54,950,048 bytes


def test_a_hash_that_differs_in_its_last_digit_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"content")
    sha = _sha(b"content")
    data.check_file(tmp_path / "f", DataFile("f", 7, sha))
    wrong = sha[:-1] + ("0" if sha[-1] != "0" else "1")
    with pytest.raises(ValueError, match="not the recorded file"):
        data.check_file(tmp_path / "f", DataFile("f", 7, wrong))


def test_online_asks_the_schemes_port(monkeypatch):
    import socket

    asked = []

    class Conn:
        def close(self):
            pass

    def connect(address, timeout):
        asked.append(address)
        if address[0] == "down":
            raise OSError("refused")
        return Conn()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert data._online("https://example.org/x") and data._online("http://example.org/x")
    assert data._online("http://example.org:8080/x") and not data._online("https://down/x")
    assert asked == [("example.org", 443), ("example.org", 80), ("example.org", 8080), ("down", 443)]


def test_a_set_with_a_file_without_address_is_not_downloaded_unasked(toy, monkeypatch):
    mirror = os.environ["PAPERBOOK_DATA_URL"]
    monkeypatch.delenv("PAPERBOOK_DATA_URL")
    monkeypatch.delenv("PAPERBOOK_OFFLINE", raising=False)
    a, b = toy["ds"].files
    ds = DataSet("toy", "", source="", licence="", chapters=(),
                 files=(DataFile(a.name, a.size, a.sha256, f"{mirror}/toy/{a.name}"),
                        DataFile(b.name, b.size, b.sha256)))
    monkeypatch.setitem(data.REGISTRY, "toy", ds)
    assert data.locate("toy", quiet=True).source == "generated"  # the first file is online, the second has no address
    with pytest.raises(ValueError, match="no public address is recorded for sub/b.bin"):
        data.fetch("toy", progress=False)


def test_verify_rehashes_a_file_changed_in_place(toy):
    path = data.fetch("toy", progress=False) / "a.txt"
    assert data.verify("toy")["files"] == 2  # hashes now cached by path, mtime and size
    st = path.stat()
    path.write_bytes(FILES["a.txt"][:-1] + b"!")  # same size ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same time stamp
    with pytest.raises(ValueError, match=r"a\.txt: SHA-256"):
        data.verify("toy")


def test_idx_by_hand(tmp_path):
    head = lambda t, *dims: bytes([0, 0, t, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    (tmp_path / "ok").write_bytes(head(0x08, 2, 3) + bytes(range(6)))
    assert data.read_idx(tmp_path / "ok").tolist() == [[0, 1, 2], [3, 4, 5]]
    for name, raw, message in [("signed", head(0x09, 2) + b"\x01\x02", "0x09 is not supported"),
                               ("long", head(0x08, 2) + b"\x01\x02\x03", "holds 3"),
                               ("nodims", head(0x08) + b"\x07", r"truncated IDX header \(0 dimensions\)")]:
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=message):
            data.read_idx(tmp_path / name)
