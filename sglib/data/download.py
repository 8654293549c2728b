"""Download the revisited Oxford/Paris datasets and the revisitop1m distractors (needs internet).

Resumable and checked: each file streams into ``FILE.part``. After an interruption it is resumed
with an HTTP Range request guarded by ``If-Range`` with the ETag / Last-Modified recorded, with the
URL, in ``FILE.part.json``, so a file changed on the server is fetched afresh, never spliced. A
.part whose record is corrupt or another URL's is discarded. A server that sends neither validator
(or a .part without a record) gives nothing to resume against: the file is fetched again from byte
0, unless its sha256 is known, which catches a splice at the end. Connection errors, 5xx answers
and transfers slower than ``min_rate`` are retried a bounded number of times with exponential
backoff, an optional ``deadline`` bounds the whole call, the byte count must match Content-Length
(and a sha256 when given or listed in :data:`KNOWN_SHA256`), and only then is the file renamed into
place, so a finished file is never fetched again. A size known in advance (:data:`KNOWN_SIZES`, a
weak check where no sha256 is known) must match Content-Length, the total of Content-Range and the
final size. A body sent without Content-Length that ends early can only be caught by a known size
or a sha256. Numbers, URLs (http and https only; redirects are followed to such URLs only) and
paths given are checked before any request.

Archives are read completely before anything is moved into the dataset; member paths that are
absolute or contain ``..`` (or links/devices), more than :data:`MAX_MEMBERS` members, or a needed
image over :data:`MAX_MEMBER_BYTES` (or needed images adding up to more than twice the archive's
own size, plus that bound: JPEGs do not compress, so only a decompression bomb gets there) make the
archive rejected. Only the images the ground truth (or ``revisitop1m.txt``) lists are extracted.

A dataset is complete once ``gnd_NAME.pkl`` sits in its folder: it is moved there last, after
every image the ground truth names was found in the archives.

Sources (overridable per call or with environment variables, e.g. for a mirror or for tests):

- ``SGLIB_VGG_URL`` (default :data:`VGG_URL`, which answers with a 301 to
  ``thor.robots.ox.ac.uk``, followed): ``oxbuildings/oxbuild_images-v1.tgz``,
  ``parisbuildings/paris_1.tgz``, ``parisbuildings/paris_2.tgz``.
- ``SGLIB_REVISITOP_URL`` (default :data:`REVISITOP_URL`): ``NAME/gnd_NAME.pkl``.
- ``SGLIB_REVISITOP1M_URL`` (default :data:`REVISITOP1M_URL`): ``jpg/revisitop1m.{i}.tar.gz``
  for i in 1..100 and ``revisitop1m.txt``.

Example:
    >>> ds = download_revisitop("roxford5k", "data")       # doctest: +SKIP
    >>> ds                                                   # doctest: +SKIP
    RevisitopDataset(name='roxford5k', root='data/datasets/roxford5k', db_images=4993, queries=70)
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .._checks import check_int, check_real
from .revisitop import (_KNOWN_EXTS, IMAGE_DIR, IMAGE_EXT, REVISITOP1M, DatasetError, RevisitopDataset,
                        load_revisitop, load_revisitop1m_list, missing_files_message, read_revisitop_gnd,
                        revisitop1m_image_paths)

VGG_URL = "https://www.robots.ox.ac.uk/~vgg/data"
REVISITOP_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
REVISITOP1M_URL = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
REVISITOP1M_PARTS = 100

# image archives per dataset, relative to the VGG base URL. VGG_URL/... answers with a 301 to
# thor.robots.ox.ac.uk/..., where the Paris archives are paris_1.tgz / paris_2.tgz (no "-v1").
ARCHIVES = {
    "roxford5k": ("oxbuildings/oxbuild_images-v1.tgz",),
    "rparis6k": ("parisbuildings/paris_1.tgz", "parisbuildings/paris_2.tgz"),
}

# sha256 of the published files, by file name (as listed by :func:`dataset_files`). Deliberately
# empty: the digests could not be computed where this code was written (no internet access). An
# entry is added once a user with access has downloaded the file and verified it; from then on
# every download of that file is checked against it (a ``sha256=`` argument takes precedence).
KNOWN_SHA256: dict[str, str] = {}

# size in bytes of the published files, by file name, as the VGG server announces them. A weak
# check (a same-size change passes), but it catches an error page or a truncated mirror where no
# sha256 is known; every download of a listed file must match it.
KNOWN_SIZES: dict[str, int] = {
    "oxbuild_images-v1.tgz": 1_938_238_004,
    "paris_1.tgz": 1_269_538_001,
}

# Bounds on what an archive may put on disk (see _extract). The largest image of these datasets
# is a few MB; the revisitop1m archives hold about 10,000 members each.
MAX_MEMBER_BYTES = 64 << 20
MAX_MEMBERS = 200_000

_CHUNK = 1 << 20
_DOWNLOADS = ".download"  # per-dataset folder for archives and .part files


class DownloadError(OSError):
    """A file could not be fetched (HTTP error, retries exhausted, wrong size or checksum)."""


class ArchiveError(DownloadError):
    """An archive is truncated, corrupt, unsafe, or lacks images the dataset needs."""


def _check_url(value, name: str) -> str:
    """``value`` if it is an ``http://`` or ``https://`` URL with a host and no space or control
    character, else ValueError naming ``name``."""
    if not (isinstance(value, str) and re.fullmatch(r"https?://[^/?#\x00-\x20\x7f]+[^\x00-\x20\x7f]*", value, re.I)):
        raise ValueError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return value


def _check_path(value, name: str, what: str) -> Path:
    """``value`` as a Path if it is a non-empty str or os.PathLike, else ValueError naming ``name``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a {what} path (str or pathlib.Path), got {value!r}")
    return Path(value)


def _base_url(given: str | None, env: str, default: str, name: str) -> str:
    """The base URL ``given`` (argument ``name``), else the environment variable ``env``, else ``default``,
    without a trailing slash; ValueError naming the argument or the variable if it is not an http(s) URL."""
    if given:
        return _check_url(given, name).rstrip("/")
    if os.environ.get(env):
        return _check_url(os.environ[env], env).rstrip("/")
    return default


def dataset_files(name: str) -> tuple:
    """The names of the files a download of ``name`` fetches (the keys of a ``sha256`` dict).

    Example:
        >>> dataset_files("roxford5k")
        ('gnd_roxford5k.pkl', 'oxbuild_images-v1.tgz')
    """
    if name == REVISITOP1M:
        return (f"{REVISITOP1M}.txt",) + tuple(f"{REVISITOP1M}.{i}.tar.gz" for i in range(1, REVISITOP1M_PARTS + 1))
    if not isinstance(name, str) or name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {sorted(ARCHIVES) + [REVISITOP1M]}")
    return (f"gnd_{name}.pkl",) + tuple(PurePosixPath(rel).name for rel in ARCHIVES[name])


def _expected_sha256(name: str, given: dict | None) -> dict:
    """:data:`KNOWN_SHA256` entries for ``name``'s files, overridden by ``given``; both checked."""
    files = dataset_files(name)
    if given is not None and not isinstance(given, dict):
        raise ValueError(f"sha256: expected a dict {{file name: hex digest}}, got {type(given).__name__}")
    given = dict(given or {})
    unknown = sorted(set(given) - set(files))
    if unknown:
        shown = files if len(files) <= 4 else files[:3] + ("...",)
        raise ValueError(f"sha256 given for {unknown}, which {name} does not download; its files: {', '.join(shown)}")
    out = {f: KNOWN_SHA256[f] for f in files if f in KNOWN_SHA256}
    out.update(given)
    return {f: _check_sha256(v, f"sha256 of {f}") for f, v in out.items()}


# ---------------------------------------------------------------------------------------------
# one file


# upper bounds that keep waits and clock arithmetic in range (a timeout of 1e300 s overflows a timestamp)
MAX_RETRIES = 100
MAX_SECONDS = 30 * 24 * 3600.0


def _optional_real(value, name: str, open_lo: bool, hi: float | None = None):
    """None, or ``value`` as a finite float > 0 (``open_lo``) or >= 0, at most ``hi``; ValueError naming ``name``."""
    if value is None:
        return None
    try:
        return check_real(value, name, lo=0, open_lo=open_lo, hi=hi)
    except ValueError:
        upto = f" and <= {hi:g}" if hi is not None else ""
        raise ValueError(f"{name}: expected a finite number {'>' if open_lo else '>='} 0{upto} (or None), "
                         f"got {value!r}") from None


def _check_policy(retries, backoff, timeout, deadline, min_rate, rate_window=30.0) -> tuple:
    """The retry / time policy of :func:`fetch`, checked: the six arguments as an int and floats (or None).

    Raises ValueError naming the first argument that is not a finite number in its range
    (``retries`` an integer in [0, MAX_RETRIES], ``backoff`` >= 0, ``timeout`` and ``rate_window`` > 0,
    ``deadline`` > 0 or None, ``min_rate`` >= 0 or None; the times at most :data:`MAX_SECONDS`).
    """
    return (check_int(retries, "retries", lo=0, hi=MAX_RETRIES), check_real(backoff, "backoff", lo=0, hi=MAX_SECONDS),
            check_real(timeout, "timeout", lo=0, open_lo=True, hi=MAX_SECONDS),
            _optional_real(deadline, "deadline", True, MAX_SECONDS), _optional_real(min_rate, "min_rate", False),
            check_real(rate_window, "rate_window", lo=0, open_lo=True, hi=MAX_SECONDS))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
                            http.client.HTTPException, _ShortRead))


class _ShortRead(Exception):
    """A transfer ended early or must start over (the .part is kept and resumed, or was removed); retried."""


class _DeadlinePassed(Exception):
    """The overall deadline of :func:`fetch` passed during a transfer."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha256(value, what: str) -> str:
    """``value`` as a lower-case 64-hex-digit string; ValueError naming ``what`` otherwise."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError(f"{what}: expected a sha256 digest of 64 hexadecimal characters, got {value!r}")
    return value.lower()


# Resuming safely: when a .part is started, the server's validator (a strong ETag, else
# Last-Modified) and the announced total size are recorded in FILE.part.json. A resume sends
# ``Range`` with ``If-Range: <validator>``; the resumed body is accepted only as a 206 whose
# Content-Range starts at the .part's size and whose validator and total match the record,
# otherwise the .part is discarded and the file fetched from byte 0. Without a validator (the
# server sent none, or the .part has no record) a changed file of the same size could not be
# told from the one the .part began, so the .part is discarded too, unless the file's sha256 is
# known: then it is resumed ("blindly"), the digest catches a splice, and a mismatching file that
# was resumed that way is fetched once more from byte 0 instead of failing at once.


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


_HEADERS = {"etag": "ETag", "last_modified": "Last-Modified"}


def _validator(headers) -> dict:
    """The response's validator usable in If-Range: ``{"etag": ...}`` (strong only), ``{"last_modified": ...}`` or {}."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # weak ETags are not allowed in If-Range
        return {"etag": etag}
    modified = headers.get("Last-Modified")
    return {"last_modified": modified} if modified else {}


def _read_record(part: Path, url: str):
    """The record of ``part``: a dict ``{"url", "validator", "total"}``, None when there is none (a
    .part from an older sglib), False if it is unreadable, malformed or made for another URL."""
    side = _sidecar(part)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("url") != url:
        return False
    validator, total = record.get("validator"), record.get("total")
    values = list(validator.values()) if isinstance(validator, dict) else [None, None]
    # none, or one kind whose value goes into If-Range: printable ASCII only (no CR/LF from a forged record)
    valid = values == [] or (len(values) == 1 and set(validator) <= set(_HEADERS) and isinstance(values[0], str)
                             and re.fullmatch(r"[\x20-\x7e]+", values[0]) is not None)
    sized = total is None or (type(total) is int and total >= 0)
    return record if valid and sized else False


def _same_validator(recorded: dict, headers) -> bool:
    """Whether the response carries the recorded validator (the same header with the same value)."""
    (kind, value), = recorded.items()
    return headers.get(_HEADERS[kind]) == value


def _content_length(headers, url: str) -> int | None:
    """The Content-Length of a response as an int, None when absent; DownloadError when it is not digits."""
    length = headers.get("Content-Length")
    if length is None:
        return None
    if not re.fullmatch(r"\s*\d+\s*", length):
        raise DownloadError(f"{url}: the server sent an invalid Content-Length {length!r}")
    return int(length)


def _discard(part: Path) -> None:
    for path in (part, _sidecar(part)):
        if path.exists():
            path.unlink()


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects (VGG_URL answers with a 301) to http(s) URLs only; urllib would follow ftp too."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not re.match(r"https?://", newurl, re.I):
            raise urllib.error.HTTPError(req.full_url, code, f"{msg} - redirect to a non-http(s) URL {newurl!r} "
                                         f"refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _transfer_once(url: str, part: Path, timeout: float, progress: bool, stop_at: float | None = None,
                   min_rate: float | None = None, rate_window: float = 30.0, blind_resume: bool = False,
                   size: int | None = None) -> bool:
    """One HTTP request: append to ``part`` from its current size (Range + If-Range) until complete.

    Returns True when ``part`` is complete and holds bytes kept from before this request without
    a validator to check them against (only with ``blind_resume``), False when it is complete and
    either fetched whole or resumed under If-Range.

    Args:
        stop_at: ``time.monotonic()`` value after which the transfer is abandoned (_DeadlinePassed).
        min_rate: bytes/s; a body arriving slower than this, averaged over consecutive windows of
            ``rate_window`` seconds, is abandoned (_ShortRead, so the caller retries and resumes).
        blind_resume: resume a .part that has no validator (the caller checks a sha256 afterwards);
            otherwise such a .part is discarded and the file fetched from byte 0.
        size: the file's size known in advance; Content-Length, the total of Content-Range and the
            bytes received must match it (DownloadError naming the file otherwise).

    A body without Content-Length (and, for a 206, without a total in Content-Range) that ends
    early cannot be told from a complete one: only ``size`` or a sha256 catches it.
    """
    name = part.name[:-len(".part")]

    def wrong_size(got, where: str) -> DownloadError:
        return DownloadError(f"{name}: expected {size} bytes, got {got} ({where} of {url})")

    record = _read_record(part, url) if part.exists() else None
    if record is False:  # unreadable, forged or another URL's record: the .part cannot be trusted
        _discard(part)
        record = None
    validator = (record or {}).get("validator") or {}
    if part.exists() and not validator and not blind_resume:
        _discard(part)  # nothing to resume against: a changed file of the same size would be spliced
    have = part.stat().st_size if part.exists() else 0
    blind = bool(have) and not validator
    headers = {"User-Agent": "sglib-download/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = next(iter(validator.values()))
    if stop_at is not None:
        timeout = max(0.001, min(timeout, stop_at - time.monotonic()))
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # the .part already holds everything the server has, or is bogus: start over
            total = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
            if (total and int(total.group(1)) == have and (record or {}).get("total") in (None, have)
                    and size in (None, have)):
                return blind
            _discard(part)
            raise _ShortRead(f"server refused to resume at byte {have}; restarting") from exc
        raise
    with resp:
        if resp.status == 206 and not have:
            raise DownloadError(f"{url}: the server answered 206 Partial Content (Content-Range "
                                f"{resp.headers.get('Content-Range')!r}) to a request without Range; "
                                f"expected 200 with the whole file")
        if resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != have:
                raise DownloadError(f"{url}: server resumed at the wrong offset "
                                    f"(Content-Range {resp.headers.get('Content-Range')!r}, wanted {have})")
            if int(m.group(2)) < have or (m.group(3) != "*" and int(m.group(2)) >= int(m.group(3))):
                _discard(part)  # a server that garbles its ranges cannot be trusted with the .part either
                raise DownloadError(f"{url}: inconsistent Content-Range {resp.headers.get('Content-Range')!r} "
                                    f"(the range must end after its start and before its total); .part removed")
            length = _content_length(resp.headers, url)
            if length is not None and length != int(m.group(2)) - have + 1:
                raise DownloadError(f"{url}: Content-Length {length} contradicts Content-Range "
                                    f"{resp.headers.get('Content-Range')!r}")
            total = None if m.group(3) == "*" else int(m.group(3))
            if size is not None and total not in (None, size):
                _discard(part)
                raise wrong_size(total, "Content-Range total")
            recorded = record or {}
            changed = [what for what, ok in (
                ("validator", not recorded.get("validator") or _same_validator(recorded["validator"], resp.headers)),
                ("size", recorded.get("total") is None or total == recorded["total"])) if not ok]
            if changed:
                _discard(part)
                raise _ShortRead(f"{url} changed since {part.name} was started ({' and '.join(changed)} "
                                 f"differ); restarting from byte 0")
            expected, mode = int(m.group(2)) + 1, "ab"
        else:  # 200: a fresh start, or the server ignored Range / If-Range did not match
            have, mode, blind = 0, "wb", False
            total = expected = _content_length(resp.headers, url)
            if size is not None and total is not None and total != size:
                raise wrong_size(total, "Content-Length")
            _sidecar(part).write_text(json.dumps({"url": url, "validator": _validator(resp.headers), "total": total}))
        if size is not None and total is None:  # no length announced: the known size bounds the body
            total = expected = size
        window_start = time.monotonic()
        window_bytes = 0
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=name, disable=not progress,
                                          leave=False) as bar:
            while True:
                block = resp.read1(_CHUNK)  # whatever has arrived, so slow bodies are noticed
                if not block:
                    break
                f.write(block)
                if expected is not None and f.tell() > expected:  # a body without Content-Length
                    break
                bar.update(len(block))
                now = time.monotonic()
                window_bytes += len(block)
                if stop_at is not None and now > stop_at:
                    raise _DeadlinePassed()
                if min_rate and now - window_start >= rate_window:
                    rate = window_bytes / (now - window_start)
                    if rate < min_rate:
                        raise _ShortRead(f"{url}: transfer rate {rate:.0f} B/s over {now - window_start:.1f} s "
                                         f"is below the minimum of {min_rate:g} B/s (min_rate)")
                    window_start, window_bytes = now, 0
    got = part.stat().st_size
    if expected is not None and got > expected:
        _discard(part)
        if size is not None:
            raise wrong_size("more", "the body")
        raise DownloadError(f"{url}: received {got} bytes, more than the {expected} announced")
    if expected is not None and got < expected:
        if size is not None:
            raise _ShortRead(str(wrong_size(got, "the body")))
        raise _ShortRead(f"{url}: connection closed after {got} of {expected} bytes")
    if total is not None and got < total:  # a 206 that covered only part of the rest
        raise _ShortRead(f"{url}: the server sent bytes up to {got} of {total}; resuming")
    return blind


def fetch(url: str, dest, *, sha256: str | None = None, retries: int = 5, backoff: float = 2.0,
          timeout: float = 60.0, progress: bool = True, deadline: float | None = None,
          min_rate: float | None = 1024, rate_window: float = 30.0, size: int | None = None) -> Path:
    """Download ``url`` to ``dest`` resumably; returns ``dest``. An existing ``dest`` is kept as is.

    Bytes go to ``dest.part`` (with ``dest.part.json`` recording the URL, the server's ETag /
    Last-Modified and size); after an interruption the next attempt (or the next call) asks for
    the rest with ``Range`` and ``If-Range``, and starts over if the remote file changed or the
    record is corrupt or another URL's. A server that sends
    no ETag / Last-Modified (or a .part without its record) gives nothing to resume against: the
    file is fetched again from byte 0, unless ``sha256`` is given, which catches a splice (such a
    resumed file that fails the digest is fetched once more from byte 0). Connection errors,
    short reads, too-slow transfers and 5xx/408/429 answers are retried up to ``retries`` times,
    waiting ``backoff * 2**k`` seconds (at most 60) before retry ``k``. Other HTTP errors (404,
    403) fail at once. The size must match Content-Length (or the total of Content-Range) and, if
    given, ``size`` and the sha256; then ``.part`` is renamed to ``dest``. Without
    Content-Length, ``size`` and sha256, a body cut short cannot be detected.

    Args:
        sha256: expected hex digest of the whole file (64 hex characters).
        timeout: seconds a connection or a single read may stall.
        deadline: seconds for the whole call (all attempts and waits); None: no limit. Checked
            between reads, and each read waits at most the time left.
        min_rate: bytes/s; an attempt whose body arrives slower, averaged over a window of
            ``rate_window`` seconds, is abandoned and retried (resuming). None or 0: no minimum.
        size: the file's size in bytes, if known in advance (see :data:`KNOWN_SIZES`): a
            Content-Length or Content-Range total that differs fails at once, a body that ends
            short is resumed, one that runs longer fails.

    Raises:
        DownloadError: HTTP error, retries exhausted, deadline passed, or size/checksum mismatch.
        ValueError: ``url`` is not an http(s) URL, ``dest`` is not a path or is a directory,
            ``sha256`` is not 64 hex characters, or a number is out of range (``retries`` and
            ``size`` integers >= 0, ``backoff`` >= 0, ``timeout`` and ``rate_window`` > 0,
            ``deadline`` > 0 or None, ``min_rate`` >= 0 or None; all finite), checked before any
            request.
    """
    _check_url(url, "url")
    retries, backoff, timeout, deadline, min_rate, rate_window = _check_policy(
        retries, backoff, timeout, deadline, min_rate, rate_window)
    if sha256 is not None:
        sha256 = _check_sha256(sha256, f"sha256 for {url}")
    if size is not None:
        size = check_int(size, "size", lo=0)
    dest = _check_path(dest, "dest", "file")
    if dest.is_file():
        return dest
    if dest.is_dir():  # found now, not when the finished download is renamed
        raise ValueError(f"dest: {dest} is a directory; expected the path of the file to write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    stop_at = None if deadline is None else time.monotonic() + deadline

    def deadline_error():
        got = part.stat().st_size if part.exists() else 0
        return DownloadError(f"download of {url} did not finish within the deadline of {deadline:g} s "
                             f"({got} bytes in {part}); run again to resume, or allow a longer deadline")

    attempt = 0
    while True:
        try:
            blind = _transfer_once(url, part, timeout, progress, stop_at, min_rate, rate_window,
                                   blind_resume=sha256 is not None, size=size)
            if sha256 is not None:
                digest = _sha256(part)
                if digest != sha256:
                    _discard(part)
                    if blind:  # the kept bytes may be another version's: one more try from byte 0
                        raise _ShortRead(f"{url}: sha256 {digest} of the file resumed without a validator does "
                                         f"not match the expected {sha256}; fetching it again from byte 0")
                    raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}; "
                                        f"file removed")
            break
        except DownloadError:
            raise
        except _DeadlinePassed:
            raise deadline_error() from None
        except Exception as exc:
            if not _is_transient(exc):
                detail = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else repr(exc)
                raise DownloadError(f"download of {url} failed: {detail}") from exc
            if attempt >= retries:
                again = f"Run again to resume from {part}" if part.exists() else "Run again to start over"
                raise DownloadError(f"download of {url} failed after {attempt + 1} attempts; last error: "
                                    f"{exc}. {again}") from exc
            wait = min(backoff * 2 ** attempt, 60.0)
            if stop_at is not None and time.monotonic() + wait >= stop_at:
                raise deadline_error() from exc
            time.sleep(wait)
            attempt += 1
    os.replace(part, dest)
    _sidecar(part).unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------------------------
# archives


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list:
    """All regular-file members; raises ArchiveError on absolute/``..`` paths, links, devices, or
    more than :data:`MAX_MEMBERS` members (tarfile keeps every member's header in memory)."""
    files = []
    for i, m in enumerate(tar):  # iterating reads the whole archive: truncation and gzip CRC errors surface here
        if i >= MAX_MEMBERS:
            raise ArchiveError(f"{archive}: more than {MAX_MEMBERS} members; archive rejected")
        parts = PurePosixPath(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", m.name):
            raise ArchiveError(f"{archive}: unsafe member path {m.name!r}; archive rejected")
        if m.isfile():
            files.append(m)
        elif not m.isdir():
            raise ArchiveError(f"{archive}: member {m.name!r} is a link or special file; archive rejected")
    return files


def _extract(archive: Path, dest_dir: Path, flatten: bool, progress: bool, wanted: set) -> list:
    """Extract the regular files of ``archive`` that land on a path in ``wanted`` below ``dest_dir``.

    A member lands on its basename when ``flatten``, else on its path (``wanted`` holds such
    relative POSIX paths); other members are skipped unread. Returns the written paths. Raises
    ArchiveError if the archive is unreadable or unsafe (see :func:`_safe_members`), if a wanted
    member is over :data:`MAX_MEMBER_BYTES`, or if the wanted members add up to more than twice
    the archive's size plus that bound; sizes are checked from the headers before anything is
    written. The caller extracts into a staging folder, so a failure leaves nothing in the dataset.
    """
    written, seen, total = [], set(), 0
    limit = 2 * archive.stat().st_size + MAX_MEMBER_BYTES
    try:
        with tarfile.open(archive, "r:*") as tar:
            chosen = []
            for m in _safe_members(tar, archive):
                path = PurePosixPath(m.name)
                rel = path.name if flatten else PurePosixPath(*path.parts).as_posix()  # drops "./" and "//"
                if rel not in wanted:
                    continue
                if rel in seen:
                    raise ArchiveError(f"{archive}: two members extract to {rel}")
                seen.add(rel)
                if m.size > MAX_MEMBER_BYTES:
                    raise ArchiveError(f"{archive}: member {m.name} is {m.size} bytes, more than the "
                                       f"{MAX_MEMBER_BYTES} allowed for one image (MAX_MEMBER_BYTES); archive rejected")
                total += m.size
                if total > limit:
                    raise ArchiveError(f"{archive}: member {m.name} brings the extracted size to {total} bytes, more "
                                       f"than twice the archive's {archive.stat().st_size} bytes plus "
                                       f"{MAX_MEMBER_BYTES} (a decompression bomb); archive rejected")
                chosen.append((m, rel))
            for m, rel in tqdm(chosen, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
                out = dest_dir / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f, _CHUNK)
                if out.stat().st_size != m.size:
                    raise ArchiveError(f"{archive}: member {m.name} is truncated")
                written.append(out)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # gzip/zlib errors are OSError/EOFError
        raise ArchiveError(f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                           f"it was removed, run again to download it afresh") from exc
    return written


def _move_tree(src: Path, dst: Path) -> None:
    """Move every file below ``src`` to the same place below ``dst`` (same filesystem, per-file rename)."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(src)


# ---------------------------------------------------------------------------------------------
# datasets


def download_revisitop(name: str, data_root, *, images_url: str | None = None, gnd_url: str | None = None,
                       sha256: dict | None = None, retries: int = 5, backoff: float = 2.0,
                       timeout: float = 60.0, deadline: float | None = None, min_rate: float | None = 1024,
                       keep_archives: bool = False, progress: bool = True) -> RevisitopDataset:
    """Download ``roxford5k`` or ``rparis6k`` into ``DATA_ROOT/datasets/NAME/`` and return it loaded.

    Fetches ``gnd_NAME.pkl`` and the image archives (all resumable), extracts the images the
    ground truth lists (and nothing else) flat into ``jpg/`` (the Paris archives hold
    ``paris/<landmark>/<img>.jpg``), checks that every one of them is there, and only then puts
    ``gnd_NAME.pkl`` in place. A complete dataset is returned without any network access.

    Args:
        name: ``"roxford5k"`` or ``"rparis6k"``.
        data_root: data root; the dataset lands in ``data_root/datasets/NAME``.
        images_url: base URL of the archives (default env ``SGLIB_VGG_URL`` or :data:`VGG_URL`).
        gnd_url: base URL of the ground truth (default env ``SGLIB_REVISITOP_URL`` or :data:`REVISITOP_URL`).
        sha256: optional ``{file name: hex digest}`` for the archives / gnd file (names as in
            :func:`dataset_files`); added to, and taking precedence over, :data:`KNOWN_SHA256`.
        retries, backoff, timeout, deadline, min_rate: per-file policy (see :func:`fetch`).
        keep_archives: keep the downloaded archives in ``NAME/.download/`` after extraction.
        progress: show tqdm bars.

    Raises:
        ValueError: unknown name, a bad sha256 entry, a base URL (argument or environment variable)
        that is not http(s), or a number out of range (as in :func:`fetch`), before any request.
        DownloadError / ArchiveError: fetch or integrity failure (the dataset is then left without
        ``gnd_NAME.pkl``, i.e. not claiming to be complete).
    """
    if not isinstance(name, str) or name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {sorted(ARCHIVES)}")
    _check_policy(retries, backoff, timeout, deadline, min_rate)  # before any request, even for a complete dataset
    sha256 = _expected_sha256(name, sha256)
    images_url = _base_url(images_url, "SGLIB_VGG_URL", VGG_URL, "images_url")
    gnd_url = _base_url(gnd_url, "SGLIB_REVISITOP_URL", REVISITOP_URL, "gnd_url")
    folder = _check_path(data_root, "data_root", "folder") / "datasets" / name
    gnd_file = folder / f"gnd_{name}.pkl"
    if gnd_file.is_file():
        try:
            return load_revisitop(data_root, name, require_images=True)
        except DatasetError:
            pass  # incomplete (e.g. images deleted): fetch again what is missing
    dl = folder / _DOWNLOADS
    opts = dict(retries=retries, backoff=backoff, timeout=timeout, deadline=deadline, min_rate=min_rate,
                progress=progress)

    gnd_tmp = fetch(f"{gnd_url}/{name}/gnd_{name}.pkl", dl / gnd_file.name, sha256=sha256.get(gnd_file.name),
                    size=KNOWN_SIZES.get(gnd_file.name), **opts)
    try:
        gnd = read_revisitop_gnd(gnd_tmp)
    except DatasetError as exc:
        gnd_tmp.unlink()
        raise DownloadError(f"downloaded ground truth is not valid ({exc}); removed, run again") from exc

    needed = sorted(set(gnd["imlist"]) | set(gnd["qimlist"]))
    wanted = {f"{n}.jpg" for n in needed}  # anything else in the archives stays unextracted
    staging = folder / (IMAGE_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    archives = []
    for rel in ARCHIVES[name]:
        fname = PurePosixPath(rel).name
        archive = fetch(f"{images_url}/{rel}", dl / fname, sha256=sha256.get(fname), size=KNOWN_SIZES.get(fname),
                        **opts)
        try:
            _extract(archive, staging, flatten=True, progress=progress, wanted=wanted)
        except ArchiveError:
            archive.unlink()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        archives.append(archive)

    jpg = folder / IMAGE_DIR
    absent = [n for n in needed if not (staging / f"{n}.jpg").is_file() and not (jpg / f"{n}.jpg").is_file()]
    if absent:
        shutil.rmtree(staging, ignore_errors=True)
        for archive in archives:
            archive.unlink()
        raise ArchiveError(f"{name}: the archives lack images the ground truth lists; " +
                           missing_files_message("images", absent, len(needed)) +
                           "; archives removed, run again to download them afresh")
    if jpg.exists():
        _move_tree(staging, jpg)
    else:
        os.replace(staging, jpg)
    os.replace(gnd_tmp, gnd_file)  # last step: from now on the dataset claims to be complete
    if not keep_archives:
        for archive in archives:
            archive.unlink()
        if not any(dl.iterdir()):
            dl.rmdir()
    return load_revisitop(data_root, name, require_images=True)


def _listed_path(entry: str) -> str:
    """Where a ``revisitop1m.txt`` entry's image lies below ``jpg/``, as a POSIX path: the entry less an
    optional ``jpg/`` prefix, with ``.jpg`` added unless it ends in an image extension (the rule of
    :func:`revisitop1m_image_paths`, on strings: building a million Path objects takes seconds)."""
    if entry.startswith(IMAGE_DIR + "/"):
        entry = entry[len(IMAGE_DIR) + 1:]
    return entry if entry.lower().endswith(_KNOWN_EXTS) else entry + IMAGE_EXT


def download_revisitop1m(data_root, parts=range(1, REVISITOP1M_PARTS + 1), *, base_url: str | None = None,
                         sha256: dict | None = None, retries: int = 5, backoff: float = 2.0,
                         timeout: float = 60.0, deadline: float | None = None, min_rate: float | None = 1024,
                         keep_archives: bool = False, progress: bool = True) -> Path:
    """Download the revisitop1m distractors into ``DATA_ROOT/datasets/revisitop1m/``; returns its ``jpg/``.

    Fetches ``revisitop1m.txt`` and the archives ``jpg/revisitop1m.{i}.tar.gz`` for ``i`` in
    ``parts`` (1..100), the images the list names in each extracted (paths kept, below ``jpg/``; other
    members are skipped) via a staging folder and
    recorded in ``.download/part{i}.done``, so an interrupted run resumes at the archive (and
    byte) it stopped at. When all 100 parts are done, every image of the list must exist.

    Args:
        data_root: data root. parts: which archives (1-based), all by default.
        base_url: default env ``SGLIB_REVISITOP1M_URL`` or :data:`REVISITOP1M_URL`.
        sha256: optional ``{file name: hex digest}`` for ``revisitop1m.txt`` / ``revisitop1m.{i}.tar.gz``,
            added to, and taking precedence over, :data:`KNOWN_SHA256`.
        retries, backoff, timeout, deadline, min_rate, keep_archives, progress: as in
            :func:`download_revisitop`.

    Raises:
        ValueError: a part number that is not an integer in 1..100, a bad sha256 entry, a base URL
        that is not http(s), or a number out of range (as in :func:`fetch`). DownloadError /
        ArchiveError, also for a downloaded ``revisitop1m.txt`` that is not a valid list; MissingImagesError
        when all parts are in but listed images are absent.
    """
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
        raise ValueError(f"parts: expected an iterable of part numbers (1..{REVISITOP1M_PARTS}), got {parts!r}")
    parts = sorted({check_int(p, f"parts[{i}]") for i, p in enumerate(parts)})
    bad = [p for p in parts if not 1 <= p <= REVISITOP1M_PARTS]
    if bad:
        raise ValueError(f"revisitop1m parts are numbered 1..{REVISITOP1M_PARTS}, got {bad}")
    _check_policy(retries, backoff, timeout, deadline, min_rate)  # before any request
    sha256 = _expected_sha256(REVISITOP1M, sha256)
    base_url = _base_url(base_url, "SGLIB_REVISITOP1M_URL", REVISITOP1M_URL, "base_url")
    folder = _check_path(data_root, "data_root", "folder") / "datasets" / REVISITOP1M
    dl, jpg = folder / _DOWNLOADS, folder / IMAGE_DIR
    opts = dict(retries=retries, backoff=backoff, timeout=timeout, deadline=deadline, min_rate=min_rate,
                progress=progress)
    listing = f"{REVISITOP1M}.txt"
    fetch(f"{base_url}/{listing}", folder / listing, sha256=sha256.get(listing), size=KNOWN_SIZES.get(listing),
          **opts)
    try:
        wanted = {_listed_path(e) for e in load_revisitop1m_list(folder)}
    except DatasetError as exc:
        (folder / listing).unlink()
        raise DownloadError(f"downloaded image list is not valid ({exc}); removed, run again") from exc

    for i in tqdm(parts, desc="revisitop1m archives", unit="archive", disable=not progress):
        done = dl / f"part{i}.done"
        if done.is_file():
            continue
        fname = f"{REVISITOP1M}.{i}.tar.gz"
        archive = fetch(f"{base_url}/{IMAGE_DIR}/{fname}", dl / fname, sha256=sha256.get(fname),
                        size=KNOWN_SIZES.get(fname), **opts)
        staging = dl / f"part{i}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            files = _extract(archive, staging, flatten=False, progress=progress, wanted=wanted)
        except ArchiveError:
            archive.unlink()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not files:
            archive.unlink()
            shutil.rmtree(staging, ignore_errors=True)
            raise ArchiveError(f"{archive} holds none of the images {listing} lists; removed, run again to "
                               f"download it afresh")
        jpg.mkdir(parents=True, exist_ok=True)
        _move_tree(staging, jpg)
        done.write_text(f"{len(files)}\n")
        if not keep_archives:
            archive.unlink()

    if all((dl / f"part{i}.done").is_file() for i in range(1, REVISITOP1M_PARTS + 1)):
        revisitop1m_image_paths(data_root, require_images=True)
    return jpg
