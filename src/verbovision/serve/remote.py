"""Remote images (`--allow-remote-images`): downloaded within a deadline for the whole download. A socket timeout bounds
each read only, so a server sending a byte now and then would hold a request's worker for as long as it likes; and no
timeout bounds the host name's lookup, which the system resolver may retry for tens of seconds."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request

from .errors import invalid

FETCH_SECONDS = 10.0
"""Longest an image download may take, from looking up the host to its last byte (redirects included)."""


def fetch_image(url: str, limit: int) -> bytes:
    """The image at an http(s) URL, at most `limit` + 1 bytes (one byte over the limit is enough to refuse it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "verbovision"})
    sockets = _Sockets()
    outcome: dict = {}

    def download() -> None:
        try:
            with sockets.opener().open(request, timeout=FETCH_SECONDS) as response:
                outcome["data"] = response.read(limit + 1)
        except (OSError, ValueError, http.client.HTTPException) as e:  # HTTPException: a garbled reply
            outcome["failure"] = e

    # The download runs in a thread of its own so that the deadline holds wherever it blocks; one left in a name
    # lookup ends when the resolver gives up, and the connection it then opens is shut at once.
    worker = threading.Thread(target=download, name="verbo-image-fetch", daemon=True)
    worker.start()
    worker.join(FETCH_SECONDS)
    if worker.is_alive():
        sockets.shut_all()
        failure = f"not downloaded within {FETCH_SECONDS:g} s"  # a cut socket reads as a short reply or any error
    else:
        failure = outcome.get("failure")
    if failure is not None:
        raise invalid(f"could not fetch image {url}: {failure}", "messages", "image_fetch_failed")
    return outcome["data"]


class _Sockets:
    """The sockets of one download, shut together when its time is up, so that a read blocked anywhere (status line,
    headers, body) returns at once."""

    def __init__(self):
        self.shut = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (redirects, proxies...) whose http(s) connections are watched."""
        return urllib.request.build_opener(_WatchedHandler(self))

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.shut:
                _shut(sock)

    def shut_all(self) -> None:
        with self._lock:
            self.shut = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSL socket's own is not thread-safe
    except OSError:
        pass  # closed already


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https URLs (in place of urllib's handlers of both) on connections whose sockets are watched
    once connected (an https one once its TLS handshake is done: the handshake is bounded as a whole by the socket
    timeout, which CPython's SSL handshake keeps as one deadline; the TCP connect has the socket timeout)."""

    def __init__(self, sockets: _Sockets):
        super().__init__()
        self.sockets = sockets

    def http_open(self, request):
        return self.do_open(self._watched(http.client.HTTPConnection), request)

    def https_open(self, request):
        return self.do_open(self._watched(http.client.HTTPSConnection), request)

    def _watched(self, connection_class: type) -> type:
        sockets = self.sockets

        class Watched(connection_class):
            def connect(self):
                super().connect()
                sockets.watch(self.sock)

        return Watched
