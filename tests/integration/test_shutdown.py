"""Nothing lost (issue 5, section 4).

SIGTERM while popsignd is under load: every request that got a 201 holds a
complete certificate that `openssl verify` accepts and that the audit trail
records; every other request got a whole JSON error or a clean close,
never half an answer; popsignd exits 0 promptly and the audit trail ends
with a whole line.

`popsign sign -o FILE` writes a temporary file beside FILE and renames it:
after success, after each kind of failure and after being killed mid-way,
the directory holds FILE complete or not at all (an existing FILE is left
as it was) and no stray temporary file.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import wire  # noqa: E402

KEYS = {'ec': 'ec256', 'rsa': 'rsa2048'}
CLIENTS = 8
LOAD_BEFORE_TERM = 1.5   # seconds of load before SIGTERM
EXIT_BOUND = 10          # seconds popsignd may take to exit after SIGTERM
API_CODES = {'invalid_request', 'invalid_verification_code', 'unauthorized', 'forbidden',
             'not_found', 'method_not_allowed', 'payload_too_large', 'unsupported_media_type',
             'rate_limited', 'token_unavailable', 'audit_unavailable', 'internal_error'}

token = None
caller = h.Caller('load', '*')


def setUpModule():
    global token
    token = h.Token(list(KEYS.values()))


def tearDownModule():
    if token is not None:
        token.cleanup()


def sign_request(key, code):
    body = json.dumps({'verification_code': code}).encode()
    return wire.request_bytes('POST', h.sign_path(key), [
        ('Authorization', 'Bearer ' + caller.token), ('Content-Type', 'application/json')], body)


class Outcome:
    def __init__(self, key, code):
        self.key = key
        self.code = code
        self.answer = None     # a wire.Answer
        self.failure = None    # 'refused', 'closed' (no byte of an answer), or a torn answer


def load(port, stop, outcomes, lock):
    """Signing requests one after another, each on its own connection,
    until stop is set or the daemon refuses connections."""
    i = 0
    while not stop.is_set():
        key = list(KEYS)[i % len(KEYS)]
        out = Outcome(key, h.new_code())
        i += 1
        try:
            with wire.Wire(port, timeout=20) as w:
                if w.send(sign_request(key, out.code)):
                    out.answer = w.read_response(timeout=20)
                else:
                    out.failure = 'closed'
        except ConnectionRefusedError:
            out.failure = 'refused'
        except wire.Closed:
            out.failure = 'closed'
        except ConnectionResetError:
            out.failure = 'closed'
        except (wire.Torn, wire.NoAnswer) as e:
            out.failure = 'torn: %s' % e
        with lock:
            outcomes.append(out)
        if out.failure == 'refused':
            return


class SigtermUnderLoadTest(h.ApiAssertions, unittest.TestCase):
    def test_sigterm_under_load(self):
        audit = token.path('shutdown-audit.log')
        keys = [h.key_section(k, token.uri(label), token.cert(label)) for k, label in KEYS.items()]
        conf = h.write_config(token.dir, keys=keys, callers=[caller], workers=4,
                              name='shutdown.conf', daemon_extra=[('audit_log', audit)])
        d = h.Daemon(conf, token.env).start()
        try:
            outcomes, rc, took = self.run_load(d)
        finally:
            d.kill()
        self.assertEqual(rc, 0, 'popsignd exited %r after SIGTERM; stderr:\n%s'
                         % (rc, d.stderr[-3000:]))
        self.assertLess(took, EXIT_BOUND)
        self.check_outcomes(outcomes)
        self.check_audit(audit, [o for o in outcomes if o.answer and o.answer.status == 201])

    def run_load(self, d):
        stop = threading.Event()
        outcomes, lock = [], threading.Lock()
        threads = [threading.Thread(target=load, args=(d.port, stop, outcomes, lock))
                   for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(LOAD_BEFORE_TERM)
        with lock:
            before = sum(1 for o in outcomes if o.answer and o.answer.status == 201)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(EXIT_BOUND + 5)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(30)
        self.assertGreater(before, 10, 'too little load before SIGTERM to prove anything')
        kinds = {}
        for o in outcomes:
            kind = o.failure or str(o.answer.status)
            kinds[kind] = kinds.get(kind, 0) + 1
        print('SIGTERM after %d issued; exit %r in %.2f s; outcomes %r'
              % (before, rc, took, sorted(kinds.items())), file=sys.stderr)
        return outcomes, rc, took

    def check_outcomes(self, outcomes):
        issued = []
        for o in outcomes:
            if o.failure:
                self.assertIn(o.failure, ('refused', 'closed'), 'a half answer: %s' % o.failure)
            elif o.answer.status == 201:
                issued.append(o)
            else:
                self.assertError(o.answer, o.answer.status, o.answer.json['error']['code']
                                 if isinstance(o.answer.json, dict) and
                                 isinstance(o.answer.json.get('error'), dict) else None)
                self.assertIn(o.answer.json['error']['code'], API_CODES)
        self.assertGreater(len(issued), 10)
        for key, label in KEYS.items():
            mine = [o for o in issued if o.key == key]
            paths = []
            for n, o in enumerate(mine):
                self.assertEqual(o.answer.media_type(), 'application/json')
                self.assertEqual(o.answer.json['verification_code'], o.code)
                path = token.path('shutdown-%s-%d.pem' % (key, n))
                with open(path, 'w') as f:
                    f.write(o.answer.json['certificate'])
                der = h.pem_to_der(o.answer.json['certificate'])
                self.assertEqual(h.der_subject_cn(h.der_tbs(der).subject), o.code)
                paths.append(path)
            bad, out, _ = h.openssl_verify(token.cert(label), paths)
            self.assertEqual(bad, [], out)

    def check_audit(self, path, issued):
        with open(path, 'rb') as f:
            data = f.read()
        self.assertTrue(data.endswith(b'\n'), 'torn last line in the audit log: %r'
                        % data[-120:])
        records = [json.loads(line) for line in data.splitlines()]
        serials = {r.get('serial') for r in records if r.get('outcome') == 'issued'}
        for o in issued:
            self.assertIn(o.answer.json['serial'], serials,
                          'a certificate was handed out without its audit record')


# --- popsign sign -o FILE -------------------------------------------------------

def popsign(args, env, timeout=60):
    return subprocess.run([h.program('POPSIGN')] + args, env=env, capture_output=True,
                          timeout=timeout)


class Stall:
    """A loopback server that reads a request, sends the head of a 201 and
    half its body, then waits: a daemon that dies mid-answer."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)
        conn.recv(65536)
        body = b'{"key": "ec", "verification_code": "ABCD", "certificate": "-----BEGIN CERT'
        conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n'
                     b'Content-Length: 2000\r\n\r\n' + body)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class AtomicOutputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        keys = [h.key_section('ec', token.uri('ec256'), token.cert('ec256'))]
        conf = h.write_config(token.dir, keys=keys, callers=[caller], name='atomic.conf')
        cls.daemon = h.Daemon(conf, token.env).start()
        cls.token_file = token.write_file('client.token', caller.token + '\n')

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='out-', dir=token.dir)
        self.out = os.path.join(self.dir, 'cert.pem')

    def env(self, port=None):
        env = dict(os.environ, POPSIGN_TOKEN_FILE=self.token_file)
        env['POPSIGN_URL'] = 'http://127.0.0.1:%d' % (port or self.daemon.port)
        return env

    def sign(self, code, port=None, extra=()):
        return popsign(['sign', 'ec', code, '-o', self.out] + list(extra), self.env(port))

    def assertOnly(self, names):
        self.assertEqual(sorted(os.listdir(self.dir)), sorted(names),
                         'stray files beside the output')

    def test_success_leaves_only_the_file(self):
        code = h.new_code()
        p = self.sign(code)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertOnly(['cert.pem'])
        bad, out, _ = h.openssl_verify(token.cert('ec256'), [self.out])
        self.assertEqual(bad, [], out)
        self.assertEqual(h.der_subject_cn(h.der_tbs(h.pem_to_der(h.read_text(self.out)))
                                          .subject), code)

    def test_der_success_leaves_only_the_file(self):
        p = self.sign(h.new_code(), extra=['--der'])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertOnly(['cert.pem'])
        with open(self.out, 'rb') as f:
            h.der_tbs(f.read())

    def unused_port(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def check_failure(self, expect_rc, **kw):
        """A failing sign: exit code expect_rc, no file made, and an existing
        file left byte for byte."""
        p = self.sign(kw.get('code', h.new_code()), port=kw.get('port'))
        self.assertEqual(p.returncode, expect_rc, p.stderr)
        self.assertOnly([])
        with open(self.out, 'w') as f:
            f.write('previous content\n')
        p = self.sign(kw.get('code', h.new_code()), port=kw.get('port'))
        self.assertEqual(p.returncode, expect_rc, p.stderr)
        self.assertOnly(['cert.pem'])
        self.assertEqual(h.read_text(self.out), 'previous content\n')

    def test_daemon_unreachable(self):
        self.check_failure(3, port=self.unused_port())

    def test_daemon_refuses(self):
        self.check_failure(5, code='not/a/code')

    def test_killed_mid_answer(self):
        """SIGKILL while the answer is half in: no file, no temporary."""
        for existing in (False, True):
            with self.subTest(existing_file=existing):
                if existing:
                    with open(self.out, 'w') as f:
                        f.write('previous content\n')
                stall = Stall()
                try:
                    proc = subprocess.Popen(
                        [h.program('POPSIGN'), 'sign', 'ec', 'ABCD', '-o', self.out],
                        env=self.env(stall.port), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
                    time.sleep(1)
                    self.assertIsNone(proc.poll(), 'popsign did not wait for the answer')
                    proc.kill()
                    proc.wait()
                finally:
                    stall.close()
                self.assertOnly(['cert.pem'] if existing else [])
                if existing:
                    self.assertEqual(h.read_text(self.out), 'previous content\n')

    def test_truncated_answer(self):
        """The connection drops mid-answer: an error, no file, no temporary."""
        stall = Stall()
        try:
            proc = subprocess.Popen([h.program('POPSIGN'), 'sign', 'ec', 'ABCD', '-o', self.out],
                                    env=self.env(stall.port), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            deadline = time.monotonic() + 5
            while not stall.conns and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
        finally:
            stall.close()
        rc = proc.wait(30)
        err = proc.stderr.read()
        proc.stderr.close()
        self.assertNotEqual(rc, 0, err)
        self.assertOnly([])


if __name__ == '__main__':
    h.main()
