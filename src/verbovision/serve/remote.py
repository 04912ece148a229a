"""Remote images (`--allow-remote-images`): downloaded within a deadline for the whole download. A socket timeout bounds
each read only, so a server sending a byte now and then would hold a request's worker for as long as it likes."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request

from .errors import invalid

FETCH_SECONDS = 10.0
"""Longest an image download may take, from connecting to its last byte (redirects included)."""


def fetch_image(url: str, limit: int) -> bytes:
    """The image at an http(s) URL, at most `limit` + 1 bytes (one byte over the limit is enough to refuse it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "verbovision"})
    failure = None
    with _Deadline(FETCH_SECONDS) as deadline:
        try:
            with deadline.opener().open(request, timeout=FETCH_SECONDS) as response:
                data = response.read(limit + 1)
        except (OSError, ValueError, http.client.HTTPException) as e:  # HTTPException: a garbled reply
            failure = e
    if deadline.expired:  # a cut socket reads as a short reply or as any error
        failure = f"not downloaded within {FETCH_SECONDS:g} s"
    if failure is not None:
        raise invalid(f"could not fetch image {url}: {failure}", "messages", "image_fetch_failed")
    return data


class _Deadline:
    """Shuts the sockets of one download when its time is up, so that a read blocked anywhere (status line, headers,
    body) returns at once."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (redirects, proxies...) whose http(s) connections this deadline watches."""
        return urllib.request.build_opener(_WatchedHandler(self))

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSL socket's own is not thread-safe
    except OSError:
        pass  # closed already


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https URLs (in place of urllib's handlers of both) on connections whose sockets a deadline
    watches once connected (an https one once its TLS handshake is done: the handshake is bounded as a whole by the
    socket timeout, which CPython's SSL handshake keeps as one deadline; the TCP connect has the socket timeout)."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, request):
        return self.do_open(self._watched(http.client.HTTPConnection), request)

    def https_open(self, request):
        return self.do_open(self._watched(http.client.HTTPSConnection), request)

    def _watched(self, connection_class: type) -> type:
        deadline = self.deadline

        class Watched(connection_class):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        return Watched
