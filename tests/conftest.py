import socket
from pathlib import Path

import pytest
import torch

from clipag.world import scenes as world
from clipag.checkpoint import save_checkpoint
from clipag.models import _guide, build_model


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test touches the network: non-loopback connections fail, hubs are offline, and
    downloads go to a fresh cache."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                      or host.startswith("/")):
            return real_connect(self, address)
        raise OSError(f"network access blocked in tests: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants  # it reads the variable once, at import

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("CLIPAG_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def tiny_guide():
    model, tokenizer = build_model("clipag-tiny", seed=0)
    return _guide(model, tokenizer, "tiny", {"arch": "clipag-tiny"})


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_guide) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, tiny_guide.model.state_dict(), {"arch": "clipag-tiny", "name": "tiny"})
    return path


@pytest.fixture(scope="session")
def world_captions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    return world.export(out, 96, world.WorldConfig(seed=0, size=32, digit_fraction=0.1))


@pytest.fixture(scope="session")
def world_classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world_classes")
    return world.export(out, 256, world.WorldConfig(seed=3, size=32, digit_fraction=0.0),
                        layout="classes")
