"""Shared pieces of the integration tests.

A real SoftHSM2 token made by tests/make-token.sh in a temporary directory, a
config writer, a popsignd runner on a free loopback port (port 0, learnt from
the daemon's "listening on" line), a small HTTP helper, and certificate
checks that use the openssl command line as the independent verifier.

Python standard library only.  Paths of the programs come from the
environment, as meson sets it: POPSIGND, POPSIGN, MAKE_TOKEN.
"""

import base64
import calendar
import collections
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOFTHSM_MODULE = os.environ.get('POPSIGN_TEST_MODULE', '/usr/lib/softhsm/libsofthsm2.so')
SPY_MODULE = '/usr/lib/x86_64-linux-gnu/pkcs11-spy.so'
TOKEN_LABEL = 'popsign-test'
TOKEN_PIN = '123456'
START_TIMEOUT = 20
STOP_TIMEOUT = 10
HTTP_TIMEOUT = 30
LISTEN_RE = re.compile(r'listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)')
PEM_RE = re.compile(r'-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n')
RFC3339_RE = re.compile(r'^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$')


def program(var):
    """The path of a program under test, from the environment meson sets."""
    path = os.environ.get(var)
    if not path:
        raise RuntimeError('%s is not set: run through meson test, or export '
                           '%s=/path/to/binary' % (var, var))
    if not os.access(path, os.X_OK):
        raise RuntimeError('%s=%s is not executable' % (var, path))
    return path


def popsignd_path():
    return program('POPSIGND')


def make_token_path():
    return os.environ.get('MAKE_TOKEN') or os.path.join(HERE, '..', 'make-token.sh')


def run(args, env=None, timeout=60, input=None, check=True):
    """Runs a helper command; on failure raises with its output."""
    p = subprocess.run(args, env=env, input=input, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError('%s exited %d:\n%s%s' % (' '.join(args), p.returncode,
                           p.stdout.decode(errors='replace'), p.stderr.decode(errors='replace')))
    return p


# --- the token ---------------------------------------------------------------

class Token:
    """A throwaway SoftHSM2 token holding the keys asked for (make-token.sh
    names: ec256 ec384 ec521 rsa2048 rsa3072 rsa4096), each with DIR/KEY.pem.
    The key labels are the key names; their CKA_IDs are 01, 02, ... in order."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.dir = tempfile.mkdtemp(prefix='popsign-it-')
        try:
            run(['sh', make_token_path(), self.dir] + self.keys)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.pin_file = os.path.join(self.dir, 'user.pin')
        self.env = dict(os.environ, SOFTHSM2_CONF=os.path.join(self.dir, 'softhsm2.conf'))

    def path(self, name):
        return os.path.join(self.dir, name)

    def cert(self, key):
        return self.path(key + '.pem')

    def key_id(self, key):
        return '%02x' % (self.keys.index(key) + 1)

    def uri(self, label, pin_file=None, token=TOKEN_LABEL, module=SOFTHSM_MODULE, extra=''):
        """A PKCS#11 URI naming the private key label in this token."""
        return ('pkcs11:token=%s;object=%s;type=private%s?module-path=%s&pin-source=file:%s'
                % (token, label, extra, module, pin_file or self.pin_file))

    def write_file(self, name, text, mode=0o600):
        path = self.path(name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def import_cert(self, key):
        """Stores key's CA certificate in the token (same CKA_ID and label)."""
        der = self.path(key + '.der')
        run(['openssl', 'x509', '-in', self.cert(key), '-outform', 'DER', '-out', der])
        run(['pkcs11-tool', '--module', SOFTHSM_MODULE, '--token-label', TOKEN_LABEL,
             '--login', '--pin', TOKEN_PIN, '--write-object', der, '--type', 'cert',
             '--id', self.key_id(key), '--label', key], env=self.env)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --- callers and the config ----------------------------------------------------

class Caller:
    """A [client NAME] section and the bearer token that goes with it."""

    def __init__(self, name, keys):
        self.name = name
        self.keys = keys                      # list of key names, or '*'
        self.token = secrets.token_urlsafe(32)
        self.token_sha256 = hashlib.sha256(self.token.encode()).hexdigest()

    def section(self):
        keys = self.keys if isinstance(self.keys, str) else ', '.join(self.keys)
        return ('client ' + self.name, [('token_sha256', self.token_sha256), ('keys', keys)])


def key_section(name, uri, certificate=None):
    items = [('uri', uri)]
    if certificate is not None:
        items.append(('certificate', certificate))
    return ('key ' + name, items)


def config_text(sections):
    """INI text from [(section name, [(key, value), ...]), ...]."""
    out = []
    for name, items in sections:
        out.append('[%s]' % name)
        out.extend('%s = %s' % kv for kv in items)
        out.append('')
    return '\n'.join(out)


# Limits high enough that tests about something else never meet them; the
# tests of the limits themselves pass their own.
UNLIMITED = (('rate', '1000000/s'), ('burst', '100000'), ('auth_failures', '1000000'))


def write_config(directory, sections=None, *, keys=(), callers=(), listen='127.0.0.1:0',
                 workers=2, validity='1d', name='popsignd.conf', text=None,
                 limits=UNLIMITED, daemon_extra=()):
    """Writes a popsignd config into directory and returns its path.  keys is
    a list of key_section() tuples, callers a list of Caller.  With text, that
    text is written as it is."""
    if text is None:
        daemon = [('listen', listen)] + list(limits or ()) + list(daemon_extra)
        if workers is not None:
            daemon.append(('workers', str(workers)))
        if validity is not None:
            daemon.append(('validity', validity))
        sections = [('daemon', daemon)] + list(keys) + [c.section() for c in callers] + \
            list(sections or [])
        text = config_text(sections)
    path = os.path.join(directory, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


# --- the daemon ----------------------------------------------------------------

class Daemon:
    """A running popsignd.  Use as a context manager, or call start() and
    always stop() or kill() in teardown."""

    def __init__(self, config, env, args=()):
        self.config = config
        self.env = env
        self.args = list(args)
        self.proc = None
        self.port = None
        self.host = None
        self.addresses = []      # every (host, port) the daemon said it listens on
        self._lines = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._reader = None

    @property
    def stderr(self):
        with self._lock:
            return ''.join(self._lines)

    def _read(self):
        for raw in iter(self.proc.stderr.readline, b''):
            line = raw.decode('utf-8', errors='replace')
            with self._lock:
                self._lines.append(line)
            m = LISTEN_RE.search(line)
            if m:
                address = (m.group(1).strip('[]'), int(m.group(2)))
                with self._lock:
                    self.addresses.append(address)
                if not self._listening.is_set():
                    self.host, self.port = address
                    self._listening.set()
        self.proc.stderr.close()

    def start(self, timeout=START_TIMEOUT):
        self.proc = subprocess.Popen([popsignd_path(), '-c', self.config] + self.args,
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError('popsignd exited %d before listening; stderr:\n%s'
                                     % (self.proc.returncode, self.stderr))
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError('popsignd did not log "listening on" within %d s; '
                                     'stderr:\n%s' % (timeout, self.stderr))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM; the daemon must exit 0 within STOP_TIMEOUT seconds."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError('popsignd ignored SIGTERM for %d s; stderr:\n%s'
                                     % (STOP_TIMEOUT, self.stderr))
            self._reader.join(5)
            if rc != 0:
                raise AssertionError('popsignd exited %d after SIGTERM; stderr:\n%s'
                                     % (rc, self.stderr))
        finally:
            self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


def run_popsignd(args, env, timeout=START_TIMEOUT):
    """Runs popsignd to completion (for start-up failures and -t).  Returns
    (exit code, stderr text, seconds taken).  The exit code is None if the
    daemon logged "listening on" instead of exiting: it is killed at once.  A
    daemon that neither exits nor listens within timeout is killed and
    reported as a failure."""
    d = Daemon(None, env)
    t0 = time.monotonic()
    d.proc = subprocess.Popen([popsignd_path()] + list(args), env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    d._reader = threading.Thread(target=d._read, daemon=True)
    d._reader.start()
    try:
        while d.proc.poll() is None:
            if d._listening.wait(0.02):
                d.kill()
                d._reader.join(5)
                return None, d.stderr, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError('popsignd %s neither exited nor listened within %d s; '
                                     'stderr:\n%s' % (' '.join(args), timeout, d.stderr))
        d._reader.join(5)
        return d.proc.returncode, d.stderr, time.monotonic() - t0
    finally:
        d.kill()


# --- HTTP ------------------------------------------------------------------------

Response = collections.namedtuple('Response', 'status headers body json')
DEFAULT = object()


def connect(port, host='127.0.0.1'):
    return http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)


def request(port, method, path, body=None, headers=None, token=None,
            content_type=DEFAULT, conn=None, host='127.0.0.1'):
    """One HTTP request.  body: dict/list (sent as JSON), str or bytes.
    content_type: defaults to application/json when there is a body; None
    sends no Content-Type.  token: sent as "Authorization: Bearer TOKEN".
    conn: an open HTTPConnection to reuse (else a new one, closed after).
    Returns Response(status, headers, body bytes, parsed JSON or None)."""
    hdrs = {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode('utf-8')
    if content_type is DEFAULT:
        content_type = 'application/json' if body is not None else None
    if content_type is not None:
        hdrs['Content-Type'] = content_type
    if token is not None:
        hdrs['Authorization'] = 'Bearer ' + token
    hdrs.update(headers or {})
    own = conn is None
    if own:
        conn = connect(port, host)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        return Response(resp.status, resp.headers, data, parsed)
    finally:
        if own:
            conn.close()


def media_type(headers):
    """The Content-Type without parameters, lower case."""
    return (headers.get('Content-Type') or '').split(';')[0].strip().lower()


def sign_path(key):
    return '/v1/keys/%s/verification-certificates' % key


def new_code(n=48):
    """A verification code as DPS hands them out: uppercase hex."""
    return secrets.token_hex((n + 1) // 2)[:n].upper()


class ApiAssertions:
    """Mixin for unittest.TestCase: the shapes the API promises."""

    def assertError(self, resp, status, code):
        msg = 'body: %r' % resp.body[:500]
        self.assertEqual(resp.status, status, msg)
        self.assertEqual(media_type(resp.headers), 'application/json', msg)
        self.assertIsInstance(resp.json, dict, msg)
        self.assertEqual(set(resp.json), {'error'}, msg)
        err = resp.json['error']
        self.assertIsInstance(err, dict, msg)
        self.assertEqual(set(err), {'code', 'message'}, msg)
        self.assertEqual(err['code'], code, msg)
        self.assertIsInstance(err['message'], str, msg)
        self.assertTrue(err['message'].strip(), msg)
        if status == 401:
            self.assertRegex(resp.headers.get('WWW-Authenticate') or '', r'^Bearer\b', msg)

    def assertAllow(self, resp, methods):
        """A 405 whose Allow header lists exactly methods (HEAD tolerated
        besides GET)."""
        self.assertError(resp, 405, 'method_not_allowed')
        allow = resp.headers.get('Allow')
        self.assertIsNotNone(allow, 'no Allow header')
        got = {m.strip().upper() for m in allow.split(',') if m.strip()}
        if 'GET' in methods:
            got.discard('HEAD')
        self.assertEqual(got, set(methods), 'Allow: %s' % allow)

    def assertRfc3339(self, text):
        self.assertIsInstance(text, str)
        self.assertRegex(text, RFC3339_RE)
        return calendar.timegm(time.strptime(text, '%Y-%m-%dT%H:%M:%SZ'))


# --- certificates ----------------------------------------------------------------

def read_text(path):
    with open(path) as f:
        return f.read()


def pem_to_der(pem):
    body = pem.strip().splitlines()
    if body[0] != '-----BEGIN CERTIFICATE-----' or body[-1] != '-----END CERTIFICATE-----':
        raise ValueError('not one PEM certificate')
    return base64.b64decode(''.join(body[1:-1]), validate=True)


def openssl_date(text):
    """'Nov 26 17:50:30 2026 GMT' to seconds since the epoch."""
    return calendar.timegm(time.strptime(text.strip(), '%b %d %H:%M:%S %Y GMT'))


def openssl_x509(path, *args):
    return run(['openssl', 'x509', '-in', path, '-noout'] + list(args)).stdout.decode()


def cert_info(path):
    """What openssl says about the certificate in path (one openssl run)."""
    out = openssl_x509(path, '-nameopt', 'RFC2253', '-subject', '-issuer', '-serial',
                       '-startdate', '-enddate', '-fingerprint', '-sha1', '-ext',
                       'basicConstraints,keyUsage,subjectKeyIdentifier,authorityKeyIdentifier',
                       '-text')
    head, text = out.split('\nCertificate:\n', 1)
    info = {'text': text}
    ext = []
    for line in head.splitlines():
        m = re.match(r'^(subject|issuer|serial|notBefore|notAfter|sha1 Fingerprint)=(.*)$', line)
        if m and not ext:
            info[m.group(1)] = m.group(2)
        else:
            ext.append(line)
    info['not_before'] = openssl_date(info['notBefore'])
    info['not_after'] = openssl_date(info['notAfter'])
    info['sha1'] = info['sha1 Fingerprint'].replace(':', '')
    info['extensions'] = parse_ext_text('\n'.join(ext))
    info['version'] = re.search(r'Version: (\d+)', text).group(1)
    info['signature_algorithms'] = re.findall(r'Signature Algorithm: (\S+)', text)
    info['public_key_algorithm'] = re.search(r'Public Key Algorithm: (\S+)', text).group(1)
    info['public_key'] = der_tbs(pem_to_der(read_text(path))).spki
    return info


def parse_ext_text(text):
    """{'X509v3 Basic Constraints': (critical, 'CA:FALSE'), ...} from
    openssl x509 -ext output."""
    exts = {}
    name = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(' '):
            head = line.strip()
            critical = head.endswith('critical')
            name = head.split(':')[0].strip()
            exts[name] = [critical, []]
        elif name:
            exts[name][1].append(line.strip())
    return {k: (v[0], '\n'.join(v[1])) for k, v in exts.items()}


def openssl_verify(ca, certs):
    """openssl verify -CAfile ca on every path in certs, in one process.
    Returns the paths openssl did not say "PATH: OK" for, with its output."""
    p = run(['openssl', 'verify', '-CAfile', ca] + list(certs), check=False, timeout=120)
    out = p.stdout.decode(errors='replace')
    ok = set(line[:-4] for line in out.splitlines() if line.endswith(': OK'))
    bad = [c for c in certs if c not in ok]
    return bad, out + p.stderr.decode(errors='replace'), p.returncode


# A minimal DER reader: enough of X.509 to check fields byte for byte.

def der_tlv(buf, pos=0):
    """(tag, header length, content start, end) of the TLV at pos."""
    tag = buf[pos]
    n = buf[pos + 1]
    start = pos + 2
    if n & 0x80:
        k = n & 0x7f
        if k == 0 or k > 4:
            raise ValueError('bad DER length')
        n = int.from_bytes(buf[start:start + k], 'big')
        start += k
    end = start + n
    if end > len(buf):
        raise ValueError('DER runs past the end')
    return tag, start, end


def der_children(buf, start, end):
    out = []
    pos = start
    while pos < end:
        tag, s, e = der_tlv(buf, pos)
        out.append((tag, pos, s, e))
        pos = e
    return out


Tbs = collections.namedtuple('Tbs', 'version serial issuer subject spki extensions')


def der_tbs(der):
    """Certificate DER to its TBS fields: version (int), serial content bytes,
    issuer and subject Name DER (whole TLV), SubjectPublicKeyInfo DER,
    extensions DER (or None)."""
    tag, s, e = der_tlv(der)
    if tag != 0x30 or e != len(der):
        raise ValueError('not one DER SEQUENCE')
    tbs = der_children(der, s, e)[0]
    fields = der_children(der, tbs[2], tbs[3])
    version = 1
    if fields[0][0] == 0xa0:
        _, _, vs, ve = fields[0]
        _, is_, ie = der_tlv(der, vs)
        version = int.from_bytes(der[is_:ie], 'big') + 1
        fields = fields[1:]
    serial = der[fields[0][2]:fields[0][3]]
    whole = lambda f: der[f[1]:f[3]]
    ext = None
    for f in fields[6:]:
        if f[0] == 0xa3:
            ext = der[f[2]:f[3]]
    return Tbs(version, serial, whole(fields[2]), whole(fields[4]), whole(fields[5]), ext)


def der_subject_cn(name_der):
    """The single CN value of a Name that holds only CN=value; raises otherwise."""
    _, s, e = der_tlv(name_der)
    rdns = der_children(name_der, s, e)
    if len(rdns) != 1:
        raise ValueError('%d RDNs' % len(rdns))
    avas = der_children(name_der, rdns[0][2], rdns[0][3])
    if len(avas) != 1:
        raise ValueError('%d attributes in the RDN' % len(avas))
    oid, value = der_children(name_der, avas[0][2], avas[0][3])
    if name_der[oid[1]:oid[3]] != bytes.fromhex('0603550403'):
        raise ValueError('attribute is not CN')
    if value[0] not in (0x0c, 0x13):  # UTF8String, PrintableString
        raise ValueError('CN string type 0x%02x' % value[0])
    return name_der[value[2]:value[3]].decode('utf-8')


def main():
    unittest.main(verbosity=2)
