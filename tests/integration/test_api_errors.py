"""Every error status of API v1 that a caller can provoke, with its code and
the body {"error": {"code", "message"}}.

(503 token_unavailable and 500 internal_error need a failing token; later
issues provoke them.)
"""

import http.client
import json
import socket
import sys
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

token = None
daemon = None
everything = h.Caller('everything', '*')
limited = h.Caller('limited', ['alpha'])
GOOD = {'verification_code': 'ABCDEF0123456789'}


def setUpModule():
    global token, daemon
    token = h.Token(['ec256', 'rsa2048'])
    conf = h.write_config(token.dir, keys=[
        h.key_section('alpha', token.uri('ec256'), token.cert('ec256')),
        h.key_section('beta', token.uri('rsa2048'), token.cert('rsa2048')),
    ], callers=[everything, limited])
    try:
        daemon = h.Daemon(conf, token.env).start()
    except BaseException:
        token.cleanup()
        raise


def tearDownModule():
    try:
        if daemon is not None:
            daemon.stop()
    finally:
        token.cleanup()


def call(method, path, body=None, caller=everything, **kw):
    return h.request(daemon.port, method, path, body,
                     token=caller.token if caller else None, **kw)


def sign(body, key='alpha', caller=everything, **kw):
    return call('POST', h.sign_path(key), body, caller=caller, **kw)


def raw_exchange(data_parts, wait=10):
    """Sends raw bytes on a new connection (stopping early if the daemon
    closes it) and reads one HTTP response.  Returns Response."""
    s = socket.create_connection(('127.0.0.1', daemon.port), timeout=wait)
    try:
        for part in data_parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        resp = http.client.HTTPResponse(s, method='POST')
        resp.begin()
        body = resp.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        return h.Response(resp.status, resp.headers, body, parsed)
    finally:
        s.close()


def request_head(length=None, chunked=False, caller=everything, key='alpha'):
    lines = ['POST %s HTTP/1.1' % h.sign_path(key), 'Host: 127.0.0.1',
             'Content-Type: application/json', 'Authorization: Bearer ' + caller.token]
    if chunked:
        lines.append('Transfer-Encoding: chunked')
    else:
        lines.append('Content-Length: %d' % length)
    return ('\r\n'.join(lines) + '\r\n\r\n').encode()


def padded(n):
    """A valid signing body of exactly n bytes (whitespace padding)."""
    body = json.dumps(GOOD).encode()
    return body[:-1] + b' ' * (n - len(body)) + b'}'


class InvalidRequestTest(h.ApiAssertions, unittest.TestCase):
    BODIES = {
        'not JSON': b'hello',
        'truncated JSON': b'{"verification_code": "ABCDEF',
        'duplicate member': b'{"verification_code": "AB", "verification_code": "CD"}',
        'duplicate member, same value': b'{"verification_code": "AB", "verification_code": "AB"}',
        'unknown member': b'{"verification_code": "AB", "extra": 1}',
        'only an unknown member': b'{"code": "AB"}',
        'code is a number': b'{"verification_code": 123456}',
        'code is an array': b'{"verification_code": ["AB"]}',
        'code is null': b'{"verification_code": null}',
        'code is true': b'{"verification_code": true}',
        'code is an object': b'{"verification_code": {"v": "AB"}}',
        'missing field': b'{}',
        'empty body': b'',
        'JSON array at top': b'["ABCDEF"]',
        'JSON string at top': b'"ABCDEF"',
        'JSON null at top': b'null',
        'trailing data': b'{"verification_code": "AB"} x',
        'two documents': b'{"verification_code": "AB"}{"verification_code": "AB"}',
        'invalid UTF-8': b'{"verification_code": "AB\xff\xfe"}',
    }

    def test_invalid_request_bodies(self):
        for what, body in self.BODIES.items():
            with self.subTest(what):
                self.assertError(sign(body), 400, 'invalid_request')

    def test_invalid_request_on_rsa_key_too(self):
        self.assertError(sign(b'{"verification_code": 1}', key='beta'), 400, 'invalid_request')


class InvalidCodeTest(h.ApiAssertions, unittest.TestCase):
    CODES = {
        'empty': '',
        '65 characters': 'A' * 65,
        '65 hex characters': h.new_code(65),
        'slash': 'ABC/DEF',
        'equals': 'A=B',
        'newline': 'AB\nCD',
        'CR LF': 'AB\r\nCD',
        'trailing newline': 'ABCD\n',
        'non-ASCII letter': 'AB\u00e9',
        'full-width letters': '\uff21\uff22',
        'NUL': 'AB\u0000CD',
        'leading space': ' ABCD',
        'trailing space': 'ABCD ',
        'inner space': 'AB CD',
        'tab': 'AB\tCD',
        'hyphen': 'AB-CD',
        'underscore': 'AB_CD',
        'dot': 'AB.CD',
        'comma': 'CN=AB,O=x',
    }

    def test_invalid_codes(self):
        for what, code in self.CODES.items():
            for ascii_only in (True, False):
                body = json.dumps({'verification_code': code}, ensure_ascii=ascii_only)
                with self.subTest(what, escaped=ascii_only):
                    self.assertError(sign(body.encode('utf-8')), 400,
                                     'invalid_verification_code')

    def test_invalid_code_on_rsa_key(self):
        self.assertError(sign({'verification_code': 'A=B'}, key='beta'), 400,
                         'invalid_verification_code')

    def test_longest_and_shortest_still_fine(self):
        for code in ('A' * 64, 'a', '0'):
            with self.subTest(code=code):
                resp = sign({'verification_code': code})
                self.assertEqual(resp.status, 201, resp.body[:300])


class UnauthorizedTest(h.ApiAssertions, unittest.TestCase):
    ROUTES = [
        ('POST', h.sign_path('alpha'), GOOD),
        ('GET', '/v1/keys', None),
        ('GET', '/v1/keys/alpha', None),
        ('GET', '/v1/keys/alpha/certificate', None),
        # Unknown keys: no name leaks to a caller who has not authenticated.
        ('POST', h.sign_path('nosuch'), GOOD),
        ('GET', '/v1/keys/nosuch', None),
        ('GET', '/v1/keys/nosuch/certificate', None),
    ]

    def authorizations(self):
        return {
            'no header': None,
            'wrong token': 'Bearer ' + h.Caller('x', '*').token,
            'Basic scheme': 'Basic x',
            'Basic with a good token': 'Basic ' + everything.token,
            'Bearer alone': 'Bearer',
            'Bearer and a space': 'Bearer ',
            'good token with a suffix': 'Bearer ' + everything.token + 'x',
            'good token truncated': 'Bearer ' + everything.token[:-1],
            'the SHA-256 instead of the token': 'Bearer ' + everything.token_sha256,
            'very long token': 'Bearer ' + 'A' * 2000,
        }

    def test_every_authenticated_route(self):
        for method, path, body in self.ROUTES:
            for what, value in self.authorizations().items():
                headers = {} if value is None else {'Authorization': value}
                with self.subTest(route='%s %s' % (method, path), auth=what):
                    resp = h.request(daemon.port, method, path, body, headers=headers)
                    self.assertError(resp, 401, 'unauthorized')

    def test_healthz_needs_no_auth(self):
        resp = h.request(daemon.port, 'GET', '/healthz', headers={'Authorization': 'Basic x'})
        self.assertEqual(resp.status, 200)
        resp = h.request(daemon.port, 'GET', '/healthz')
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.json, {'status': 'ok'})


class ForbiddenAndNotFoundTest(h.ApiAssertions, unittest.TestCase):
    def key_routes(self, key):
        return [('POST', h.sign_path(key), GOOD), ('GET', '/v1/keys/' + key, None),
                ('GET', '/v1/keys/%s/certificate' % key, None)]

    def test_key_not_allowed(self):
        for method, path, body in self.key_routes('beta'):
            with self.subTest(route='%s %s' % (method, path)):
                self.assertError(call(method, path, body, caller=limited), 403, 'forbidden')

    def test_unknown_key_for_restricted_caller_is_forbidden(self):
        for method, path, body in self.key_routes('nosuch'):
            with self.subTest(route='%s %s' % (method, path)):
                self.assertError(call(method, path, body, caller=limited), 403, 'forbidden')

    def test_unknown_key_for_star_caller_is_not_found(self):
        for key in ('nosuch', 'no%20such', 'alpha.x'):
            for method, path, body in self.key_routes(key):
                with self.subTest(route='%s %s' % (method, path)):
                    self.assertError(call(method, path, body), 404, 'not_found')

    def test_unknown_paths(self):
        for path in ('/', '/v2/x', '/v1', '/v1/keys/alpha/other', '/v1/key',
                     '/v1/keys/alpha/verification-certificates/x', '/v1/keys/alpha/certificate/x',
                     '/healthz/x', '/v1/healthz'):
            with self.subTest(path=path):
                self.assertError(call('GET', path), 404, 'not_found')

    def test_restricted_caller_still_uses_its_key(self):
        resp = sign(GOOD, caller=limited)
        self.assertEqual(resp.status, 201, resp.body[:300])


class MethodNotAllowedTest(h.ApiAssertions, unittest.TestCase):
    CASES = [
        ('PUT', h.sign_path('alpha'), ['POST']),
        ('DELETE', h.sign_path('alpha'), ['POST']),
        ('GET', h.sign_path('alpha'), ['POST']),
        ('PATCH', h.sign_path('alpha'), ['POST']),
        ('POST', '/v1/keys', ['GET']),
        ('DELETE', '/v1/keys', ['GET']),
        ('POST', '/v1/keys/alpha', ['GET']),
        ('PUT', '/v1/keys/alpha/certificate', ['GET']),
    ]

    def test_authenticated_routes(self):
        for method, path, allow in self.CASES:
            body = GOOD if method in ('POST', 'PUT', 'PATCH') else None
            with self.subTest(route='%s %s' % (method, path)):
                self.assertAllow(call(method, path, body), allow)

    def test_post_healthz(self):
        self.assertAllow(h.request(daemon.port, 'POST', '/healthz', {}), ['GET'])
        self.assertAllow(h.request(daemon.port, 'DELETE', '/healthz'), ['GET'])


class PayloadTooLargeTest(h.ApiAssertions, unittest.TestCase):
    def test_4096_bytes_accepted(self):
        body = padded(4096)
        self.assertEqual(len(body), 4096)
        resp = sign(body)
        self.assertEqual(resp.status, 201, resp.body[:300])

    def test_4097_bytes(self):
        body = padded(4097)
        self.assertEqual(len(body), 4097)
        self.assertError(sign(body), 413, 'payload_too_large')

    def test_large_body(self):
        self.assertError(sign(padded(64 * 1024)), 413, 'payload_too_large')

    def test_answered_before_the_whole_body_is_sent(self):
        """Content-Length 100000, only 8 KiB sent: the answer comes anyway."""
        resp = raw_exchange([request_head(length=100000), b' ' * 8192], wait=10)
        self.assertError(resp, 413, 'payload_too_large')

    def test_chunked_body_checked_while_it_streams(self):
        chunk = b' ' * 2000
        parts = [request_head(chunked=True)] + \
            [b'%x\r\n%s\r\n' % (len(chunk), chunk)] * 3 + [b'0\r\n\r\n']
        resp = raw_exchange(parts)
        self.assertError(resp, 413, 'payload_too_large')


class UnsupportedMediaTypeTest(h.ApiAssertions, unittest.TestCase):
    def test_content_types(self):
        body = json.dumps(GOOD)
        for ctype in ('text/plain', None, 'application/x-www-form-urlencoded',
                      'application/xml', 'text/json', 'application/jsonx'):
            with self.subTest(content_type=ctype):
                self.assertError(sign(body, content_type=ctype), 415, 'unsupported_media_type')


class StillServingTest(h.ApiAssertions, unittest.TestCase):
    def test_good_request_after_bad_ones(self):
        conn = h.connect(daemon.port)
        try:
            bad = [
                lambda: sign(b'{', conn=conn),
                lambda: sign({'verification_code': 'A/B'}, conn=conn),
                lambda: sign(GOOD, caller=None, conn=conn),
                lambda: sign(GOOD, content_type='text/plain', conn=conn),
                lambda: sign(padded(5000), conn=conn),
            ]
            for b in bad:
                resp = b()
                self.assertIn(resp.status, (400, 401, 413, 415))
        finally:
            conn.close()
        resp = raw_exchange([request_head(length=100000), b' ' * 8192])
        self.assertEqual(resp.status, 413)
        # Garbage, then a hang-up: how the daemon refuses it is its own
        # business, as long as it keeps serving.
        for junk in (b'\x00\xffGARBAGE / HTTP/9.9\r\n\r\n', b'GET\r\n\r\n',
                     b'POST /v1/keys/alpha/verification-certificates HTTP/1.1\r\n'
                     b'Content-Length: -1\r\n\r\n'):
            with socket.create_connection(('127.0.0.1', daemon.port), timeout=5) as s:
                s.sendall(junk)
        # A caller that stalls half-way through its body does not hold up others.
        stalled = socket.create_connection(('127.0.0.1', daemon.port), timeout=5)
        try:
            stalled.sendall(request_head(length=100) + b'{"verif')
            code = h.new_code()
            resp = sign({'verification_code': code})
            self.assertEqual(resp.status, 201, resp.body[:300])
            self.assertEqual(resp.json['verification_code'], code)
        finally:
            stalled.close()
        self.assertTrue(daemon.alive())


if __name__ == '__main__':
    h.main()
