"""Downloads: partial files, resume, sha256 recorded and checked; `clipag models` sizes and
--verify. The server runs on loopback only and stops with the test."""

from __future__ import annotations

import http.server
import threading

import pytest
from click.testing import CliRunner

import layouts
from clipag.cli.main import cli
from clipag.errors import ClipagError
from clipag.hub import cache_dir, download, fetch, partial_path, recorded_digest, sha256_of

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Server:
    """Serves PAYLOAD with Range support; the first `cuts` responses stop half way."""

    def __init__(self, cuts: int = 0):
        state = {"cuts": cuts, "ranges": []}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                start = 0
                header = self.headers.get("Range")
                state["ranges"].append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                body = PAYLOAD[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state["cuts"]:
                    state["cuts"] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.state = state
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/CLIPAG_ViTB32.pt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(cuts=0):
        made.append(Server(cuts))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_an_interrupted_download_keeps_its_part_and_resumes(server):
    srv = server(cuts=1)
    dest = cache_dir() / "CLIPAG_ViTB32.pt"
    with pytest.raises(ClipagError, match="bytes kept in CLIPAG_ViTB32.pt.part, the next try resumes"):
        download(srv.url, dest, quiet=True)
    assert not dest.exists() and 0 < partial_path(dest).stat().st_size < len(PAYLOAD)
    download(srv.url, dest, quiet=True)
    assert dest.read_bytes() == PAYLOAD and not partial_path(dest).exists()
    assert srv.state["ranges"][1] == f"bytes={len(PAYLOAD) // 2}-"  # it resumed
    assert recorded_digest(dest) == sha256_of(dest)


def test_a_cached_download_is_checked_on_every_load(server):
    srv = server()
    path = fetch(srv.url, quiet=True)
    assert fetch(srv.url, quiet=True) == path and len(srv.state["ranges"]) == 1  # no re-download
    path.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ClipagError, match="does not match the sha256 recorded"):
        fetch(srv.url, quiet=True)


def test_download_errors_keep_the_whole_cause():
    with pytest.raises(ClipagError) as info:
        download("http://127.0.0.1:9/nothing/here.pt", cache_dir() / "here.pt", quiet=True)
    assert "Connection refused" in str(info.value) or "Errno" in str(info.value)


def test_models_counts_hub_files_once_and_verifies(tmp_path):
    repo = "chs20/FARE4-ViT-B-32-laion2B-s34B-b79K"
    weights = b"\x00" * (3 * 2**20)
    layouts.hf_cache_repo(cache_dir(), repo, {"open_clip_config.json": b"{}",
                                              "open_clip_pytorch_model.bin": weights})
    result = CliRunner().invoke(cli, ["models"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "fare4-vitb32 " in line)
    assert "cached" in row and "3.0 MiB" in row  # the blob, not blob + snapshot link
    ok = CliRunner().invoke(cli, ["models", "--verify"], env={"COLUMNS": "400"})
    assert ok.exit_code == 0 and "verified" in ok.output
    blob = next((cache_dir() / f"models--{repo.replace('/', '--')}" / "blobs").glob("*"),
                None)
    big = max(blob.parent.iterdir(), key=lambda p: p.stat().st_size)
    big.write_bytes(weights[:-1] + b"\x01")
    bad = CliRunner().invoke(cli, ["models", "--verify"], env={"COLUMNS": "400"})
    assert bad.exit_code == 2 and "CORRUPT" in bad.output and "do not match" in bad.output
