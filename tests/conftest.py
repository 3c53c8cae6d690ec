"""Test set-up: offline by construction, and small helpers shared by the tests."""

from __future__ import annotations

import socket

import pytest

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


class NetworkUsedInTest(OSError):
    """Raised when a test resolves or connects beyond loopback: to code under test it looks
    exactly like an offline machine (an OSError), which is what users without internet see."""


class HubDownloadInTest(RuntimeError):
    """Raised when a test tries a Hugging Face hub download: never caught as a network error."""


def _is_local(host) -> bool:
    return host in (None, "localhost", "127.0.0.1", "::1", "") or str(host).startswith("127.")


@pytest.fixture(autouse=True)
def runs_in_process(monkeypatch):
    """`clipbench run` keeps its runs in the test's process (tests patch its internals); `--jobs N` still starts
    N workers (tests/test_gridspeed.py)."""
    monkeypatch.setenv("CLIPBENCH_JOBS", "1")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any lookup or connection beyond loopback fails loudly, so no test can download weights."""

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkUsedInTest(f"test tried to resolve {host!r}: tests must stay offline")
        return _real_getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(address, tuple) and not _is_local(host):
            raise NetworkUsedInTest(f"test tried to connect to {address!r}: tests must stay offline")
        return _real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise HubDownloadInTest("test tried a Hugging Face hub download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    yield


@pytest.fixture
def results(tmp_path):
    """A fresh results folder."""
    return tmp_path / "results"


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A real open_clip architecture (ViT-B-32) with random weights (seed 0) saved to a file, as a user passes
    real weights: the slow end-to-end runs of the real suites load it."""
    import open_clip
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit-b-32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
    return path
