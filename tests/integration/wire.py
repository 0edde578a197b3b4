"""Raw HTTP/1.1 over a socket, for tests that must send exactly the bytes
they mean (http.client normalises requests and hides framing).

A Wire is one connection with a read buffer.  read_response() parses one
response strictly (status line, headers, a body framed by Content-Length or
chunked) and raises Torn if the peer hangs up in the middle of one, so a
half-written answer never passes for a refusal.

Python standard library only.
"""

import json
import select
import socket
import time

TIMEOUT = 10


class Torn(AssertionError):
    """The connection ended in the middle of a response."""


class NoAnswer(AssertionError):
    """Nothing came back before the deadline."""


class Closed(Exception):
    """The peer closed the connection before sending a byte of a response."""


class Answer:
    """One parsed response.  headers: list of (lower-case name, value)."""

    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name):
        values = [v for n, v in self.headers if n == name.lower()]
        return values[0] if values else None

    def header_count(self, name):
        return sum(1 for n, _ in self.headers if n == name.lower())

    def media_type(self):
        return (self.header('Content-Type') or '').split(';')[0].strip().lower()

    def __repr__(self):
        return 'Answer(%d %s, %r)' % (self.status, self.reason, self.body[:300])


def request_bytes(method, path, headers=(), body=None, version='HTTP/1.1', host='127.0.0.1'):
    """A request as bytes: a Host header first (unless host is None), then
    headers (name, value) as given, Content-Length when body is bytes and no
    Content-Length or Transfer-Encoding is among headers."""
    lines = ['%s %s %s' % (method, path, version)]
    if host is not None:
        lines.append('Host: ' + host)
    names = set()
    for name, value in headers:
        lines.append('%s: %s' % (name, value))
        names.add(name.lower())
    if body is not None and not names & {'content-length', 'transfer-encoding'}:
        lines.append('Content-Length: %d' % len(body))
    head = ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')
    return head + (body or b'')


def chunked(body, size=1000, end=True):
    """body in chunked transfer coding, size bytes a chunk."""
    out = b''.join(b'%x\r\n%s\r\n' % (len(body[i:i + size]), body[i:i + size])
                   for i in range(0, len(body), size))
    return out + (b'0\r\n\r\n' if end else b'')


class Wire:
    def __init__(self, port, host='127.0.0.1', timeout=TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b''
        self.eof = False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        """Sends data; False if the peer has already closed or reset."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send_slowly(self, data, delay):
        for i in range(len(data)):
            if not self.send(data[i:i + 1]):
                return False
            time.sleep(delay)
        return True

    def _fill(self, deadline):
        """Reads more into buf; False at end of stream (or reset)."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer('no complete answer in time; got %r' % self.buf[:300])
        ready, _, _ = select.select([self.sock], [], [], left)
        if not ready:
            raise NoAnswer('no complete answer in time; got %r' % self.buf[:300])
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b''
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take_line(self, deadline):
        while b'\r\n' not in self.buf:
            if not self._fill(deadline):
                raise Torn('connection ended inside a header line: %r' % self.buf[:300])
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line

    def _take(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Torn('connection ended %d bytes into a %d-byte body'
                           % (len(self.buf), n))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self, head=False, timeout=TIMEOUT):
        """The next response.  Raises Closed if the stream ends before its
        first byte, Torn if it ends inside it, NoAnswer after timeout."""
        deadline = time.monotonic() + timeout
        while not self.buf:
            if not self._fill(deadline):
                raise Closed()
        status_line = self._take_line(deadline).decode('latin-1')
        parts = status_line.split(' ', 2)
        if len(parts) < 2 or not parts[0].startswith('HTTP/1.') or not parts[1].isdigit():
            raise Torn('not a status line: %r' % status_line)
        status = int(parts[1])
        headers = []
        while True:
            line = self._take_line(deadline).decode('latin-1')
            if not line:
                break
            name, sep, value = line.partition(':')
            if not sep:
                raise Torn('not a header line: %r' % line)
            headers.append((name.strip().lower(), value.strip()))
        ans = Answer(parts[0], status, parts[2] if len(parts) > 2 else '', headers, b'')
        if head or status in (204, 304) or 100 <= status < 200:
            return ans
        length = ans.header('Content-Length')
        if (ans.header('Transfer-Encoding') or '').lower() == 'chunked':
            ans.body = self._read_chunked(deadline)
        elif length is not None:
            ans.body = self._take(int(length), deadline)
        else:
            while self._fill(deadline):
                pass
            ans.body, self.buf = self.buf, b''
        ans.__init__(ans.version, ans.status, ans.reason, ans.headers, ans.body)
        return ans

    def _read_chunked(self, deadline):
        body = b''
        while True:
            size = int(self._take_line(deadline).split(b';')[0], 16)
            if size == 0:
                while self._take_line(deadline):
                    pass
                return body
            body += self._take(size, deadline)
            if self._take(2, deadline) != b'\r\n':
                raise Torn('chunk without CRLF')

    def closed_within(self, timeout):
        """True if the peer ends the stream (without sending anything)
        within timeout seconds; False if it is still open then."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except NoAnswer:
            return False
        return True
