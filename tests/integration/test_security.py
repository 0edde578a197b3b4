"""Issue 3: privilege separation, Unix-socket callers, limits, the audit
trail, reload, socket activation and systemd notifications, against a real
popsignd on a real SoftHSM2 token."""
import inspect
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

# A PIN that cannot turn up in memory by chance.
PIN = 'pin-9f2c4e7d1b83a5'
KEYS = ['ec256', 'rsa2048']


def make_token():
    os.environ['POPSIGN_TEST_PIN'] = PIN
    try:
        token = h.Token(KEYS)
    finally:
        del os.environ['POPSIGN_TEST_PIN']
    token.env.pop('POPSIGN_TEST_PIN', None)
    return token


def key_sections(token, keys=KEYS):
    return [h.key_section(k, token.uri(k), token.cert(k)) for k in keys]


def signer_pid(daemon):
    """The signer: the front end's one child process (forked by any thread)."""
    kids = []
    task_dir = '/proc/%d/task' % daemon.proc.pid
    for task in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, task, 'children')) as f:
                kids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue
    if len(kids) != 1:
        raise AssertionError('expected one signer child, found %r' % kids)
    return kids[0]


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def memory_contains(pid, needle):
    """Whether needle is anywhere in pid's readable memory (root only)."""
    with open('/proc/%d/maps' % pid) as maps, open('/proc/%d/mem' % pid, 'rb', 0) as mem:
        for line in maps:
            fields = line.split()
            if 'r' not in fields[1] or (len(fields) > 5 and fields[5].startswith('[v')):
                continue
            start, end = (int(x, 16) for x in fields[0].split('-'))
            # Terabyte reservations (AddressSanitizer's shadow) hold no data
            # of ours; anything a process really wrote is in smaller ones.
            if end - start > 1 << 32:
                continue
            if region_contains(mem, start, end, needle):
                return True
    return False


def region_contains(mem, start, end, needle, chunk=1 << 20):
    """Reads [start, end) in chunks that overlap by len(needle) - 1, so that
    huge mappings (AddressSanitizer's shadow) need no huge buffer."""
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        try:
            mem.seek(pos)
            data = mem.read(n + len(needle) - 1 if pos + n < end else n)
        except (OSError, ValueError, OverflowError):
            return False
        if needle in data:
            return True
        pos += n
    return False


def sign(port, key, token, code=None, host='127.0.0.1'):
    return h.request(port, 'POST', h.sign_path(key), {'verification_code': code or h.new_code()},
                     token=token, host=host)


def audit_lines(path):
    with open(path, 'rb') as f:
        data = f.read()
    if data and not data.endswith(b'\n'):
        raise AssertionError('torn last line in the audit log: %r' % data[-80:])
    return [json.loads(line) for line in data.splitlines()]


class UnixHTTP:
    """HTTP/1.1 over a Unix socket, one request per connection."""

    @staticmethod
    def request(path, method, target, body=None, headers=None, timeout=10):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        data = json.dumps(body).encode() if body is not None else b''
        lines = ['%s %s HTTP/1.1' % (method, target), 'Host: localhost',
                 'Connection: close', 'Content-Length: %d' % len(data)]
        if body is not None:
            lines.append('Content-Type: application/json')
        lines += ['%s: %s' % kv for kv in (headers or {}).items()]
        s.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode() + data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
        s.close()
        head, _, payload = b''.join(chunks).partition(b'\r\n\r\n')
        status = int(head.split(b' ', 2)[1])
        return status, head.decode(), payload


class SecurityBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.token = make_token()
        cls.dir = tempfile.mkdtemp(prefix='popsign-sec-', dir=cls.token.dir)
        cls.caller = h.Caller('caller', '*')

    @classmethod
    def tearDownClass(cls):
        cls.token.cleanup()

    def start(self, name, callers=None, **kw):
        conf = h.write_config(self.dir, keys=key_sections(self.token),
                              callers=callers or [self.caller], name=name, **kw)
        d = h.Daemon(conf, self.token.env)
        d.start()
        self.addCleanup(d.kill)
        return d


class PrivilegeSeparationTest(SecurityBase):
    def test_front_end_has_no_module_and_no_pin(self):
        d = self.start('privsep.conf')
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        front, signer = d.proc.pid, signer_pid(d)
        with open('/proc/%d/maps' % front) as f:
            front_maps = f.read()
        with open('/proc/%d/maps' % signer) as f:
            signer_maps = f.read()
        self.assertIn('libsofthsm2', signer_maps, 'the signer must hold the module')
        self.assertNotIn('libsofthsm2', front_maps)
        # The signer is an executable of its own, without the HTTP server and
        # the TLS library that comes with it.
        with open('/proc/%d/comm' % signer) as f:
            self.assertEqual(f.read().strip(), 'popsignd-signer')
        self.assertIn('libmicrohttpd', front_maps)
        for lib in ('libmicrohttpd', 'libgnutls', 'libjansson'):
            self.assertNotIn(lib, signer_maps, 'the signer maps %s' % lib)
        # The scan finds the PIN where it is (the signer keeps it for logins),
        # so not finding it in the front end means something.
        self.assertTrue(memory_contains(signer, PIN.encode()))
        self.assertFalse(memory_contains(front, PIN.encode()),
                         'the front end holds the PIN in memory')
        for pid in (front, signer):
            with open('/proc/%d/status' % pid) as f:
                self.assertIn('\nNoNewPrivs:\t1', f.read())
        d.stop()

    def test_signer_killed_then_restarted(self):
        d = self.start('restart.conf')
        front, first = d.proc.pid, signer_pid(d)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        os.kill(first, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = sign(d.port, 'rsa2048', self.caller.token)
            statuses.append(r.status)
            if r.status == 201:
                break
            self.assertEqual(r.status, 503, r.body)
            self.assertEqual(r.json['error']['code'], 'token_unavailable')
            self.assertIn('Retry-After', r.headers)
            time.sleep(0.02)
        self.assertEqual(statuses[-1], 201, 'no recovery: %r' % statuses)
        self.assertEqual(d.proc.pid, front)
        self.assertTrue(d.alive())
        self.assertNotEqual(signer_pid(d), first)
        self.assertIn('the signer process stopped', d.stderr)
        d.stop()


    def test_restarted_signer_is_the_file_found_at_start(self):
        # A package upgrade replaces popsignd-signer while popsignd runs: a
        # signer restarted afterwards must still be the one popsignd started
        # with (the new one may speak another version of the messages).
        bin_dir = tempfile.mkdtemp(prefix='bin-', dir=self.dir)
        daemon = shutil.copy(h.popsignd_path(), bin_dir)
        signer_exe = shutil.copy(os.path.join(os.path.dirname(h.popsignd_path()),
                                              'popsignd-signer'), bin_dir)
        with mock.patch.dict(os.environ, {'POPSIGND': daemon}):
            d = self.start('upgrade.conf')
        first = signer_pid(d)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        os.unlink(signer_exe)
        with open(signer_exe, 'w') as f:
            f.write('#!/bin/sh\nexit 1\n')
        os.chmod(signer_exe, 0o755)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            status = sign(d.port, 'ec256', self.caller.token).status
            if status == 201:
                break
            time.sleep(0.05)
        self.assertEqual(status, 201, 'the signer did not come back:\n' + d.stderr)
        second = signer_pid(d)
        self.assertNotEqual(second, first)
        with open('/proc/%d/comm' % second) as f:
            self.assertEqual(f.read().strip(), 'popsignd-signer')
        d.stop()


class UnixSocketTest(SecurityBase):
    def test_callers_by_uid(self):
        # Other users must reach the socket: a directory anyone may enter.
        sock_dir = tempfile.mkdtemp(prefix='popsign-sock-')
        self.addCleanup(lambda: os.path.isdir(sock_dir) and os.rmdir(sock_dir))
        os.chmod(sock_dir, 0o755)
        sock = os.path.join(sock_dir, 'popsignd.sock')
        python = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
        root = ('client by-uid', [('uid', '0'), ('keys', 'ec256')])
        nobody = ('client nobody', [('uid', '65534'), ('gid', '65534'), ('keys', 'rsa2048')])
        d = self.start('unix.conf', listen='127.0.0.1:0, unix:' + sock,
                       daemon_extra=[('socket_mode', '0666'), ('socket_group', '65534')],
                       sections=[root, nobody])
        self.assertTrue(wait_for(lambda: os.path.exists(sock)))
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o666)
        self.assertEqual(os.stat(sock).st_gid, 65534)
        code = h.new_code()
        status, head, body = UnixHTTP.request(sock, 'POST', h.sign_path('ec256'),
                                              {'verification_code': code})
        self.assertEqual(status, 201, body)
        self.assertEqual(json.loads(body)['verification_code'], code)
        # uid 0 may not use rsa2048: that is the nobody client's key.
        status, _, body = UnixHTTP.request(sock, 'POST', h.sign_path('rsa2048'),
                                           {'verification_code': code})
        self.assertEqual(status, 403, body)
        # A caller running as uid 65534 (nobody) is recognised as 'nobody'.
        # The script carries UnixHTTP's source: the checkout may be a directory
        # that user cannot read (a clone under a mktemp -d directory, 0700).
        script = ('import json, socket\n' + inspect.getsource(UnixHTTP) +
                  's, _, b = UnixHTTP.request(%r, "POST", %r, {"verification_code": "AB12"})\n'
                  'print(s)\n' % (sock, h.sign_path('rsa2048')))
        out = subprocess.run([python, '-c', script], user=65534, group=65534,
                             capture_output=True, timeout=30, cwd='/')
        self.assertEqual(out.stdout.decode().strip(), '201', out.stderr.decode())
        # The same socket without a matching uid: 401 on every signing route.
        out = subprocess.run([python, '-c', script.replace('"AB12"', '"AB13"')],
                             user=65533, group=65533, capture_output=True, timeout=30, cwd='/')
        self.assertEqual(out.stdout.decode().strip(), '401', out.stderr.decode())
        # A bearer token still works on the Unix socket.
        status, _, body = UnixHTTP.request(sock, 'GET', '/v1/keys', headers={
            'Authorization': 'Bearer ' + self.caller.token})
        self.assertEqual(status, 200, body)
        d.stop()
        self.assertFalse(os.path.exists(sock), 'the socket file outlived the daemon')


class LimitsTest(SecurityBase):
    def test_rate_limited_with_retry_after(self):
        slow = h.Caller('slow', '*')
        d = self.start('rate.conf', callers=[self.caller, slow],
                       sections=[], limits=(('rate', '1/m'), ('burst', '3'),
                                            ('auth_failures', '1000')))
        got = [sign(d.port, 'ec256', slow.token).status for _ in range(3)]
        self.assertEqual(got, [201, 201, 201])
        r = sign(d.port, 'ec256', slow.token)
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(r.json['error']['code'], 'rate_limited')
        self.assertGreaterEqual(int(r.headers['Retry-After']), 1)
        self.assertLessEqual(int(r.headers['Retry-After']), 60)
        # Buckets are per client.
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        d.stop()

    def test_auth_failures_slowed_down(self):
        d = self.start('authfail.conf', limits=(('auth_failures', '3'),))
        for _ in range(3):
            self.assertEqual(sign(d.port, 'ec256', 'wrong-token').status, 401)
        r = sign(d.port, 'ec256', 'wrong-token')
        self.assertEqual(r.status, 429, r.body)
        self.assertGreaterEqual(int(r.headers['Retry-After']), 1)
        # Even the right token waits: the peer, not the token, is slowed down.
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 429)
        d.stop()


class ConnectionLimitTest(SecurityBase):
    def test_idle_connections_are_limited_and_dropped(self):
        d = self.start('conns.conf', workers=1,
                       daemon_extra=[('max_connections', '4'), ('connection_timeout', '2')])
        idle = []
        for _ in range(8):
            s = socket.create_connection(('127.0.0.1', d.port), timeout=5)
            s.sendall(b'GET /healthz HTTP/1.1\r\n')     # and never another byte
            idle.append(s)

        def closed(s):
            try:
                s.settimeout(0.05)
                return s.recv(1) == b''
            except socket.timeout:
                return False
            except OSError:
                return True

        # Past max_connections the rest wait in the kernel's backlog; every
        # silent one is dropped after connection_timeout, then the next ...
        t0 = time.monotonic()
        self.assertTrue(wait_for(lambda: all(closed(s) for s in idle), timeout=15))
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)
        # ... and the daemon serves again.
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        for s in idle:
            s.close()
        d.stop()

    def test_header_size_limit(self):
        d = self.start('headers.conf', daemon_extra=[('max_header_size', '2048')])
        big = {'X-Padding': 'a' * 8192}
        r = h.request(d.port, 'GET', '/healthz', headers=big)
        self.assertEqual(r.status, 431)
        self.assertEqual(h.request(d.port, 'GET', '/healthz', headers={'X-Padding': 'a' * 512})
                         .status, 200)
        d.stop()


class AuditTest(SecurityBase):
    def test_every_issue_and_denial_recorded(self):
        log = os.path.join(self.dir, 'audit-basic.log')
        d = self.start('audit.conf', daemon_extra=[('audit_log', log)])
        self.assertEqual(os.stat(log).st_mode & 0o777, 0o640)
        ok = sign(d.port, 'ec256', self.caller.token, code='ABCDEF0123')
        self.assertEqual(ok.status, 201)
        self.assertEqual(sign(d.port, 'ec256', 'wrong').status, 401)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token, code='bad/code').status, 400)
        ctx = h.request(d.port, 'POST', h.sign_path('rsa2048'),
                        {'verification_code': 'C0DE', 'context': '/subscriptions/x/dps'},
                        token=self.caller.token)
        self.assertEqual(ctx.status, 201)
        lines = audit_lines(log)
        self.assertEqual([l['outcome'] for l in lines], ['issued', 'denied', 'denied', 'issued'])
        issued = lines[0]
        self.assertRegex(issued['time'], r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$')
        self.assertEqual(issued['client'], 'caller')
        self.assertEqual(issued['key'], 'ec256')
        self.assertEqual(issued['verification_code'], 'ABCDEF0123')
        self.assertEqual(issued['serial'], ok.json['serial'])
        self.assertEqual(issued['sha256_fingerprint'], ok.json['sha256_fingerprint'])
        self.assertEqual(issued['not_after'], ok.json['not_after'])
        self.assertRegex(issued['peer'], r'^127\.0\.0\.1:\d+$')
        self.assertIsInstance(issued['request_id'], int)
        self.assertEqual(lines[1]['error'], 'unauthorized')
        self.assertNotIn('client', lines[1])
        self.assertEqual(lines[2]['error'], 'invalid_verification_code')
        self.assertEqual(lines[3]['context'], '/subscriptions/x/dps')
        ids = [l['request_id'] for l in lines]
        self.assertEqual(len(set(ids)), len(ids))
        # SIGHUP reopens the file: rotation.
        os.rename(log, log + '.1')
        d.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: os.path.exists(log)))
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        self.assertEqual(len(audit_lines(log)), 1)
        self.assertEqual(len(audit_lines(log + '.1')), 4)
        d.stop()

    def test_reload_moves_the_audit_log(self):
        first = os.path.join(self.dir, 'audit-first.log')
        second = os.path.join(self.dir, 'audit-second.log')

        def write(extra):
            return h.write_config(self.dir, keys=key_sections(self.token), callers=[self.caller],
                                  name='move.conf', daemon_extra=extra)

        d = h.Daemon(write([('audit_log', first)]), self.token.env).start()
        self.addCleanup(d.kill)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        write([('audit_log', second)])
        d.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: 'SIGHUP: reloaded' in d.stderr), d.stderr)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        self.assertEqual(len(audit_lines(first)), 1)
        self.assertEqual(len(audit_lines(second)), 1)
        # Turning the audit trail off is not something a reload may do.
        write([])
        d.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: 'needs a restart' in d.stderr), d.stderr)
        self.assertEqual(sign(d.port, 'ec256', self.caller.token).status, 201)
        self.assertEqual(len(audit_lines(second)), 2)
        d.stop()

    def test_unwritable_audit_fails_closed(self):
        log = os.path.join(self.dir, 'audit-full.log')
        with open(log, 'wb') as f:
            f.write(b'{"padding": true}\n' * 100)
        os.chmod(log, 0o640)
        limit = os.path.getsize(log) + 100   # not room for one more record

        def small_files():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        conf = h.write_config(self.dir, keys=key_sections(self.token), callers=[self.caller],
                              name='full.conf', daemon_extra=[('audit_log', log)])
        d = h.Daemon(conf, self.token.env)
        popen = subprocess.Popen
        subprocess.Popen = lambda *a, **kw: popen(*a, preexec_fn=small_files, **kw)
        try:
            d.start()
        finally:
            subprocess.Popen = popen
        self.addCleanup(d.kill)
        r = sign(d.port, 'ec256', self.caller.token)
        self.assertEqual(r.status, 503, r.body)
        self.assertEqual(r.json['error']['code'], 'audit_unavailable')
        self.assertNotIn(b'BEGIN CERTIFICATE', r.body)
        self.assertEqual(len(audit_lines(log)), 100, 'a partial record was left behind')
        d.stop()

    def test_sigkill_under_load_loses_no_record(self):
        log = os.path.join(self.dir, 'audit-kill.log')
        d = self.start('kill.conf', daemon_extra=[('audit_log', log)], workers=4)
        received, lock, stop = [], threading.Lock(), threading.Event()

        def client():
            while not stop.is_set():
                try:
                    r = sign(d.port, 'ec256', self.caller.token)
                except OSError:
                    return
                if r.status == 201:
                    with lock:
                        received.append(r.json['serial'])

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        self.assertTrue(wait_for(lambda: len(received) >= 50, timeout=30))
        d.proc.kill()
        stop.set()
        for t in threads:
            t.join(30)
        serials = {l['serial'] for l in audit_lines(log) if l['outcome'] == 'issued'}
        missing = [s for s in received if s not in serials]
        self.assertEqual(missing, [], 'certificates handed out without an audit record')


class ReloadTest(SecurityBase):
    def test_sighup_good_and_bad(self):
        only_ec = h.write_config(self.dir, keys=key_sections(self.token, ['ec256']),
                                 callers=[self.caller], name='reload.conf')
        d = h.Daemon(only_ec, self.token.env).start()
        self.addCleanup(d.kill)
        names = lambda: [k['name'] for k in h.request(d.port, 'GET', '/v1/keys',
                                                        token=self.caller.token).json['keys']]
        self.assertEqual(names(), ['ec256'])
        self.assertEqual(sign(d.port, 'rsa2048', self.caller.token).status, 404)
        # A good new config: the RSA key appears, without a restart.
        h.write_config(self.dir, keys=key_sections(self.token), callers=[self.caller],
                       name='reload.conf')
        d.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: names() == ['ec256', 'rsa2048']), d.stderr)
        self.assertEqual(sign(d.port, 'rsa2048', self.caller.token).status, 201)
        # A bad one is refused with FILE:LINE and the old one keeps serving.
        with open(only_ec, 'a') as f:
            f.write('[daemon]\nbogus = 1\n')
        d.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: 'keeping the old configuration' in d.stderr), d.stderr)
        self.assertRegex(d.stderr, re.escape(only_ec) + r':\d+: ')
        self.assertEqual(sign(d.port, 'rsa2048', self.caller.token).status, 201)
        self.assertEqual(names(), ['ec256', 'rsa2048'])
        d.stop()


class SystemdTest(SecurityBase):
    def test_socket_activation_and_notify(self):
        notify_path = os.path.join(self.dir, 'notify.sock')
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(20)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(('127.0.0.1', 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        # The config asks for another address: socket activation must win.
        conf = h.write_config(self.dir, keys=key_sections(self.token), callers=[self.caller],
                              name='activated.conf', listen='127.0.0.1:1')
        env = dict(self.token.env, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC='400000')
        fd = listener.fileno()
        proc = subprocess.Popen(
            ['sh', '-c', 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -c "$1" 3<&%d' % fd,
             h.popsignd_path(), conf], env=env, pass_fds=[fd],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        messages = []
        while not any('READY=1' in m for m in messages):
            messages.append(notify.recv(4096).decode())
        listener.close()
        self.assertEqual(sign(port, 'ec256', self.caller.token).status, 201)
        while not any('WATCHDOG=1' in m for m in messages):
            messages.append(notify.recv(4096).decode())
        proc.send_signal(signal.SIGHUP)
        while not any('RELOADING=1' in m for m in messages):
            messages.append(notify.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while not any('STOPPING=1' in m for m in messages):
            messages.append(notify.recv(4096).decode())
        _, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, err.decode())
        self.assertIn('listening on 127.0.0.1:%d' % port, err.decode())
        self.assertNotIn('127.0.0.1:1\n', err.decode())
        notify.close()


if __name__ == '__main__':
    unittest.main(verbosity=2)
