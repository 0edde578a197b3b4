"""popsignd start-up: what it refuses (exit 1, a clear message on stderr),
`popsignd -t` on good and bad configs, certificates held by the token, a
wrong PIN that is never retried, and the signer executable it needs.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

token = None
caller = h.Caller('ops', '*')
BAD = 'broken-key'   # the name of the key that is wrong in each bad config


def setUpModule():
    global token
    token = h.Token(['ec256', 'rsa2048', 'ec384'])
    try:
        # ec256's certificate also lives in the token; rsa2048's does not.
        token.import_cert('ec256')
        h.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
               'ec_paramgen_curve:P-256', '-nodes', '-keyout', token.path('other-p256.key'),
               '-subj', '/CN=another P-256 CA', '-days', '30',
               '-out', token.path('other-p256.pem')])
        token.write_file('wrong.pin', '654321\n')
        token.write_file('open.pin', h.TOKEN_PIN + '\n', mode=0o644)
        token.write_file('group.pin', h.TOKEN_PIN + '\n', mode=0o640)
    except BaseException:
        token.cleanup()
        raise


def tearDownModule():
    if token is not None:
        token.cleanup()


def good_key():
    return h.key_section('good-rsa', token.uri('rsa2048'), token.cert('rsa2048'))


def config(name, keys, listen='127.0.0.1:0'):
    return h.write_config(token.dir, keys=keys, callers=[caller], listen=listen, name=name)


def line_of(path, needle):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if needle in line:
                return n
    raise AssertionError('%r not in %s' % (needle, path))


class StartupChecks(unittest.TestCase):
    def assertRefused(self, conf, patterns, test_mode=False):
        """popsignd [-t] -c conf exits 1 and stderr matches every pattern
        (case-insensitive regular expressions)."""
        args = (['-t'] if test_mode else []) + ['-c', conf]
        rc, err, _ = h.run_popsignd(args, token.env)
        msg = 'popsignd %s; stderr:\n%s' % (' '.join(args), err)
        if os.environ.get('POPSIGN_TEST_SHOW'):
            sys.stderr.write('\n--- %s\n%s' % (' '.join(args), err))
        self.assertIsNotNone(rc, 'started serving instead of refusing: ' + msg)
        self.assertEqual(rc, 1, msg)
        for p in patterns:
            self.assertRegex(err, re.compile(p, re.I), msg)
        if test_mode:
            self.assertNotIn('listening on', err, msg)
        return err

    def assertRefusedBothWays(self, conf, patterns):
        for test_mode in (False, True):
            with self.subTest(test_mode=test_mode):
                self.assertRefused(conf, patterns, test_mode)


class RefusedAtStartTest(StartupChecks):
    """Each bad config holds one good key first, then the broken one."""

    def bad_key(self, name, uri=None, certificate=None, label='ec256'):
        cert = token.cert(label) if certificate is None else certificate
        conf = config(name + '.conf', [good_key(),
                      h.key_section(BAD, uri or token.uri(label), cert or None)])
        return conf

    def test_wrong_pin(self):
        conf = config('wrong-pin.conf', [
            h.key_section(BAD, token.uri('ec256', pin_file=token.path('wrong.pin')),
                          token.cert('ec256'))])
        self.assertRefusedBothWays(conf, [BAD, r'PIN', r'incorrect|wrong|refused|rejected'])

    def bad_pin_file(self, name, pin_file):
        """The key with a bad PIN file alone, then after a good key on the
        same token that logged in already: refused either way."""
        uri = token.uri('ec256', pin_file=pin_file)
        alone = config(name + '-alone.conf', [h.key_section(BAD, uri, token.cert('ec256'))])
        second = config(name + '-second.conf', [
            h.key_section('good-ec384', token.uri('ec384'), token.cert('ec384')),
            h.key_section(BAD, uri, token.cert('ec256'))])
        return alone, second

    def test_pin_file_readable_by_others(self):
        for pin in ('open.pin', 'group.pin'):
            with self.subTest(pin_file=pin):
                conf, _ = self.bad_pin_file('pin-mode', token.path(pin))
                self.assertRefusedBothWays(conf, [re.escape(token.path(pin)),
                                                  r'group|others|world|permission|mode'])

    def test_pin_file_readable_by_others_after_login(self):
        _, conf = self.bad_pin_file('pin-mode', token.path('open.pin'))
        self.assertRefusedBothWays(conf, [re.escape(token.path('open.pin')),
                                          r'group|others|world|permission|mode'])

    def test_pin_file_missing(self):
        conf, _ = self.bad_pin_file('pin-missing', token.path('nosuch.pin'))
        self.assertRefusedBothWays(conf, [re.escape(token.path('nosuch.pin'))])

    def test_pin_file_missing_after_login(self):
        _, conf = self.bad_pin_file('pin-missing', token.path('nosuch.pin'))
        self.assertRefusedBothWays(conf, [re.escape(token.path('nosuch.pin'))])

    def test_token_missing(self):
        conf = self.bad_key('token-missing', uri=token.uri('ec256', token='nosuch-token'))
        self.assertRefusedBothWays(conf, [BAD, r'token',
                                          r'not found|no such|missing|find|no token'])

    def test_key_missing(self):
        conf = self.bad_key('key-missing', uri=token.uri('nosuch-key'))
        self.assertRefusedBothWays(conf, [BAD, r'key|object',
                                          r'not found|no such|missing|find'])

    def test_certificate_of_another_token_key(self):
        conf = self.bad_key('mismatch-token', certificate=token.cert('ec384'))
        self.assertRefusedBothWays(conf, [BAD, r'match'])

    def test_certificate_of_another_algorithm(self):
        conf = self.bad_key('mismatch-rsa', certificate=token.cert('rsa2048'))
        self.assertRefusedBothWays(conf, [BAD, r'match'])

    def test_certificate_of_another_key_same_curve(self):
        conf = self.bad_key('mismatch-p256', certificate=token.path('other-p256.pem'))
        self.assertRefusedBothWays(conf, [BAD, r'match'])

    def test_certificate_file_missing(self):
        conf = self.bad_key('cert-missing', certificate=token.path('nosuch.pem'))
        self.assertRefusedBothWays(conf, [re.escape(token.path('nosuch.pem'))])

    def test_certificate_omitted_and_not_in_token(self):
        conf = config('cert-not-in-token.conf', [
            h.key_section('good-ec', token.uri('ec256'), None),
            h.key_section(BAD, token.uri('rsa2048'), None)])
        self.assertRefusedBothWays(conf, [BAD, r'certificate'])


class ConfigErrorTest(StartupChecks):
    """Config errors say FILE:LINE: message."""

    def assertConfigError(self, conf, line, patterns=()):
        where = re.escape('%s:%s:' % (conf, line))
        self.assertRefusedBothWays(conf, [where] + list(patterns))

    def test_non_loopback_listen(self):
        for listen in ('0.0.0.0:7717', '192.0.2.1:7717', '[::]:7717',
                       '127.0.0.1:0, 0.0.0.0:7717'):
            with self.subTest(listen=listen):
                conf = config('listen.conf', [good_key()], listen=listen)
                self.assertConfigError(conf, line_of(conf, 'listen ='), [r'loopback'])

    def test_pin_value_in_uri(self):
        uri = ('pkcs11:token=popsign-test;object=ec256;type=private?module-path=%s'
               '&pin-value=123456' % h.SOFTHSM_MODULE)
        conf = config('pin-value.conf', [good_key(), h.key_section(BAD, uri,
                                                                  token.cert('ec256'))])
        self.assertConfigError(conf, line_of(conf, 'pin-value='), [r'pin-value'])

    def write(self, name, text):
        return h.write_config(token.dir, name=name, text=text)

    def good_lines(self):
        return ['[key k]', 'uri = ' + token.uri('ec256'), 'certificate = ' + token.cert('ec256'),
                '[client c]', 'token_sha256 = ' + caller.token_sha256, 'keys = *']

    def test_syntax_errors(self):
        cases = {
            'no equals sign': ('listen 127.0.0.1:0', None),
            'unknown daemon setting': ('frobnicate = 1', r'frobnicate'),
            'validity over 30 days': ('validity = 31d', r'validity'),
            'validity without unit': ('validity = 10', r'validity'),
            'workers not a number': ('workers = many', r'workers'),
            'unknown section': ('[nonsense]', r'nonsense'),
            'bad key name': ('[key bad/name]', r'bad/name'),
        }
        for what, (bad, pattern) in cases.items():
            with self.subTest(what):
                lines = ['[daemon]', 'listen = 127.0.0.1:0', bad] + self.good_lines()
                conf = self.write('syntax.conf', '\n'.join(lines) + '\n')
                self.assertConfigError(conf, 3, [pattern] if pattern else [])

    def test_client_names_unknown_key(self):
        lines = ['[daemon]', 'listen = 127.0.0.1:0'] + self.good_lines()[:-1] + ['keys = k, nokey']
        conf = self.write('client-key.conf', '\n'.join(lines) + '\n')
        self.assertRefusedBothWays(conf, [re.escape(conf) + r':\d+:', r'nokey'])

    def test_bad_token_hash(self):
        lines = ['[daemon]', 'listen = 127.0.0.1:0'] + self.good_lines()[:4] + \
            ['token_sha256 = 1234', 'keys = *']
        conf = self.write('hash.conf', '\n'.join(lines) + '\n')
        self.assertConfigError(conf, 7, [r'token_sha256'])

    def test_config_file_missing(self):
        path = token.path('nosuch.conf')
        self.assertRefusedBothWays(path, [re.escape(path)])


class CheckModeTest(StartupChecks):
    def test_good_config_exits_0_without_serving(self):
        conf = config('check-good.conf', [
            good_key(), h.key_section('ec', token.uri('ec256'), token.cert('ec256')),
            h.key_section('ec384', token.uri('ec384'), token.cert('ec384')),
            h.key_section('from-token', token.uri('ec256'), None)])
        rc, err, took = h.run_popsignd(['-t', '-c', conf], token.env)
        self.assertEqual(rc, 0, err)
        self.assertNotIn('listening on', err)
        self.assertLess(took, 10, err)


class SignerExecutableTest(StartupChecks):
    INSTALLED = '/usr/local/libexec/popsign/popsignd-signer'

    def test_missing_signer_refused_with_its_name(self):
        if os.path.exists(self.INSTALLED):
            self.skipTest('an installed popsignd-signer would be found at %s' % self.INSTALLED)
        alone = token.path('alone')
        os.makedirs(alone, exist_ok=True)
        daemon = shutil.copy(h.popsignd_path(), alone)
        conf = config('alone.conf', [good_key()])
        r = subprocess.run([daemon, '-t', '-c', conf], env=token.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        err = r.stderr.decode('utf-8', 'replace')
        self.assertEqual(r.returncode, 1, err)
        self.assertIn('cannot find popsignd-signer beside popsignd or at', err)

    def test_signer_refuses_to_run_by_hand(self):
        signer = os.path.join(os.path.dirname(h.popsignd_path()), 'popsignd-signer')
        for args in ([], ['-c', 'x.conf'], ['--signer', '4', '-c', 'x.conf']):
            r = subprocess.run([signer] + args, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(b'started by popsignd only', r.stderr)


class ListenTest(StartupChecks):
    def test_ipv4_and_ipv6_loopback(self):
        conf = config('listen-both.conf', [good_key()], listen='127.0.0.1:0, [::1]:0')
        with h.Daemon(conf, token.env) as d:
            deadline = time.monotonic() + 5
            while len(d.addresses) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(sorted(host for host, _ in d.addresses), ['127.0.0.1', '::1'],
                             d.stderr)
            for host, port in d.addresses:
                with self.subTest(host=host):
                    resp = h.request(port, 'GET', '/v1/keys/good-rsa', token=caller.token,
                                     host=host)
                    self.assertEqual(resp.status, 200, resp.body[:300])


class CertificateFromTokenTest(StartupChecks, h.ApiAssertions):
    def test_certificate_omitted_token_holds_it(self):
        conf = config('from-token.conf', [h.key_section('tok', token.uri('ec256'), None)])
        rc, err, _ = h.run_popsignd(['-t', '-c', conf], token.env)
        self.assertEqual(rc, 0, err)
        ca_der = h.pem_to_der(h.read_text(token.cert('ec256')))
        with h.Daemon(conf, token.env) as d:
            resp = h.request(d.port, 'GET', '/v1/keys/tok/certificate', token=caller.token)
            self.assertEqual(resp.status, 200, resp.body[:300])
            self.assertEqual(h.pem_to_der(resp.body.decode()), ca_der)
            code = h.new_code()
            resp = h.request(d.port, 'POST', h.sign_path('tok'), {'verification_code': code},
                             token=caller.token)
            self.assertEqual(resp.status, 201, resp.body[:300])
            path = token.write_file('from-token-leaf.pem', resp.json['certificate'])
            bad, out, rc = h.openssl_verify(token.cert('ec256'), [path])
            self.assertEqual((bad, rc), ([], 0), out)
            self.assertEqual(h.cert_info(path)['subject'], 'CN=' + code)


class WrongPinNotRetriedTest(StartupChecks):
    """Every PKCS#11 call goes through OpenSC's pkcs11-spy, which logs them,
    so the number of C_Login attempts is counted, not guessed."""

    def spy_env(self, log):
        return dict(token.env, PKCS11SPY=h.SOFTHSM_MODULE, PKCS11SPY_OUTPUT=log)

    def logins(self, log):
        with open(log) as f:
            return len(re.findall(r'^\d+: C_Login$', f.read(), re.M))

    def test_single_login_attempt(self):
        if not os.path.exists(h.SPY_MODULE):
            self.fail('%s (package opensc-pkcs11) is needed' % h.SPY_MODULE)
        wrong = token.path('wrong.pin')
        # Two keys on the same token, both with the wrong PIN.
        conf = config('wrong-pin-spy.conf', [
            h.key_section(BAD, token.uri('ec256', pin_file=wrong, module=h.SPY_MODULE),
                          token.cert('ec256')),
            h.key_section('second', token.uri('rsa2048', pin_file=wrong, module=h.SPY_MODULE),
                          token.cert('rsa2048'))])
        for test_mode in (False, True):
            with self.subTest(test_mode=test_mode):
                log = token.path('spy-%d.log' % test_mode)
                args = (['-t'] if test_mode else []) + ['-c', conf]
                rc, err, _ = h.run_popsignd(args, self.spy_env(log))
                self.assertEqual(rc, 1, err)
                self.assertEqual(self.logins(log), 1, err)
                self.assertLessEqual(len(re.findall('CKR_PIN_INCORRECT', err)), 1, err)
                self.assertRegex(err, re.compile(r'PIN', re.I))

        # The token still takes the right PIN: nothing locked it.
        good = config('after-wrong-pin.conf', [
            h.key_section('ec', token.uri('ec256', module=h.SPY_MODULE), token.cert('ec256'))])
        log = token.path('spy-good.log')
        with h.Daemon(good, self.spy_env(log)) as d:
            resp = h.request(d.port, 'GET', '/healthz')
            self.assertEqual(resp.status, 200)
        self.assertEqual(self.logins(log), 1)


if __name__ == '__main__':
    h.main()
