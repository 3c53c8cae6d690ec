"""`clipbench data fetch` and `data check` against a local HTTP server on 127.0.0.1 serving small archives in
the real formats (CIFAR-100's tar.gz of pickles, MNIST's gzip'd idx files), with the sources' checksums
replaced by the test archives' own: a good fetch, wrong bytes, a server that stops mid-file, Ctrl-C."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from clipbench import download
from clipbench.protocols import sources
from clipbench.protocols.formats.cifar import read as read_cifar
from clipbench.protocols.smoke_data import write_cifar
from helpers import run_cli

TRAIN, TEST = 200, 100  # the smoke writer's CIFAR-100: every class, 2 train and 1 test image each


def _cifar_archive(tmp: Path) -> bytes:
    write_cifar({"adapter": "cifar", "root": "."}, tmp, np.random.default_rng(0))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp / "cifar-100-python", arcname="cifar-100-python")
    return buf.getvalue()


class Server:
    """Serves `files` by name; `mode` "ok", "wrong" (other bytes for every path) or "drop" (the first request
    of each file stops halfway). Honours Range requests, and records every request's Range header."""

    def __init__(self, files: Dict[str, bytes]):
        self.files, self.mode, self.ranges = files, "ok", []
        self.dropped: set = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                if server.mode == "wrong":
                    body = b"not the archive " * 64
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.mode == "drop" and name not in server.dropped:
                    server.dropped.add(name)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A server holding a CIFAR-100 archive, and the cifar100 source's checksum set to that archive's."""
    archive = _cifar_archive(tmp_path / "made")
    old = sources.SOURCES["cifar100"]
    d = dataclasses.replace(old.downloads[0], md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(sources.SOURCES, "cifar100", dataclasses.replace(old, downloads=(d,)))
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    server = Server({d.file: archive})
    yield server
    server.close()


def _files(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def fetch(root: Path, server: Server, *extra: str) -> int:
    return run_cli("data", "fetch", "--suite", "cil_cifar100", "--root", root, "--only", "cifar100",
                   "--mirror", server.url, *extra)


def test_fetch_lays_out_cifar_where_the_protocol_reads_it(tmp_path, served, capsys):
    root = tmp_path / "R"
    assert fetch(root, served) == 0
    images, names = read_cifar(root / "cifar100", "train")  # the protocol's `root: cifar100`
    assert len(images) == TRAIN and len(names) == 100
    assert not (root / ".clipbench-fetch").exists()  # the staging folder is gone
    assert "fetched" in capsys.readouterr().out
    assert fetch(root, served) == 0  # again: found, nothing downloaded
    assert "found" in capsys.readouterr().out and len(served.ranges) == 1


def test_wrong_bytes_end_in_one_line_exit_2_and_nothing_left(tmp_path, served, capsys):
    served.mode = "wrong"
    root = tmp_path / "R"
    assert fetch(root, served) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0] and "cifar-100-python.tar.gz" in err[0]
    assert _files(root) == [] and not root.exists()


def test_a_server_that_stops_mid_file_is_resumed(tmp_path, served):
    served.mode = "drop"
    root = tmp_path / "R"
    assert fetch(root, served) == 0
    assert served.ranges[0] is None and served.ranges[1] is not None and served.ranges[1].startswith("bytes=")
    assert len(read_cifar(root / "cifar100", "test")[0]) == TEST


def test_ctrl_c_keeps_the_partial_download_and_the_rerun_continues(tmp_path, served, monkeypatch):
    real = download.urllib.request.urlopen

    class Interrupting:
        """The first response raises KeyboardInterrupt after its first block, as Ctrl-C mid-transfer."""

        def __init__(self, response):
            self.response, self.reads = response, 0

        def __getattr__(self, name):
            return getattr(self.response, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

        def read(self, n):
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self.response.read(100)

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Interrupting(real(*a, **k)))
    root = tmp_path / "R"
    assert fetch(root, served) == 130
    assert not (root / "cifar100").exists()  # nothing half-written where the protocol reads
    [part] = _files(root)
    assert part.name.endswith(".part") and part.stat().st_size == 100
    monkeypatch.setattr(download.urllib.request, "urlopen", real)
    assert fetch(root, served) == 0
    assert served.ranges[-1] == "bytes=100-"
    assert len(read_cifar(root / "cifar100", "train")[0]) == TRAIN and not (root / ".clipbench-fetch").exists()


def test_check_names_every_mtil_dataset_missing(tmp_path, capsys):
    assert run_cli("data", "check", "--suite", "mtil", "--root", tmp_path / "EMPTY") == 1
    out = capsys.readouterr().out
    for name in ("Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food", "MNIST", "OxfordPet",
                 "StanfordCars", "SUN397"):
        assert f"datasets/{name}" in out and "missing" in out
    assert "dataset(s) missing" in out and not (tmp_path / "EMPTY").exists()


def test_check_says_when_a_dataset_is_not_the_reference_split(tmp_path, served, capsys):
    root = tmp_path / "R"
    assert fetch(root, served) == 0
    assert run_cli("data", "check", "--suite", "cil_cifar100", "--root", root) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "train has 200 images, the reference 50000" in out


def test_bad_input_is_refused_before_anything_is_written(tmp_path, served, capsys):
    root = tmp_path / "R"
    assert run_cli("data", "fetch", "--suite", "cil_cifar100", "--root", root, "--only", "cifar1000") == 2
    assert "cifar1000" in capsys.readouterr().err
    assert run_cli("data", "fetch", "--suite", "cil_cifar100", "--root", root, "--mirror", "ftp://x") == 2
    assert not root.exists()


def test_sources_table_is_consistent():
    assert sources.check_sources() == []
    for s in sources.SOURCES.values():
        assert s.cite or s.manual, s.name
        for fmt in s.places:
            from clipbench.protocols.formats import FORMATS

            assert fmt in FORMATS.names(), (s.name, fmt)


def test_run_records_name_the_check(tmp_path, served):
    """What a record of a cil_cifar100 run keeps under `data_check` (`runner._data_check`)."""
    from clipbench.protocols.catalog import get_protocol
    from clipbench.runner import _data_check
    from clipbench.spec import RunSpec

    root = tmp_path / "R"
    assert fetch(root, served) == 0
    protocol = get_protocol("cifar100_10steps")
    spec = RunSpec(suite="cil_cifar100", method="finetune", method_version=1, method_config={}, protocol=protocol.name,
                   protocol_version=protocol.version, protocol_kind=protocol.kind, protocol_params=protocol.params,
                   model={}, seed=0, train={}, eval={}, precision="fp32", data_root=str(root))
    verdicts = _data_check(spec)
    assert verdicts["target"].startswith("differs: train has 200 images, the reference 50000")
