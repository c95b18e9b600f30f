"""Plain HTTP(S) downloads with resume and sha256, and Google Drive's confirmation step.

A URL is written to ``<file>.part`` (``<file>.part.json`` names its source and validator),
resumed with ``Range``/``If-Range`` after an interruption, checked against its sha256, and only
then renamed to ``<file>``. ``MUTR_GDRIVE_URL`` replaces Drive's base URL (tests use a local
server). Stdlib only, so it works wherever Python does.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import http.cookiejar
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from mutr.errors import DownloadError

logger = logging.getLogger(__name__)

Progress = Callable[[int, Optional[int]], None]
GDRIVE_URL = "https://drive.google.com"
_TIMEOUT = 60.0  # seconds without a byte before a connection counts as lost
_RETRIES = 3  # in-call resumptions after an interrupted transfer (each one must make progress)
_CHUNK = 1 << 20
_GDRIVE_ID = re.compile(r"(?:/file/d/|[?&]id=)([\w-]{10,})")

class _Interrupted(Exception):
    """The body ended early or the connection dropped; `progressed` says whether bytes arrived."""

    def __init__(self, message: str, progressed: bool) -> None:
        super().__init__(message)
        self.progressed = progressed


class _Restart(Exception):
    """The partial file cannot be continued (416, wrong Content-Range): start from byte 0."""


def sha256_file(path: Path, hasher: Any = None) -> str:
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def hash_matches(digest: str, sha256: str | None, prefix: str | None) -> bool:
    return digest == sha256 if sha256 else digest.startswith(prefix or "")


def gdrive_id(url: str) -> str | None:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("drive.google.com", "drive.usercontent.google.com", "docs.google.com"):
        return None
    match = _GDRIVE_ID.search(url)
    return match.group(1) if match else None


def fetch_url(url: str, final: Path, sha256: str | None, prefix: str | None, size: int | None,
               progress: Progress | None) -> str:
    """Download `url` to `final` (resuming `final.part`); returns the file's sha256."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if True:  # the caller (mutr.hub) holds the file lock
        if final.is_file():
            if not (sha256 or prefix):
                recorded = final.with_name(final.name + ".sha256")
                return recorded.read_text().strip() if recorded.is_file() else sha256_file(final)
            digest = sha256_file(final)
            if hash_matches(digest, sha256, prefix):
                return digest
            warnings.warn(f"{final} does not match its sha256; downloading it again", stacklevel=3)
            final.unlink()

        part = final.with_name(final.name + ".part")
        meta_path = final.with_name(final.name + ".part.json")
        meta = _read_json(meta_path)
        if part.exists() and meta.get("url") != url:  # bytes from another source cannot be continued
            part.unlink()
        tries = 0
        while True:
            try:
                hasher = _transfer(url, part, meta_path, progress, size)
                break
            except _Restart:
                part.unlink(missing_ok=True)
            except _Interrupted as exc:
                if not exc.progressed or tries >= _RETRIES:
                    raise DownloadError(f"{exc}; run the same command again to resume") from None
                logger.info("%s; resuming", exc)
            tries += 1
            if tries > _RETRIES + 1:
                raise DownloadError(f"{url} could not be resumed; delete {part} and try again")

        digest = hasher.hexdigest()
        actual = part.stat().st_size
        if not hash_matches(digest, sha256, prefix) or (size is not None and actual != size):
            part.unlink()
            meta_path.unlink(missing_ok=True)
            want = sha256 or (f"{prefix}…" if prefix else f"{size} bytes")
            raise DownloadError(f"{url} gave a file with sha256 {digest} ({actual} bytes), expected {want}; "
                                "the file was deleted — the link may serve another file now, "
                                "check the hash or fetch the file yourself")
        final.with_name(final.name + ".sha256").write_text(digest + "\n")
        os.replace(part, final)
        meta_path.unlink(missing_ok=True)
        if not (sha256 or prefix):
            logger.info("%s has sha256 %s (unverified: no hash was given)", final, digest)
        return digest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _transfer(url: str, part: Path, meta_path: Path, progress: Progress | None, size: int | None) -> Any:
    """One request: append to `part` from its current size (or rewrite it), return the hasher."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {}
    validator = _read_json(meta_path).get("validator") if offset else None
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the server sends the whole file instead if it changed since
            headers["If-Range"] = validator
    resp = _open(url, headers)
    with contextlib.closing(resp):
        total = _int(resp.headers.get("Content-Length"))
        if offset and resp.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range") or "")
            if not match or int(match.group(1)) != offset:
                raise _Restart()
            total = None if match.group(2) == "*" else int(match.group(2))
            mode = "ab"
        else:
            if offset:
                logger.info("%s ignored the Range request; downloading from the start", url)
            offset, mode = 0, "wb"
        total = total or size
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        meta_path.write_text(json.dumps({"url": url, "validator": validator}))

        hasher = hashlib.sha256()
        if mode == "ab":
            sha256_file(part, hasher)
        done = offset
        if progress is not None:
            progress(done, total)
        with open(part, mode) as f:
            try:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(f"the download of {url} was interrupted at {done} bytes ({exc})",
                                   done > offset) from None
        if total is not None and done < total:
            raise _Interrupted(f"the download of {url} stopped at {done} of {total} bytes", done > offset)
        return hasher


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _open(url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """GET `url` (through Drive's confirmation page when it is a Drive link) as a response stream."""
    from mutr import __version__

    headers = {"User-Agent": f"mutr/{__version__}", **headers}
    cookies = http.cookiejar.CookieJar()  # Drive's older confirmation step sets a cookie
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    gid = gdrive_id(url)
    target = url
    if gid:
        base = (os.environ.get("MUTR_GDRIVE_URL") or GDRIVE_URL).rstrip("/")
        target = f"{base}/uc?export=download&id={gid}"
    for hop in range(3):  # the page, then at most one or two confirmation hops
        # Drive's first answer for a large file is a web page: ask it for the bytes only after that
        hop_headers = headers if hop or not gid else {k: v for k, v in headers.items()
                                                       if k not in ("Range", "If-Range")}
        resp = _request(opener, target, hop_headers, url)
        if not gid or not _is_html(resp):
            return resp
        with contextlib.closing(resp):
            page = resp.read(2_000_000).decode("utf-8", "replace")
            page_url = resp.geturl()
        target = _gdrive_confirm(page, page_url, cookies, gid)
    raise DownloadError(f"Google Drive kept answering {url} with a web page; open it in a browser "
                        "and use the local file")


def _request(opener: urllib.request.OpenerDirector, target: str, headers: dict[str, str],
             url: str) -> http.client.HTTPResponse:
    try:
        return opener.open(urllib.request.Request(target, headers=headers), timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416:
            raise _Restart() from None
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}; the link may have moved — "
                            "check it, or fetch the file yourself and use the local file") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        host = urllib.parse.urlsplit(target).netloc
        raise DownloadError(f"cannot reach {host} ({reason}); check the network connection, "
                            f"or fetch {url} yourself and use the local file") from None


def _is_html(resp: http.client.HTTPResponse) -> bool:
    disposition = resp.headers.get("Content-Disposition") or ""
    return resp.headers.get_content_type() == "text/html" and "attachment" not in disposition


def _gdrive_confirm(page: str, page_url: str, cookies: http.cookiejar.CookieJar, gid: str) -> str:
    """The URL behind Drive's "can't scan this file for viruses" page, or a one-line error."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    if form:  # current page: a GET form to drive.usercontent.google.com with confirm/uuid fields
        fields = re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2))
        query = urllib.parse.urlencode([(k, html.unescape(v)) for k, v in fields])
        return urllib.parse.urljoin(page_url, html.unescape(form.group(1))) + "?" + query
    link = re.search(r'href="([^"]*[?&](?:amp;)?confirm=[^"]+)"', page)
    if link:  # older page: a link carrying the confirm token
        return urllib.parse.urljoin(page_url, html.unescape(link.group(1)))
    embedded = re.search(r'"downloadUrl":"([^"]+)"', page)
    if embedded:
        return json.loads(f'"{embedded.group(1)}"')
    for cookie in cookies:
        if cookie.name.startswith("download_warning") and cookie.value:  # oldest: token in a cookie
            sep = "&" if "?" in page_url else "?"
            return f"{page_url}{sep}confirm={urllib.parse.quote(cookie.value)}"
    reason = re.search(r'class="uc-error-subcaption">(.*?)<', page, re.S) or re.search(r"<title>(.*?)</title>",
                                                                                       page, re.S)
    why = html.unescape(reason.group(1)).strip() if reason else "no download link on the page"
    raise DownloadError(f"Google Drive did not serve file {gid} ({why}); try later (Drive limits popular "
                        f"files) or open https://drive.google.com/file/d/{gid} in a browser and use the local file")

