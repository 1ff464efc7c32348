"""zipnet.download against a real HTTP server on 127.0.0.1: success, mirror fallback on
checksum mismatch and 404, interrupted transfers, and the all-failed error."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zipnet.download import DownloadError, Remote, fetch
from zipnet.errors import DataError

PAYLOAD = b"zip code digits " * 5000  # 80 kB: more than one read chunk
OTHER = b"not the digits " * 100


class Server:
    """routes: path -> (body, declared Content-Length or None for the true one)."""

    def __init__(self):
        self.routes, self.hits = {}, []
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)  # then close: a short body is an interrupted transfer
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path, body, length=None):
        self.routes[path] = (body, length)
        return self.base + path


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def only_file(root):
    """Everything left in root, hidden temporaries included."""
    return sorted(p.name for p in root.iterdir())


def test_success_is_verified_and_kept(server, tmp_path):
    url = server.add("/a/digits.bin", PAYLOAD)
    remote = Remote(
        "digits.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest(), sha256=hashlib.sha256(PAYLOAD).hexdigest()
    )
    path = fetch(remote, tmp_path / "root", progress=False)
    assert path.read_bytes() == PAYLOAD and only_file(tmp_path / "root") == ["digits.bin"]
    fetch(remote, tmp_path / "root", progress=False)  # present and verified: no second download
    assert server.hits == ["/a/digits.bin"]


def test_progress_bar_draws_when_asked(server, tmp_path, capsys):
    url = server.add("/a/digits.bin", PAYLOAD)
    fetch(Remote("digits.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest()), tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "digits.bin: 100%" in err and "80.0k/80.0k" in err


def test_checksum_mismatch_and_404_fall_over_to_the_next_url(server, tmp_path):
    urls = (
        server.base + "/missing/digits.bin",
        server.add("/bad/digits.bin", OTHER),
        server.add("/good/digits.bin", PAYLOAD),
    )
    path = fetch(Remote("digits.bin", urls, md5=hashlib.md5(PAYLOAD).hexdigest()), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.hits == ["/missing/digits.bin", "/bad/digits.bin", "/good/digits.bin"]
    assert only_file(tmp_path) == ["digits.bin"]


def test_interrupted_transfer_leaves_nothing_that_looks_valid(server, tmp_path):
    url = server.add("/short/digits.bin", PAYLOAD[:20000], length=len(PAYLOAD))
    with pytest.raises(DownloadError) as err:
        fetch(Remote("digits.bin", (url,), md5=hashlib.md5(PAYLOAD).hexdigest()), tmp_path, progress=False)
    assert url in str(err.value) and ("IncompleteRead" in str(err.value) or "interrupted" in str(err.value))
    assert only_file(tmp_path) == []


def test_interrupted_transfer_without_checksum_is_caught_by_length(server, tmp_path):
    url = server.add("/short/digits.bin", PAYLOAD[:20000], length=len(PAYLOAD))
    with pytest.raises(DownloadError):
        fetch(Remote("digits.bin", (url,)), tmp_path, check=lambda path: None, progress=False)
    assert only_file(tmp_path) == []


def test_every_url_failing_lists_them_with_reasons_and_the_hint(server, tmp_path):
    urls = (server.base + "/missing/x.gz", server.add("/bad/x.gz", OTHER))
    with pytest.raises(DownloadError) as err:
        fetch(
            Remote("x.gz", urls, md5="0" * 32),
            tmp_path,
            hint="Put x.gz in data.root by hand; data=embedded works offline.",
            progress=False,
        )
    text = str(err.value)
    assert f"{urls[0]}: HTTP 404" in text
    assert f"{urls[1]}: checksum mismatch: " in text and f"expected md5:{'0' * 32} but got " in text
    assert "data.root" in text and "data=embedded" in text
    assert [u for u, _ in err.value.tried] == list(urls)
    assert only_file(tmp_path) == []


def test_unreachable_host_is_a_reason_not_a_crash(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        fetch(Remote("x", ("http://127.0.0.1:9/x",), md5="0" * 32), tmp_path, timeout=2, progress=False)


def test_content_check_stands_in_for_a_missing_checksum(server, tmp_path):
    def check(path):
        if path.read_bytes() != PAYLOAD:
            raise DataError(f"{path}: not the digits")

    urls = (server.add("/bad/zip.gz", OTHER), server.add("/good/zip.gz", PAYLOAD))
    assert fetch(Remote("zip.gz", urls), tmp_path, check=check, progress=False).read_bytes() == PAYLOAD
    with pytest.raises(ValueError, match="unverified"):
        fetch(Remote("zip.gz", urls), tmp_path / "other")


def test_a_bad_file_already_in_root_is_reported_not_used(tmp_path):
    (tmp_path / "x.gz").write_bytes(OTHER)
    with pytest.raises(DataError, match=r"x\.gz: checksum mismatch: expected md5"):
        fetch(Remote("x.gz", ("http://127.0.0.1:9/x.gz",), md5="0" * 32), tmp_path, progress=False)
