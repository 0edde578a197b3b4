"""Signing and reading keys: the success paths of API v1.

A real token holding EC P-256, EC P-384, RSA-2048 and RSA-3072 CA keys, a
real popsignd, and every issued certificate checked with openssl: verify,
subject, issuer, validity window, extensions, serial, signature algorithm.
"""

import functools
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

# key name in the config -> (token label, API algorithm, signature algorithm)
KEYS = {
    'dev-ec256': ('ec256', 'EC-P256', 'ecdsa-with-SHA256'),
    'dev-ec384': ('ec384', 'EC-P384', 'ecdsa-with-SHA384'),
    'dev-rsa2048': ('rsa2048', 'RSA-2048', 'sha256WithRSAEncryption'),
    'dev-rsa3072': ('rsa3072', 'RSA-3072', 'sha256WithRSAEncryption'),
}
RESTRICTED_KEYS = ['dev-ec256', 'dev-rsa2048']
ISSUED_FIELDS = {'key', 'verification_code', 'certificate', 'serial', 'not_before',
                 'not_after', 'sha256_fingerprint'}
KEY_FIELDS = {'name', 'algorithm', 'subject', 'sha1_thumbprint', 'sha256_fingerprint',
              'not_before', 'not_after'}
SLACK = 2  # seconds: the daemon's clock reads whole seconds

token = None
# The CA certificates do not change: ask openssl about each once.
ca_cert_info = functools.lru_cache(maxsize=None)(h.cert_info)


def setUpModule():
    global token
    token = h.Token([label for label, _, _ in KEYS.values()])


def tearDownModule():
    if token is not None:
        token.cleanup()


def start_daemon(validity, keys, callers, name):
    sections = [h.key_section(k, token.uri(KEYS[k][0]), token.cert(KEYS[k][0])) for k in keys]
    conf = h.write_config(token.dir, keys=sections, callers=callers, validity=validity,
                          name=name)
    return h.Daemon(conf, token.env).start()


class IssuedChecks(h.ApiAssertions):
    """Checks shared by the classes below; subclasses set daemon, validity."""

    def sign(self, key, code, caller=None, **kw):
        caller = caller or self.everything
        return h.request(self.daemon.port, 'POST', h.sign_path(key),
                         {'verification_code': code}, token=caller.token, **kw)

    def verify_one(self, ca, pem, strict=False):
        """openssl verify in a scratch directory, as the user would run it."""
        d = tempfile.mkdtemp(prefix='cert-', dir=token.dir)
        with open(os.path.join(d, 'cert.pem'), 'w') as f:
            f.write(pem)
        args = ['openssl', 'verify'] + (['-x509_strict'] if strict else []) + \
            ['-CAfile', ca, 'cert.pem']
        p = subprocess.run(args, cwd=d, capture_output=True)
        out = p.stdout.decode(errors='replace')
        self.assertEqual(out, 'cert.pem: OK\n', out + p.stderr.decode(errors='replace'))
        self.assertEqual(p.returncode, 0)
        return os.path.join(d, 'cert.pem')

    def check_issued(self, key, code, resp, t0, t1):
        """Everything the issue says about one 201 answer and its certificate."""
        label, _, sigalg = KEYS[key]
        ca = token.cert(label)
        self.assertEqual(resp.status, 201, resp.body[:500])
        self.assertEqual(h.media_type(resp.headers), 'application/json')
        j = resp.json
        self.assertIsInstance(j, dict)
        self.assertEqual(set(j), ISSUED_FIELDS)
        self.assertEqual(j['key'], key)
        self.assertEqual(j['verification_code'], code)
        pem = j['certificate']
        self.assertIsInstance(pem, str)
        self.assertRegex(pem, r'\A' + h.PEM_RE.pattern + r'\Z')
        der = h.pem_to_der(pem)
        self.assertRegex(j['sha256_fingerprint'], r'^[0-9a-fA-F]{64}$')
        self.assertEqual(j['sha256_fingerprint'].lower(), hashlib.sha256(der).hexdigest())

        path = self.verify_one(ca, pem)
        info = h.cert_info(path)
        ca_info = ca_cert_info(ca)
        tbs = h.der_tbs(der)
        ca_tbs = h.der_tbs(h.pem_to_der(h.read_text(ca)))

        # X.509 v3, subject CN=<code> and nothing else, issuer byte for byte.
        self.assertEqual(info['version'], '3')
        self.assertEqual(tbs.version, 3)
        self.assertEqual(info['subject'], 'CN=' + code)
        self.assertEqual(h.der_subject_cn(tbs.subject), code)
        self.assertEqual(info['issuer'], ca_info['subject'])
        self.assertEqual(tbs.issuer, ca_tbs.subject)

        # Serial: random, positive, 128 bits; the JSON names the same one.
        self.assertRegex(j['serial'], r'^[0-9a-fA-F]{32}$')
        serial = int(j['serial'], 16)
        self.assertEqual(serial, int(info['serial'], 16))
        self.assertEqual(serial, int.from_bytes(tbs.serial, 'big', signed=True))
        self.assertFalse(tbs.serial[0] & 0x80, 'negative serial %s' % tbs.serial.hex())
        self.assertLessEqual(len(tbs.serial.lstrip(b'\0')), 16)
        self.assertLessEqual(len(tbs.serial), 17)
        self.assertGreater(serial.bit_length(), 64, 'serial does not look random')

        # Validity: now - 5 min to now + validity; JSON says the same.
        nb, na = info['not_before'], info['not_after']
        self.assertGreaterEqual(nb, int(t0) - 300 - SLACK)
        self.assertLessEqual(nb, t1 - 300 + SLACK)
        self.assertGreaterEqual(na, int(t0) + self.validity - SLACK)
        self.assertLessEqual(na, t1 + self.validity + SLACK)
        self.assertEqual(self.assertRfc3339(j['not_before']), nb)
        self.assertEqual(self.assertRfc3339(j['not_after']), na)

        # Extensions.
        ext = info['extensions']
        self.assertEqual(ext.get('X509v3 Basic Constraints'), (True, 'CA:FALSE'), ext)
        self.assertEqual(ext.get('X509v3 Key Usage'), (True, 'Digital Signature'), ext)
        self.assertIn('X509v3 Subject Key Identifier', ext)
        self.assertFalse(ext['X509v3 Subject Key Identifier'][0])
        self.assertRegex(ext['X509v3 Subject Key Identifier'][1], r'^[0-9A-F]{2}(:[0-9A-F]{2})+$')
        self.assertIn('X509v3 Authority Key Identifier', ext)
        aki = ext['X509v3 Authority Key Identifier'][1]
        aki = re.sub(r'^keyid:', '', aki.splitlines()[0])
        self.assertEqual(aki, ca_info['extensions']['X509v3 Subject Key Identifier'][1])

        # Signed by the token with the algorithm the issue names; the subject
        # key is an EC key the daemon made, not the CA's.
        self.assertEqual(info['signature_algorithms'], [sigalg, sigalg])
        self.assertEqual(info['public_key_algorithm'], 'id-ecPublicKey')
        self.assertNotEqual(info['public_key'], ca_info['public_key'])
        return info


class SignTest(IssuedChecks, unittest.TestCase):
    validity = 86400

    @classmethod
    def setUpClass(cls):
        cls.everything = h.Caller('everything', '*')
        cls.some = h.Caller('some', RESTRICTED_KEYS)
        cls.daemon = start_daemon('1d', list(KEYS), [cls.everything, cls.some], 'sign.conf')

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def sign_and_check(self, key, code=None):
        code = code or h.new_code()
        t0 = time.time()
        resp = self.sign(key, code)
        t1 = time.time()
        return self.check_issued(key, code, resp, t0, t1)

    def test_sign_ec_p256(self):
        self.sign_and_check('dev-ec256')

    def test_sign_ec_p384(self):
        self.sign_and_check('dev-ec384')

    def test_sign_rsa_2048(self):
        self.sign_and_check('dev-rsa2048')

    def test_sign_rsa_3072(self):
        self.sign_and_check('dev-rsa3072')

    def test_strict_verify(self):
        """openssl's RFC 5280 strict mode accepts the certificates too."""
        for key, (label, _, _) in KEYS.items():
            with self.subTest(key=key):
                resp = self.sign(key, h.new_code())
                self.assertEqual(resp.status, 201, resp.body[:500])
                self.verify_one(token.cert(label), resp.json['certificate'], strict=True)

    def test_subject_keys_are_ephemeral(self):
        code = h.new_code()
        for key in ('dev-ec256', 'dev-rsa2048'):
            with self.subTest(key=key):
                a = self.sign_and_check(key, code)
                b = self.sign_and_check(key, code)
                self.assertNotEqual(a['public_key'], b['public_key'])
                self.assertNotEqual(a['serial'], b['serial'])

    def test_code_of_one_character(self):
        self.sign_and_check('dev-ec256', 'Z')

    def test_code_of_64_characters(self):
        self.sign_and_check('dev-ec256', h.new_code(64))

    def test_lowercase_code_kept_as_given(self):
        self.sign_and_check('dev-rsa2048', h.new_code().lower())
        self.sign_and_check('dev-ec256', 'azAZ09MixedCase')

    def test_restricted_caller_signs_with_allowed_key(self):
        code = h.new_code()
        t0 = time.time()
        resp = self.sign('dev-rsa2048', code, caller=self.some)
        self.check_issued('dev-rsa2048', code, resp, t0, time.time())

    def test_json_content_type_with_charset(self):
        code = h.new_code()
        t0 = time.time()
        resp = self.sign('dev-ec256', code, content_type='application/json; charset=utf-8')
        self.check_issued('dev-ec256', code, resp, t0, time.time())

    def test_accept_pem(self):
        code = h.new_code()
        resp = self.sign('dev-ec384', code, headers={'Accept': 'application/x-pem-file'})
        self.assertEqual(resp.status, 201, resp.body[:500])
        self.assertEqual(h.media_type(resp.headers), 'application/x-pem-file')
        pem = resp.body.decode('ascii')
        self.assertRegex(pem, r'\A' + h.PEM_RE.pattern + r'\Z')
        path = self.verify_one(token.cert('ec384'), pem)
        self.assertEqual(h.cert_info(path)['subject'], 'CN=' + code)

    def expected_entry(self, key):
        label, algorithm, _ = KEYS[key]
        ca = token.cert(label)
        info = ca_cert_info(ca)
        return {
            'name': key,
            'algorithm': algorithm,
            'subject': info['subject'],
            'sha1_thumbprint': info['sha1'],
            'sha256_fingerprint': hashlib.sha256(h.pem_to_der(h.read_text(ca))).hexdigest(),
            'not_before': info['not_before'],
            'not_after': info['not_after'],
        }

    def check_entry(self, entry, key):
        self.assertIsInstance(entry, dict)
        self.assertEqual(set(entry), KEY_FIELDS)
        want = self.expected_entry(key)
        self.assertRegex(entry['sha1_thumbprint'], r'^[0-9A-F]{40}$')
        self.assertRegex(entry['sha256_fingerprint'], r'^[0-9a-fA-F]{64}$')
        got = dict(entry, sha256_fingerprint=entry['sha256_fingerprint'].lower(),
                   not_before=self.assertRfc3339(entry['not_before']),
                   not_after=self.assertRfc3339(entry['not_after']))
        self.assertEqual(got, want)

    def list_keys(self, caller):
        resp = h.request(self.daemon.port, 'GET', '/v1/keys', token=caller.token)
        self.assertEqual(resp.status, 200, resp.body[:500])
        self.assertEqual(h.media_type(resp.headers), 'application/json')
        self.assertIsInstance(resp.json, dict)
        self.assertEqual(set(resp.json), {'keys'})
        self.assertIsInstance(resp.json['keys'], list)
        return resp.json['keys']

    def test_list_keys_all(self):
        entries = self.list_keys(self.everything)
        self.assertEqual(sorted(e.get('name') for e in entries), sorted(KEYS))
        for e in entries:
            with self.subTest(key=e['name']):
                self.check_entry(e, e['name'])

    def test_list_keys_only_those_the_caller_may_use(self):
        entries = self.list_keys(self.some)
        self.assertEqual(sorted(e.get('name') for e in entries), sorted(RESTRICTED_KEYS))
        for e in entries:
            self.check_entry(e, e['name'])

    def test_get_one_key(self):
        for key in KEYS:
            with self.subTest(key=key):
                resp = h.request(self.daemon.port, 'GET', '/v1/keys/' + key,
                                 token=self.everything.token)
                self.assertEqual(resp.status, 200, resp.body[:500])
                self.assertEqual(h.media_type(resp.headers), 'application/json')
                self.check_entry(resp.json, key)

    def test_get_ca_certificate(self):
        for key, (label, _, _) in KEYS.items():
            with self.subTest(key=key):
                resp = h.request(self.daemon.port, 'GET', '/v1/keys/%s/certificate' % key,
                                 token=self.everything.token)
                self.assertEqual(resp.status, 200, resp.body[:500])
                self.assertEqual(h.media_type(resp.headers), 'application/x-pem-file')
                pem = resp.body.decode('ascii')
                self.assertRegex(pem, r'\A' + h.PEM_RE.pattern + r'\Z')
                self.assertEqual(h.pem_to_der(pem), h.pem_to_der(h.read_text(token.cert(label))))

    def test_restricted_caller_reads_allowed_key(self):
        resp = h.request(self.daemon.port, 'GET', '/v1/keys/dev-ec256', token=self.some.token)
        self.assertEqual(resp.status, 200, resp.body[:500])
        self.check_entry(resp.json, 'dev-ec256')
        resp = h.request(self.daemon.port, 'GET', '/v1/keys/dev-ec256/certificate',
                         token=self.some.token)
        self.assertEqual(resp.status, 200, resp.body[:500])

    def test_healthz_without_auth(self):
        resp = h.request(self.daemon.port, 'GET', '/healthz')
        self.assertEqual(resp.status, 200, resp.body[:500])
        self.assertEqual(h.media_type(resp.headers), 'application/json')
        self.assertEqual(resp.json, {'status': 'ok'})

    def test_keep_alive_connection(self):
        """Several requests on one connection each get their own answer."""
        conn = h.connect(self.daemon.port)
        try:
            for key in ('dev-ec256', 'dev-rsa2048', 'dev-ec256'):
                code = h.new_code()
                resp = self.sign(key, code, conn=conn)
                self.assertEqual(resp.status, 201, resp.body[:500])
                self.assertEqual(resp.json['verification_code'], code)
            resp = h.request(self.daemon.port, 'GET', '/healthz', conn=conn)
            self.assertEqual(resp.json, {'status': 'ok'})
        finally:
            conn.close()


class ValidityTwoHoursTest(IssuedChecks, unittest.TestCase):
    """validity = 2h from the config sets notAfter."""
    validity = 7200

    @classmethod
    def setUpClass(cls):
        cls.everything = h.Caller('everything', '*')
        cls.daemon = start_daemon('2h', ['dev-ec256', 'dev-rsa2048'], [cls.everything],
                                  'validity.conf')

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_two_hours(self):
        for key in ('dev-ec256', 'dev-rsa2048'):
            with self.subTest(key=key):
                code = h.new_code()
                t0 = time.time()
                resp = self.sign(key, code)
                self.check_issued(key, code, resp, t0, time.time())


if __name__ == '__main__':
    h.main()
