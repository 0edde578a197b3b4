"""popsign's daemon commands and exit codes against a real popsignd on a real
SoftHSM2 token: token-new, keys, ca-cert, sign, over TCP and a Unix socket."""
import hashlib
import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KEYS = ['ec256', 'rsa2048']
OK, USAGE, UNREACHABLE, AUTH, BAD_INPUT, DAEMON_ERROR, OUTPUT = 0, 2, 3, 4, 5, 6, 7


def popsign_path():
    return h.program('POPSIGN')


class ClientTest(unittest.TestCase, h.ApiAssertions):
    @classmethod
    def setUpClass(cls):
        cls.token = h.Token(KEYS)
        cls.dir = tempfile.mkdtemp(prefix='client-', dir=cls.token.dir)
        cls.sock_dir = tempfile.mkdtemp(prefix='popsign-client-sock-')
        cls.sock = os.path.join(cls.sock_dir, 'popsignd.sock')
        # A caller made by the client itself: token-new writes the file and
        # prints the line for the daemon's config.
        cls.token_file = os.path.join(cls.dir, 'caller.token')
        out = subprocess.run([popsign_path(), 'token-new', '-o', cls.token_file],
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        cls.token_line = out.stdout.decode().strip()
        cls.limited = h.Caller('limited', ['rsa2048'])
        sections = [('client mine', [tuple(x.strip() for x in cls.token_line.split('=')),
                                     ('keys', '*')]),
                    ('client by-uid', [('uid', str(os.getuid())), ('keys', 'ec256')])]
        conf = h.write_config(cls.dir, keys=[h.key_section(k, cls.token.uri(k), cls.token.cert(k))
                                             for k in KEYS],
                              callers=[cls.limited], sections=sections,
                              listen='127.0.0.1:0, unix:' + cls.sock)
        cls.daemon = h.Daemon(conf, cls.token.env).start()
        cls.url = 'http://127.0.0.1:%d' % cls.daemon.port

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.token.cleanup()
        os.rmdir(cls.sock_dir)

    def popsign(self, *args, token_file=None, url=None, env=None, expect=OK):
        e = {k: v for k, v in os.environ.items() if not k.startswith('POPSIGN_')}
        e.update(env or {})
        cmd = [popsign_path(), '--url', url or self.url]
        if token_file is not False:
            cmd += ['--token-file', token_file or self.token_file]
        p = subprocess.run(cmd + list(args), capture_output=True, timeout=60, env=e)
        self.assertEqual(p.returncode, expect, 'popsign %s: exit %d, stderr: %s'
                         % (' '.join(args), p.returncode, p.stderr.decode()))
        return p

    # --- token-new ---------------------------------------------------------

    def test_token_new(self):
        self.assertRegex(self.token_line, r'^token_sha256 = [0-9a-f]{64}$')
        with open(self.token_file, 'rb') as f:
            tok = f.read().strip()
        self.assertEqual(len(tok), 64)
        self.assertEqual(self.token_line.split()[-1], hashlib.sha256(tok).hexdigest())
        self.assertEqual(stat.S_IMODE(os.stat(self.token_file).st_mode), 0o600)
        # Never overwritten without --force, and the token is never printed.
        p = self.popsign('token-new', '-o', self.token_file, token_file=False, expect=OUTPUT)
        self.assertNotIn(tok, p.stdout + p.stderr)
        with open(self.token_file, 'rb') as f:
            self.assertEqual(f.read().strip(), tok)
        other = os.path.join(self.dir, 'forced.token')
        self.popsign('token-new', '-o', other, token_file=False)
        first = open(other).read()
        self.popsign('token-new', '-o', other, '--force', token_file=False)
        self.assertNotEqual(open(other).read(), first)

    # --- keys, ca-cert, sign -----------------------------------------------

    def test_keys_table_and_json(self):
        p = self.popsign('keys')
        lines = p.stdout.decode().splitlines()
        self.assertEqual(lines[0].split(), ['NAME', 'ALGORITHM', 'SUBJECT', 'SHA1-THUMBPRINT',
                                            'EXPIRES'])
        self.assertTrue(any(l.startswith('ec256 ') and 'EC-P256' in l for l in lines))
        self.assertTrue(any(l.startswith('rsa2048 ') and 'RSA-2048' in l for l in lines))
        doc = json.loads(self.popsign('keys', '--json').stdout)
        self.assertEqual([k['name'] for k in doc['keys']], KEYS)
        fp = h.run(['openssl', 'x509', '-in', self.token.cert('ec256'), '-noout', '-fingerprint',
                    '-sha1']).stdout.decode().split('=')[1].strip().replace(':', '')
        self.assertIn(fp, p.stdout.decode())

    def test_ca_cert(self):
        out = os.path.join(self.dir, 'ca.pem')
        self.popsign('ca-cert', 'rsa2048', '-o', out)
        self.assertEqual(h.pem_to_der(open(out).read()),
                         h.pem_to_der(open(self.token.cert('rsa2048')).read()))
        p = self.popsign('ca-cert', 'ec256')
        self.assertEqual(h.pem_to_der(p.stdout.decode()),
                         h.pem_to_der(open(self.token.cert('ec256')).read()))

    def test_sign_pem_der_json(self):
        code = h.new_code()
        for key in KEYS:
            pem = os.path.join(self.dir, 'v-%s.pem' % key)
            p = self.popsign('sign', key, code, '-o', pem)
            self.assertIn('CN=' + code, p.stderr.decode())
            bad, out, _ = h.openssl_verify(self.token.cert(key), [pem])
            self.assertEqual(bad, [], out)
            self.assertEqual(h.cert_info(pem)['subject'], 'CN=' + code)
        der = os.path.join(self.dir, 'v.der')
        self.popsign('sign', 'ec256', code, '--der', '-o', der)
        subj = h.run(['openssl', 'x509', '-inform', 'DER', '-in', der, '-noout', '-subject',
                      '-nameopt', 'RFC2253']).stdout.decode().strip()
        self.assertEqual(subj, 'subject=CN=' + code)
        doc = json.loads(self.popsign('sign', 'rsa2048', code, '--json').stdout)
        self.assertEqual(doc['verification_code'], code)
        self.assertIn('BEGIN CERTIFICATE', doc['certificate'])
        self.assertIn('BEGIN CERTIFICATE', self.popsign('sign', 'ec256', code).stdout.decode())

    def test_environment_variables(self):
        p = self.popsign('keys', url=None, token_file=False,
                         env={'POPSIGN_URL': self.url, 'POPSIGN_TOKEN_FILE': self.token_file})
        self.assertIn('ec256', p.stdout.decode())

    # --- a Unix socket -------------------------------------------------------

    def test_unix_socket_by_uid_and_by_token(self):
        url = 'unix:' + self.sock
        # No token at all: popsignd knows this caller by its uid ('by-uid': ec256 only).
        home = tempfile.mkdtemp(dir=self.dir)
        env = {'HOME': home, 'XDG_CONFIG_HOME': home}
        p = self.popsign('sign', 'ec256', 'AB12', url=url, token_file=False, env=env)
        self.assertIn('BEGIN CERTIFICATE', p.stdout.decode())
        self.popsign('sign', 'rsa2048', 'AB12', url=url, token_file=False, env=env, expect=AUTH)
        # A token still works on the socket, and wins over the uid.
        p = self.popsign('sign', 'rsa2048', 'AB12', url=url)
        self.assertIn('BEGIN CERTIFICATE', p.stdout.decode())
        # A token named but missing is an error, socket or not.
        self.popsign('keys', url=url, token_file=os.path.join(self.dir, 'nope'), expect=AUTH)

    # --- exit codes ----------------------------------------------------------

    def test_usage_errors(self):
        self.popsign(expect=USAGE)
        self.popsign('frobnicate', expect=USAGE)
        self.popsign('sign', 'ec256', expect=USAGE)
        self.popsign('keys', '--der', expect=USAGE)
        self.popsign('keys', url='https://127.0.0.1:1', expect=USAGE)
        self.popsign('keys', url='unix:relative.sock', expect=USAGE)

    def test_unreachable(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()   # nothing listens there now
        p = self.popsign('keys', url='http://127.0.0.1:%d' % port, expect=UNREACHABLE)
        self.assertIn('popsign', p.stderr.decode())
        self.popsign('keys', url='unix:' + os.path.join(self.dir, 'no.sock'), expect=UNREACHABLE)

    def test_authentication_refused(self):
        wrong = os.path.join(self.dir, 'wrong.token')
        with open(wrong, 'w') as f:
            f.write('not-the-right-token\n')
        os.chmod(wrong, 0o600)
        p = self.popsign('keys', token_file=wrong, expect=AUTH)
        self.assertIn('unauthorized', p.stderr.decode())
        open_file = os.path.join(self.dir, 'open.token')
        with open(open_file, 'w') as f:
            f.write('x\n')
        os.chmod(open_file, 0o644)
        p = self.popsign('keys', token_file=open_file, expect=AUTH)
        self.assertIn('chmod', p.stderr.decode() + p.stdout.decode())
        self.popsign('keys', token_file=os.path.join(self.dir, 'missing'), expect=AUTH)
        # 403: a key this caller may not use.
        limited = os.path.join(self.dir, 'limited.token')
        with open(limited, 'w') as f:
            f.write(self.limited.token)
        os.chmod(limited, 0o600)
        p = self.popsign('sign', 'ec256', 'AB12', token_file=limited, expect=AUTH)
        self.assertIn('forbidden', p.stderr.decode())

    def test_bad_input(self):
        for code in ['', 'A' * 65, 'AB/CD', 'AB CD', 'AB\nCD', 'ABÉ']:
            p = self.popsign('sign', 'ec256', code, expect=BAD_INPUT)
            self.assertIn('code', p.stderr.decode())
        self.popsign('sign', 'no-such-key', 'AB12', expect=BAD_INPUT)     # 404 for a '*' caller
        self.popsign('ca-cert', 'bad/key', expect=BAD_INPUT)

    def test_no_partial_output(self):
        out_dir = tempfile.mkdtemp(dir=self.dir)
        target = os.path.join(out_dir, 'v.pem')
        self.popsign('sign', 'no-such-key', 'AB12', '-o', target, expect=BAD_INPUT)
        self.assertEqual(os.listdir(out_dir), [])
        self.popsign('sign', 'ec256', 'AB12', '-o', target)
        self.assertEqual(os.listdir(out_dir), ['v.pem'])
        # An unwritable place: exit 7, nothing left behind.
        self.popsign('sign', 'ec256', 'AB12', '-o', os.path.join(out_dir, 'no', 'dir', 'v.pem'),
                     expect=OUTPUT)
        self.assertEqual(os.listdir(out_dir), ['v.pem'])

    def test_daemon_error(self):
        class Broken(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{"error":{"code":"token_unavailable","message":"the key\'s token ' \
                       b'cannot sign right now"}}'
                self.send_response(503)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        srv = http.server.HTTPServer(('127.0.0.1', 0), Broken)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            p = self.popsign('keys', url='http://127.0.0.1:%d' % srv.server_address[1],
                             expect=DAEMON_ERROR)
            self.assertIn('token_unavailable', p.stderr.decode())
        finally:
            srv.shutdown()


if __name__ == '__main__':
    unittest.main(verbosity=2)
