"""sglib.data.download against a local HTTP server (127.0.0.1, random port) serving *synthetic* archives.

Nothing here reaches the internet: every base URL points at the in-test server, which supports
Range requests (with If-Range against an ETag or Last-Modified it can announce) and can inject
5xx answers, cut a response short, omit Content-Length, send slowly, redirect a path prefix with
301 (as www.robots.ox.ac.uk/~vgg/data does to thor.robots.ox.ac.uk) or misbehave on purpose.
"""
import hashlib
import io
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from sglib.data.revisitop import DatasetError, load_revisitop, load_revisitop1m_list, write_revisitop_gnd
from sglib.data import download
from sglib.data.download import (REVISITOP1M_PARTS, ArchiveError, DownloadError, download_revisitop,
                            download_revisitop1m, fetch)

FAST = dict(backoff=0.01, timeout=5, progress=False)
PUBLISHED_SIZES = dict(download.KNOWN_SIZES)


@pytest.fixture(autouse=True)
def synthetic_sizes(monkeypatch):
    """The synthetic archives are not the published ones: no known sizes unless a test sets some."""
    monkeypatch.setattr(download, "KNOWN_SIZES", {})


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        state = self.server.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        moved = next((p for p in state.redirect if self.path.startswith(p)), None)
        if moved is not None:
            self.send_response(301)
            target = state.redirect[moved]  # a path prefix on this server, or a whole URL
            self.send_header("Location", target if "://" in target else state.url + target + self.path[len(moved):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if state.fail.get(self.path):
            self.send_error(state.fail[self.path].pop(0))
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if_range = self.headers.get("If-Range")
        state.if_range.append((self.path, if_range))
        validators = {state.etag.get(self.path), state.modified.get(self.path)} - {None}
        if if_range is not None and if_range not in validators and self.path not in state.ignore_if_range:
            rng = None  # RFC 9110: a failed If-Range means the whole file is sent with 200
        start, status = 0, 200
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        elif self.path in state.partial_without_range:  # misbehaving: 206 from byte 10 to a plain GET
            start, status = 10, 206
        body = data[start:]
        self.send_response(status)
        if self.path in state.bad_length:
            self.send_header("Content-Length", state.bad_length[self.path])
        elif self.path not in state.no_length:
            self.send_header("Content-Length", str(len(body)))
        if status == 206:
            honest = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self.send_header("Content-Range", state.bad_range.get(self.path, honest))
        if self.path in state.etag:
            self.send_header("ETag", state.etag[self.path])
        if self.path in state.modified:
            self.send_header("Last-Modified", state.modified[self.path])
        self.end_headers()
        cut = state.cut.pop(self.path, None)
        body = body if cut is None else body[:cut]
        delay = state.slow.get(self.path)
        try:
            if delay is None:
                self.wfile.write(body)  # HTTP/1.0: the connection closes after
            else:
                for i in range(len(body)):  # one byte every `delay` seconds
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass


class _State:
    def __init__(self):
        self.files, self.fail, self.cut, self.requests = {}, {}, {}, []
        self.etag, self.modified, self.slow, self.if_range, self.redirect = {}, {}, {}, [], {}
        self.bad_length, self.bad_range = {}, {}
        self.no_length, self.ignore_if_range, self.partial_without_range = set(), set(), set()

    def hits(self, path):
        return [r for p, r in self.requests if p == path]


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def synthetic_jpeg(seed) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tgz(members: dict) -> bytes:
    """A gzipped tar of ``{member path: bytes}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def synthetic_gnd_bytes(tmp_path, imlist, qimlist) -> bytes:
    gnd = [{"easy": [i % len(imlist)], "hard": [], "junk": [], "bbx": [0, 0, 4, 4]} for i in range(len(qimlist))]
    path = write_revisitop_gnd(tmp_path / "src" / "gnd.pkl", imlist, qimlist, gnd)
    return path.read_bytes()


def serve_synthetic_oxford(server, tmp_path, extra=None, drop=()):
    """A synthetic 'roxford5k': 6 db + 2 query images in one flat archive, plus its gnd pkl."""
    imlist = [f"synth_{i:06d}" for i in range(6)]
    qimlist = ["synth_query_0", "synth_query_1"]
    images = {n: synthetic_jpeg(i) for i, n in enumerate(imlist + qimlist)}
    members = {f"{n}.jpg": b for n, b in images.items() if n not in drop}
    members.update(extra or {})
    server.files["/vgg/oxbuildings/oxbuild_images-v1.tgz"] = tgz(members)
    server.files["/gnd/roxford5k/gnd_roxford5k.pkl"] = synthetic_gnd_bytes(tmp_path, imlist, qimlist)
    return images


def urls(server):
    return dict(images_url=server.url + "/vgg", gnd_url=server.url + "/gnd")


def test_full_download_gives_loadable_dataset_and_is_not_repeated(server, tmp_path):
    images = serve_synthetic_oxford(server, tmp_path)
    ds = download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert ds.n_db == 6 and ds.n_queries == 2
    ds.check_images()
    assert ds.db_path(3).read_bytes() == images["synth_000003"]
    assert ds.query_path(1).read_bytes() == images["synth_query_1"]
    folder = tmp_path / "data" / "datasets" / "roxford5k"
    assert sorted(p.name for p in folder.iterdir()) == ["gnd_roxford5k.pkl", "jpg"]  # archives cleaned up
    n = len(server.requests)
    again = download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert len(server.requests) == n and again.imlist == ds.imlist  # complete: no network


def test_env_var_overrides_base_urls(server, tmp_path, monkeypatch):
    serve_synthetic_oxford(server, tmp_path)
    monkeypatch.setenv("SGLIB_VGG_URL", server.url + "/vgg")
    monkeypatch.setenv("SGLIB_REVISITOP_URL", server.url + "/gnd")
    ds = download_revisitop("roxford5k", tmp_path / "data", **FAST)
    assert ds.n_db == 6


def test_paris_archives_are_flattened(server, tmp_path):
    imlist = ["paris_defense_000001", "paris_defense_000002", "paris_louvre_000001"]
    qimlist = ["paris_louvre_000002"]
    images = {n: synthetic_jpeg(i) for i, n in enumerate(imlist + qimlist)}
    path_of = lambda n: f"paris/{n.split('_')[1]}/{n}.jpg"  # noqa: E731
    # as on the VGG server: ~vgg/data/... answers 301 to thor, where the archives are paris_1.tgz / paris_2.tgz
    server.redirect["/vgg/"] = "/thor/"
    server.files["/thor/parisbuildings/paris_1.tgz"] = tgz({path_of(n): images[n] for n in imlist[:2]})
    server.files["/thor/parisbuildings/paris_2.tgz"] = tgz({path_of(n): images[n] for n in imlist[2:] + qimlist})
    server.files["/gnd/rparis6k/gnd_rparis6k.pkl"] = synthetic_gnd_bytes(tmp_path, imlist, qimlist)
    ds = download_revisitop("rparis6k", tmp_path, **urls(server), **FAST)
    assert (sorted(p.name for p in (tmp_path / "datasets" / "rparis6k" / "jpg").iterdir()) ==
        sorted(f"{n}.jpg" for n in imlist + qimlist))
    assert ds.query_path(0).read_bytes() == images["paris_louvre_000002"]


def test_resume_from_part_file_uses_range_and_is_byte_identical(server, tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    server.files["/big.bin"] = data
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:123_456])  # no record: resumable only as a sha256 is known
    fetch(server.url + "/big.bin", dest, sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert server.hits("/big.bin") == ["bytes=123456-"]
    assert dest.read_bytes() == data and not (tmp_path / "big.bin.part").exists()
    fetch(server.url + "/big.bin", dest, **FAST)  # finished file: not requested again
    assert len(server.hits("/big.bin")) == 1


def test_connection_cut_short_is_resumed(server, tmp_path):
    data = bytes(range(256)) * 1000
    server.files["/cut.bin"], server.etag["/cut.bin"] = data, '"c1"'
    server.cut["/cut.bin"] = 100_000  # the first response stops after 100000 of 256000 bytes
    dest = fetch(server.url + "/cut.bin", tmp_path / "cut.bin", **FAST)
    assert server.hits("/cut.bin") == [None, "bytes=100000-"]
    assert dest.read_bytes() == data


def test_part_file_already_complete_is_accepted(server, tmp_path):
    server.files["/x.bin"] = b"abcdef"
    (tmp_path / "x.bin.part").write_bytes(b"abcdef")
    assert fetch(server.url + "/x.bin", tmp_path / "x.bin", **FAST).read_bytes() == b"abcdef"


def test_part_file_longer_than_remote_restarts(server, tmp_path):
    server.files["/y.bin"] = b"new content"
    (tmp_path / "y.bin.part").write_bytes(b"stale bytes from another, longer file")
    digest = hashlib.sha256(b"new content").hexdigest()  # lets the record-less .part be tried
    assert fetch(server.url + "/y.bin", tmp_path / "y.bin", sha256=digest, **FAST).read_bytes() == b"new content"
    assert server.hits("/y.bin") == ["bytes=37-", None]


def test_retry_after_503_then_success(server, tmp_path):
    server.files["/flaky.bin"] = b"payload" * 100
    server.fail["/flaky.bin"] = [503, 502]
    dest = fetch(server.url + "/flaky.bin", tmp_path / "flaky.bin", retries=3, **FAST)
    assert dest.read_bytes() == b"payload" * 100
    assert len(server.hits("/flaky.bin")) == 3


def test_bounded_retries_give_clear_error(server, tmp_path):
    server.files["/down.bin"] = b"x"
    server.fail["/down.bin"] = [503] * 10
    with pytest.raises(DownloadError, match=r"after 3 attempts.*503"):
        fetch(server.url + "/down.bin", tmp_path / "down.bin", retries=2, **FAST)
    assert len(server.hits("/down.bin")) == 3
    assert not (tmp_path / "down.bin").exists()


def test_unreachable_server_is_bounded(tmp_path):
    with pytest.raises(DownloadError, match="after 2 attempts"):
        fetch("http://127.0.0.1:9/none", tmp_path / "none", retries=1, **FAST)  # port 9: nothing listens


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url + "/missing.bin", tmp_path / "missing.bin", retries=5, **FAST)
    assert len(server.hits("/missing.bin")) == 1


def test_sha256_checked(server, tmp_path):
    server.files["/s.bin"] = b"hello"
    good = hashlib.sha256(b"hello").hexdigest()
    assert fetch(server.url + "/s.bin", tmp_path / "ok.bin", sha256=good, **FAST).read_bytes() == b"hello"
    with pytest.raises(DownloadError, match="sha256"):
        fetch(server.url + "/s.bin", tmp_path / "bad.bin", sha256="0" * 64, **FAST)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()


def assert_not_claiming_complete(root):
    folder = root / "datasets" / "roxford5k"
    assert not (folder / "gnd_roxford5k.pkl").exists()
    assert not (folder / "jpg").exists() and not (folder / "jpg.partial").exists()
    assert not (folder / ".download" / "oxbuild_images-v1.tgz").exists()  # bad archive removed
    with pytest.raises(DatasetError):
        load_revisitop(root, "roxford5k")


def test_truncated_archive_is_rejected(server, tmp_path):
    serve_synthetic_oxford(server, tmp_path)
    path = "/vgg/oxbuildings/oxbuild_images-v1.tgz"
    server.files[path] = server.files[path][: len(server.files[path]) * 2 // 3]
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")


def test_archive_missing_images_is_rejected(server, tmp_path):
    serve_synthetic_oxford(server, tmp_path, drop={"synth_000004", "synth_query_0"})
    with pytest.raises(ArchiveError, match=r"2 of 8 images missing: synth_000004, synth_query_0"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")
    serve_synthetic_oxford(server, tmp_path)  # the server is fixed: a rerun completes
    assert download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST).n_db == 6


@pytest.mark.parametrize("bad_member", ["../escaped.jpg", "/tmp/sglib_absolute.jpg", "a/../../escaped.jpg"])
def test_unsafe_member_paths_are_rejected(server, tmp_path, bad_member):
    serve_synthetic_oxford(server, tmp_path, extra={bad_member: b"evil"})
    with pytest.raises(ArchiveError, match="unsafe member path"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")
    assert not list(tmp_path.rglob("escaped.jpg"))


def test_corrupt_gnd_is_rejected(server, tmp_path):
    serve_synthetic_oxford(server, tmp_path)
    server.files["/gnd/roxford5k/gnd_roxford5k.pkl"] = b"<html>not found</html>"
    with pytest.raises(DownloadError, match="ground truth is not valid"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert not (tmp_path / "data" / "datasets" / "roxford5k" / "gnd_roxford5k.pkl").exists()


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        download_revisitop("holidays", tmp_path)


def serve_synthetic_revisitop1m(server):
    """100 tiny synthetic archives, one image each, and the list naming them."""
    entries = []
    for i in range(1, REVISITOP1M_PARTS + 1):
        entry = f"{i % 7:02x}/synth_{i:04d}.jpg"
        entries.append(entry)
        server.files[f"/r1m/jpg/revisitop1m.{i}.tar.gz"] = tgz({entry: synthetic_jpeg(i)})
    server.files["/r1m/revisitop1m.txt"] = ("\n".join(entries) + "\n").encode()
    return entries


def test_revisitop1m_download_resumes_per_part(server, tmp_path):
    entries = serve_synthetic_revisitop1m(server)
    root = tmp_path / "data"
    jpg = download_revisitop1m(root, parts=[1, 2], base_url=server.url + "/r1m", **FAST)
    assert (jpg / entries[0]).read_bytes() == synthetic_jpeg(1)
    assert not (jpg / entries[2]).exists()
    server.fail["/r1m/jpg/revisitop1m.50.tar.gz"] = [404]
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_revisitop1m(root, base_url=server.url + "/r1m", **FAST)
    assert (jpg / entries[48]).exists() and not (jpg / entries[49]).exists()
    server.requests.clear()
    jpg = download_revisitop1m(root, base_url=server.url + "/r1m", **FAST)
    fetched = {p for p, _ in server.requests}
    assert "/r1m/jpg/revisitop1m.1.tar.gz" not in fetched and "/r1m/jpg/revisitop1m.49.tar.gz" not in fetched
    assert len(fetched) == 51  # parts 50..100; the list was already there
    assert load_revisitop1m_list(root) == entries
    assert all((jpg / e).read_bytes() == synthetic_jpeg(i + 1) for i, e in enumerate(entries))
    assert not list((root / "datasets" / "revisitop1m" / ".download").glob("*.tar.gz"))


def test_revisitop1m_bad_part_number(tmp_path):
    with pytest.raises(ValueError, match="1..100"):
        download_revisitop1m(tmp_path, parts=[0, 5])


# ------------------------------------------------------------------ hostile / inconsistent servers

def test_changed_remote_file_is_not_spliced_onto_a_stale_part(server, tmp_path):
    old, new = b"A" * 50_000, b"B" * 60_000
    server.files["/v.bin"], server.etag["/v.bin"] = old, '"v1"'
    server.cut["/v.bin"] = 20_000
    with pytest.raises(DownloadError, match="after 1 attempts"):
        fetch(server.url + "/v.bin", tmp_path / "v.bin", retries=0, **FAST)
    assert (tmp_path / "v.bin.part").stat().st_size == 20_000
    server.files["/v.bin"], server.etag["/v.bin"] = new, '"v2"'   # the file changes on the server
    assert fetch(server.url + "/v.bin", tmp_path / "v.bin", **FAST).read_bytes() == new
    assert server.hits("/v.bin")[-1] == "bytes=20000-"
    assert [h for p, h in server.if_range if p == "/v.bin"] == [None, '"v1"']
    assert not (tmp_path / "v.bin.part").exists() and not (tmp_path / "v.bin.part.json").exists()


def test_server_ignoring_if_range_is_caught_by_the_validator(server, tmp_path):
    stamp = "Mon, 01 Jan 2024 00:00:00 GMT"
    server.files["/w.bin"], server.modified["/w.bin"] = b"old" * 10_000, stamp   # no ETag: Last-Modified
    server.cut["/w.bin"] = 1_000
    with pytest.raises(DownloadError):
        fetch(server.url + "/w.bin", tmp_path / "w.bin", retries=0, **FAST)
    server.files["/w.bin"], server.modified["/w.bin"] = b"new" * 10_000, "Tue, 02 Jan 2024 00:00:00 GMT"
    server.ignore_if_range.add("/w.bin")              # answers 206 from the new file anyway
    assert fetch(server.url + "/w.bin", tmp_path / "w.bin", **FAST).read_bytes() == b"new" * 10_000
    assert server.hits("/w.bin") == [None, "bytes=1000-", None]
    assert [h for p, h in server.if_range if p == "/w.bin"] == [None, stamp, None]


def test_206_to_a_plain_get_is_an_error(server, tmp_path):
    server.files["/p.bin"] = bytes(range(100))
    server.partial_without_range.add("/p.bin")
    with pytest.raises(DownloadError, match=r"206 Partial Content.*without Range"):
        fetch(server.url + "/p.bin", tmp_path / "p.bin", **FAST)
    assert not (tmp_path / "p.bin").exists()


def test_short_206_without_content_length_is_resumed_by_the_content_range_total(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["/n.bin"] = data
    server.no_length.add("/n.bin")
    (tmp_path / "n.bin.part").write_bytes(data[:1000])
    server.cut["/n.bin"] = 5000                       # 206 says bytes 1000-102399/102400, sends 5000
    digest = hashlib.sha256(data).hexdigest()
    assert fetch(server.url + "/n.bin", tmp_path / "n.bin", sha256=digest, **FAST).read_bytes() == data
    assert server.hits("/n.bin") == ["bytes=1000-", "bytes=6000-"]


def test_known_sha256_is_used_and_checked(server, tmp_path, monkeypatch):
    serve_synthetic_oxford(server, tmp_path)
    monkeypatch.setattr(download, "KNOWN_SHA256", {"oxbuild_images-v1.tgz": "0" * 64})
    with pytest.raises(DownloadError, match="sha256 .* does not match the expected 0000"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    good = hashlib.sha256(server.files["/vgg/oxbuildings/oxbuild_images-v1.tgz"]).hexdigest()
    ds = download_revisitop("roxford5k", tmp_path / "data", sha256={"oxbuild_images-v1.tgz": good},
                            **urls(server), **FAST)  # an explicit digest takes precedence
    assert ds.n_db == 6
    with pytest.raises(ValueError, match="does not download"):
        download_revisitop("rparis6k", tmp_path / "data", sha256={"oxbuild_images-v1.tgz": good})
    with pytest.raises(ValueError, match="64 hexadecimal"):
        fetch(server.url + "/x", tmp_path / "x", sha256="abc", **FAST)


def test_slow_server_hits_the_minimum_rate(server, tmp_path):
    server.files["/slow.bin"] = b"z" * 200
    server.slow["/slow.bin"] = 0.02                   # about 50 B/s
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"transfer rate \d+ B/s .* below the minimum of 1000 B/s"):
        fetch(server.url + "/slow.bin", tmp_path / "slow.bin", retries=1, min_rate=1000, rate_window=0.3,
              **FAST)
    assert time.monotonic() - t0 < 3
    assert not (tmp_path / "slow.bin").exists()


def test_deadline_bounds_the_whole_download(server, tmp_path):
    server.files["/late.bin"] = b"z" * 200
    server.slow["/late.bin"] = 0.02                   # the whole body would take about 4 s
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"deadline of 0.5 s"):
        fetch(server.url + "/late.bin", tmp_path / "late.bin", deadline=0.5, min_rate=None, **FAST)
    assert time.monotonic() - t0 < 2


def test_cli_sha256_flag(server, tmp_path, monkeypatch, capsys):
    from sglib.cli import build_parser, main
    with pytest.raises(SystemExit):
        build_parser().parse_args(["download", "roxford5k", "--data-root", str(tmp_path), "--sha256", "abc"])
    assert "64 hexadecimal" in capsys.readouterr().err
    serve_synthetic_oxford(server, tmp_path)
    monkeypatch.setenv("SGLIB_VGG_URL", server.url + "/vgg")
    monkeypatch.setenv("SGLIB_REVISITOP_URL", server.url + "/gnd")
    root = str(tmp_path / "data")
    assert main(["download", "roxford5k", "--data-root", root, "--sha256", "paris_1.tgz=" + "0" * 64]) == 2
    assert "does not download" in capsys.readouterr().err and not server.requests
    assert main(["download", "roxford5k", "--data-root", root, "--sha256", "oxbuild_images-v1.tgz=" + "A" * 64]) == 2
    assert "does not match the expected " + "a" * 64 in capsys.readouterr().err
    good = hashlib.sha256(server.files["/vgg/oxbuildings/oxbuild_images-v1.tgz"]).hexdigest()
    assert main(["download", "roxford5k", "--data-root", root, "--sha256", f"oxbuild_images-v1.tgz={good}"]) == 0


# ------------------------------------------------------------------ resuming needs a validator or a sha256

def test_no_validator_means_no_resume_so_a_same_size_change_is_not_spliced(server, tmp_path):
    old, new = b"A" * 50_000, b"B" * 50_000           # same size, and the server sends no ETag / Last-Modified
    server.files["/nv.bin"] = old
    server.cut["/nv.bin"] = 20_000
    with pytest.raises(DownloadError, match="after 1 attempts"):
        fetch(server.url + "/nv.bin", tmp_path / "nv.bin", retries=0, **FAST)
    assert (tmp_path / "nv.bin.part").stat().st_size == 20_000
    server.files["/nv.bin"] = new                     # changes under the resume
    assert fetch(server.url + "/nv.bin", tmp_path / "nv.bin", **FAST).read_bytes() == new
    assert server.hits("/nv.bin") == [None, None]     # started over from byte 0, no Range
    assert not (tmp_path / "nv.bin.part").exists() and not (tmp_path / "nv.bin.part.json").exists()


def test_record_less_part_without_sha256_starts_over(server, tmp_path):
    data = b"0123456789" * 1000
    server.files["/r.bin"] = data
    (tmp_path / "r.bin.part").write_bytes(b"x" * 4000)   # from an older sglib, or another version
    assert fetch(server.url + "/r.bin", tmp_path / "r.bin", **FAST).read_bytes() == data
    assert server.hits("/r.bin") == [None]


def test_blind_resume_with_sha256_that_splices_is_fetched_again_whole(server, tmp_path):
    data = bytes(range(256)) * 200
    server.files["/b.bin"] = data                      # no validator from the server
    (tmp_path / "b.bin.part").write_bytes(b"\xff" * 20_000)  # another version's first 20000 bytes
    digest = hashlib.sha256(data).hexdigest()
    assert fetch(server.url + "/b.bin", tmp_path / "b.bin", sha256=digest, **FAST).read_bytes() == data
    assert server.hits("/b.bin") == ["bytes=20000-", None]  # the spliced file failed the digest: refetched
    (tmp_path / "b2.bin.part").write_bytes(b"\xff" * 20_000)
    with pytest.raises(DownloadError, match=r"after 1 attempts.*resumed without a validator.*start over"):
        fetch(server.url + "/b.bin", tmp_path / "b2.bin", sha256=digest, retries=0, **FAST)
    assert not (tmp_path / "b2.bin.part").exists()


# ------------------------------------------------------------------ argument checks

@pytest.mark.parametrize("kwargs, match", [
    (dict(timeout=0), r"^timeout: expected a finite number in \(0, 2.592e\+06\], got 0$"),
    (dict(timeout=-1.0), r"^timeout: .* got -1.0$"),
    (dict(timeout=float("nan")), r"^timeout: "),
    (dict(timeout=float("inf")), r"^timeout: "),
    (dict(timeout="60"), r"^timeout: "),
    (dict(retries=-1), r"^retries: expected an integer in \[0, 100\], got -1$"),
    (dict(retries=10 ** 400), r"^retries: expected an integer in \[0, 100\]"),   # no endless retrying
    (dict(timeout=1e300), r"^timeout: expected a finite number in"),            # beyond a timestamp's range
    (dict(retries=1.5), r"^retries: "),
    (dict(retries=True), r"^retries: "),
    (dict(backoff=-0.5), r"^backoff: expected a finite number in \[0, 2.592e\+06\], got -0.5$"),
    (dict(backoff=float("nan")), r"^backoff: "),
    (dict(deadline=0), r"^deadline: expected a finite number > 0 and <= 2.592e\+06 \(or None\), got 0$"),
    (dict(deadline=float("inf")), r"^deadline: "),
    (dict(min_rate=-1), r"^min_rate: expected a finite number >= 0 \(or None\), got -1$"),
    (dict(min_rate=float("nan")), r"^min_rate: "),
    (dict(rate_window=0), r"^rate_window: expected a finite number in \(0, 2.592e\+06\], got 0$"),
])
def test_fetch_refuses_bad_numbers_before_any_request(server, tmp_path, kwargs, match):
    server.files["/a.bin"] = b"a"
    with pytest.raises(ValueError, match=match):
        fetch(server.url + "/a.bin", tmp_path / "a.bin", **{**FAST, **kwargs})
    assert not server.requests and not list(tmp_path.iterdir())


def test_dataset_downloads_refuse_bad_numbers_up_front(server, tmp_path):
    serve_synthetic_oxford(server, tmp_path)
    with pytest.raises(ValueError, match=r"^retries: "):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **{**FAST, "retries": -1})
    with pytest.raises(ValueError, match=r"^timeout: "):
        download_revisitop1m(tmp_path / "data", base_url=server.url + "/r1m", **{**FAST, "timeout": 0})
    assert not server.requests


# ------------------------------------------------------------------ archive members: only what is needed, bounded

def test_members_the_ground_truth_does_not_list_are_not_extracted(server, tmp_path):
    serve_synthetic_oxford(server, tmp_path, extra={"filler.bin": b"\0" * 300_000, "synth_unlisted.jpg": b"x",
                                                    "notes/readme.txt": b"hello"})
    ds = download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert sorted(p.name for p in (ds.root / "jpg").rglob("*")) == sorted(f"{n}.jpg" for n in ds.imlist + ds.qimlist)
    assert not list((tmp_path / "data").rglob("filler.bin"))


def test_an_oversized_needed_member_is_refused_by_name(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 10_000)
    serve_synthetic_oxford(server, tmp_path, extra={"synth_000002.jpg": b"\0" * 10_001,
                                                    "big_unlisted.bin": b"\0" * 50_000})  # skipped, not refused
    with pytest.raises(ArchiveError, match=r"member synth_000002.jpg is 10001 bytes, more than the 10000"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")


def test_a_decompression_bomb_is_refused_by_the_total(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_MEMBER_BYTES", 40_000)  # every member is under it, their sum is not
    imlist = [f"synth_{i:06d}" for i in range(6)]
    serve_synthetic_oxford(server, tmp_path, extra={f"{n}.jpg": b"\0" * 39_000 for n in imlist})
    with pytest.raises(ArchiveError, match=r"member synth_\d+\.jpg brings the extracted size to \d+ bytes"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")


def test_an_archive_with_too_many_members_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_MEMBERS", 8)
    serve_synthetic_oxford(server, tmp_path, extra={"x.txt": b"x"})  # 9 members
    with pytest.raises(ArchiveError, match=r"more than 8 members"):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert_not_claiming_complete(tmp_path / "data")


def test_revisitop1m_extracts_only_listed_images(server, tmp_path):
    entries = serve_synthetic_revisitop1m(server)
    server.files["/r1m/jpg/revisitop1m.1.tar.gz"] = tgz({entries[0]: synthetic_jpeg(1), "00/unlisted.jpg": b"x"})
    server.files["/r1m/jpg/revisitop1m.2.tar.gz"] = tgz({"00/unlisted_too.jpg": b"x"})
    root = tmp_path / "data"
    with pytest.raises(ArchiveError, match=r"revisitop1m.2.tar.gz holds none of the images revisitop1m.txt lists"):
        download_revisitop1m(root, parts=[1, 2], base_url=server.url + "/r1m", **FAST)
    jpg = root / "datasets" / "revisitop1m" / "jpg"
    assert [p.relative_to(jpg).as_posix() for p in jpg.rglob("*.jpg")] == [entries[0]]


# ------------------------------------------------------------------ the VGG server's names, redirect and sizes

def test_dataset_files_are_the_names_on_the_vgg_server():
    assert download.dataset_files("rparis6k") == ("gnd_rparis6k.pkl", "paris_1.tgz", "paris_2.tgz")
    assert PUBLISHED_SIZES == {"oxbuild_images-v1.tgz": 1_938_238_004, "paris_1.tgz": 1_269_538_001}


def test_resume_through_a_301_keeps_range_and_if_range(server, tmp_path):
    data = bytes(range(256)) * 300
    server.redirect["/old/"] = "/new/"
    server.files["/new/f.bin"], server.etag["/new/f.bin"] = data, '"f1"'
    server.cut["/new/f.bin"] = 10_000
    assert fetch(server.url + "/old/f.bin", tmp_path / "f.bin", **FAST).read_bytes() == data
    assert server.hits("/new/f.bin") == [None, "bytes=10000-"]
    assert [h for p, h in server.if_range if p == "/new/f.bin"] == [None, '"f1"']


def test_known_size_is_checked_against_content_length(server, tmp_path, monkeypatch):
    serve_synthetic_oxford(server, tmp_path)
    real = len(server.files["/vgg/oxbuildings/oxbuild_images-v1.tgz"])
    monkeypatch.setattr(download, "KNOWN_SIZES", {"oxbuild_images-v1.tgz": real + 1})
    with pytest.raises(DownloadError, match=rf"oxbuild_images-v1.tgz: expected {real + 1} bytes, got {real} "):
        download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST)
    assert len(server.hits("/vgg/oxbuildings/oxbuild_images-v1.tgz")) == 1  # not retried
    assert not list((tmp_path / "data").rglob("oxbuild_images-v1.tgz*"))
    monkeypatch.setattr(download, "KNOWN_SIZES", {"oxbuild_images-v1.tgz": real})
    assert download_revisitop("roxford5k", tmp_path / "data", **urls(server), **FAST).n_db == 6


def test_known_size_catches_a_body_without_content_length(server, tmp_path):
    data = b"q" * 30_000
    server.files["/k.bin"], server.etag["/k.bin"] = data, '"k1"'
    server.no_length.add("/k.bin")
    server.cut["/k.bin"] = 12_000                     # ends early: only the known size tells
    assert fetch(server.url + "/k.bin", tmp_path / "k.bin", size=30_000, **FAST).read_bytes() == data
    assert server.hits("/k.bin") == [None, "bytes=12000-"]
    with pytest.raises(DownloadError, match=r"k2.bin: expected 20000 bytes, got more"):
        fetch(server.url + "/k.bin", tmp_path / "k2.bin", size=20_000, **FAST)
    assert not list(tmp_path.glob("k2.bin*"))
    with pytest.raises(DownloadError, match=r"k3.bin: expected 40000 bytes, got 30000 "):
        fetch(server.url + "/k.bin", tmp_path / "k3.bin", size=40_000, retries=0, **FAST)
    with pytest.raises(ValueError, match=r"^size: expected an integer >= 0"):
        fetch(server.url + "/k.bin", tmp_path / "k4.bin", size=-1, **FAST)


def test_known_size_is_checked_against_content_range_on_resume(server, tmp_path):
    data = b"r" * 30_000
    server.files["/c.bin"] = data
    (tmp_path / "c.bin.part").write_bytes(data[:1000])
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(DownloadError, match=r"c.bin: expected 31000 bytes, got 30000 "):
        fetch(server.url + "/c.bin", tmp_path / "c.bin", sha256=digest, size=31_000, **FAST)
    assert server.hits("/c.bin") == ["bytes=1000-"] and not list(tmp_path.glob("c.bin*"))


# ------------------------------------------------------------------ hostile records, servers and arguments

def cut_once(server, path, data, at, tmp_path, **validator):
    """Serve ``data`` at ``path`` (``etag=`` / ``modified=`` set its validator), let a fetch stop after
    ``at`` bytes; returns the dest whose .part holds them."""
    server.files[path] = data
    for kind, value in validator.items():
        getattr(server, kind)[path] = value
    server.cut[path] = at
    dest = tmp_path / "same.bin"
    with pytest.raises(DownloadError):
        fetch(server.url + path, dest, retries=0, **FAST)
    assert (tmp_path / "same.bin.part").stat().st_size == at
    return dest


@pytest.mark.parametrize("record", ["{not json", "[1, 2]", '{"validator": "abc", "total": 5}',
                                    '{"validator": {"etag": "\\"v1\\"\\r\\nX-Evil: 1"}, "total": 50000}',
                                    '{"validator": {"etag": 7}, "total": 50000}',
                                    '{"validator": {"etag": "\\"v1\\""}, "total": "50000"}'])
def test_a_corrupt_or_forged_record_restarts_the_download(server, tmp_path, record):
    dest = cut_once(server, "/j.bin", b"J" * 50_000, 20_000, tmp_path, etag='"v1"')
    (tmp_path / "same.bin.part.json").write_text(record)
    assert fetch(server.url + "/j.bin", dest, **FAST).read_bytes() == b"J" * 50_000
    assert server.hits("/j.bin") == [None, None]


def test_a_part_begun_from_another_url_is_not_resumed(server, tmp_path):
    stamp = "Mon, 01 Jan 2024 00:00:00 GMT"            # two files uploaded in the same second, same size
    dest = cut_once(server, "/mirror1/a.bin", b"A" * 50_000, 20_000, tmp_path, modified=stamp)
    server.files["/mirror2/b.bin"], server.modified["/mirror2/b.bin"] = b"B" * 50_000, stamp
    assert fetch(server.url + "/mirror2/b.bin", dest, **FAST).read_bytes() == b"B" * 50_000
    assert server.hits("/mirror2/b.bin") == [None]


def test_a_validator_on_the_first_answer_and_none_on_the_resume_restarts(server, tmp_path):
    dest = cut_once(server, "/d.bin", b"1" * 50_000, 20_000, tmp_path, etag='"d1"')
    del server.etag["/d.bin"]                          # the resumed answer carries no ETag ...
    server.files["/d.bin"] = b"2" * 50_000             # ... and the file changed, same size
    server.ignore_if_range.add("/d.bin")              # 206 regardless of If-Range
    assert fetch(server.url + "/d.bin", dest, **FAST).read_bytes() == b"2" * 50_000
    assert server.hits("/d.bin") == [None, "bytes=20000-", None]


def test_a_weak_etag_is_no_validator(server, tmp_path):
    dest = cut_once(server, "/e.bin", b"e" * 50_000, 20_000, tmp_path, etag='W/"e1"')
    assert fetch(server.url + "/e.bin", dest, **FAST).read_bytes() == b"e" * 50_000
    assert server.hits("/e.bin") == [None, None]


@pytest.mark.parametrize("length", ["abc", "-5", "1e3"])
def test_a_malformed_content_length_is_refused_clearly(server, tmp_path, length):
    server.files["/l.bin"], server.bad_length["/l.bin"] = b"l" * 100, length
    with pytest.raises(DownloadError, match=rf"invalid Content-Length {length!r}"):
        fetch(server.url + "/l.bin", tmp_path / "l.bin", **FAST)
    assert len(server.hits("/l.bin")) == 1


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "127.0.0.1/x", "http://", None,
                                 b"http://x", "http://x/a b", "http://x/a\r\nX-Evil: 1"])
def test_fetch_takes_only_http_urls(tmp_path, url):
    with pytest.raises(ValueError, match=r"^url: expected an http:// or https:// URL"):
        fetch(url, tmp_path / "x", **FAST)
    assert not list(tmp_path.iterdir())


def test_fetch_refuses_a_directory_as_dest(server, tmp_path):
    server.files["/z.bin"] = b"z"
    with pytest.raises(ValueError, match=r"^dest: .* is a directory"):
        fetch(server.url + "/z.bin", tmp_path, **FAST)
    assert not server.requests


def test_dataset_download_arguments_are_checked_up_front(server, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^images_url: expected an http:// or https:// URL"):
        download_revisitop("roxford5k", tmp_path, images_url="ftp://mirror/vgg", gnd_url=server.url + "/gnd", **FAST)
    monkeypatch.setenv("SGLIB_REVISITOP_URL", "cmp.felk.cvut.cz/revisitop")  # no scheme
    with pytest.raises(ValueError, match=r"^SGLIB_REVISITOP_URL: expected an http:// or https:// URL"):
        download_revisitop("roxford5k", tmp_path, images_url=server.url + "/vgg", **FAST)
    with pytest.raises(ValueError, match=r"^base_url: "):
        download_revisitop1m(tmp_path, base_url="file:///r1m", **FAST)
    with pytest.raises(ValueError, match=r"unknown dataset \['roxford5k'\]"):
        download_revisitop(["roxford5k"], tmp_path, **urls(server), **FAST)
    with pytest.raises(ValueError, match=r"^sha256: expected a dict"):
        download_revisitop("roxford5k", tmp_path, sha256="0" * 64, **urls(server), **FAST)
    assert not server.requests


@pytest.mark.parametrize("parts, match", [([2.5], r"parts\[0\]: expected an integer"), (["3"], r"parts\[0\]"),
                                          ([1, True], r"parts\[1\]"), (5, r"^parts: expected an iterable"),
                                          ([0, 5], r"1..100")])
def test_revisitop1m_parts_are_checked(tmp_path, parts, match):
    with pytest.raises(ValueError, match=match):
        download_revisitop1m(tmp_path, parts=parts, base_url="http://127.0.0.1:9", **FAST)
    assert not list(tmp_path.iterdir())


def test_a_resume_answer_adding_an_etag_to_the_recorded_last_modified_is_still_resumed(server, tmp_path):
    stamp = "Mon, 01 Jan 2024 00:00:00 GMT"
    dest = cut_once(server, "/m.bin", b"m" * 50_000, 20_000, tmp_path, modified=stamp)
    server.etag["/m.bin"] = '"m1"'                     # now sent too; Last-Modified unchanged
    assert fetch(server.url + "/m.bin", dest, **FAST).read_bytes() == b"m" * 50_000
    assert server.hits("/m.bin") == [None, "bytes=20000-"]


def test_revisitop1m_list_entries_resolve_as_the_loader_resolves_them(tmp_path):
    from sglib.data.revisitop import revisitop1m_image_paths
    entries = ["ab/x1", "jpg/ab/x2.jpg", "ab/x3.PNG", "jpg/x4", "ab/x5.jpeg", "ab/x6.tif"]
    (tmp_path / "revisitop1m.txt").write_text("\n".join(entries) + "\n")
    paths = revisitop1m_image_paths(tmp_path)
    assert [download._listed_path(e) for e in entries] == [p.relative_to(tmp_path / "jpg").as_posix() for p in paths]


@pytest.mark.parametrize("bad", [None, "", 3, b"data"])
def test_paths_must_be_paths(server, tmp_path, bad):
    with pytest.raises(ValueError, match=r"^dest: expected a file path"):
        fetch(server.url + "/x.bin", bad, **FAST)
    with pytest.raises(ValueError, match=r"^data_root: expected a folder path"):
        download_revisitop("roxford5k", bad, **urls(server), **FAST)
    with pytest.raises(ValueError, match=r"^data_root: expected a folder path"):
        download_revisitop1m(bad, base_url=server.url + "/r1m", **FAST)
    assert not server.requests


@pytest.mark.parametrize("content_range", ["bytes 20000-50999/50000", "bytes 20000-19999/50000"])
def test_a_content_range_that_contradicts_itself_is_refused(server, tmp_path, content_range):
    dest = cut_once(server, "/q.bin", b"q" * 50_000, 20_000, tmp_path, etag='"q1"')
    server.bad_range["/q.bin"] = content_range
    server.no_length.add("/q.bin")
    with pytest.raises(DownloadError, match=r"inconsistent Content-Range"):
        fetch(server.url + "/q.bin", dest, **FAST)
    assert not dest.exists()


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9/x.bin", "file:///etc/passwd"])
def test_a_redirect_away_from_http_is_refused(server, tmp_path, target):
    server.redirect["/away/"] = target
    with pytest.raises(DownloadError, match=r"HTTP 301 .*(redirect to a non-http\(s\) URL|Redirection to url .* is "
                                            r"not allowed)"):  # the second: urllib's own refusal of file://
        fetch(server.url + "/away/x.bin", tmp_path / "x.bin", **FAST)
    assert len(server.hits("/away/x.bin")) == 1 and not list(tmp_path.iterdir())
