"""Token faults, detected and recovered without a restart (issue 5, part 1).

A real popsignd whose key lives on a real SoftHSM2 token reached through the
fault-injecting PKCS#11 module of tests/fakes (FAULTY_PKCS11_PATH), which a
test drives at run time through its control file and whose call log counts
what popsignd asked of the token.  For each fault kind: 503 token_unavailable
with Retry-After, promptly, while it lasts; /readyz 503 with the key's state,
then 200; /metrics counting the CKR_ code; service back by itself once the
fault clears, with the first certificate valid (openssl verify) and exactly
one new login.  Also: lost sessions and logins repaired within the request,
no login ever after CKR_PIN_INCORRECT, and a hanging C_Sign answered with 503
within request_timeout, before and after the signer is killed for it.
"""

import os
import re
import subprocess
import sys
import threading
import time
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

REQUEST_TIMEOUT = 2          # seconds, set in the config
WATCHDOG = 5                 # max(2 x request_timeout, 5 s): the signer is killed
PROMPT = 1.0                 # a failed token answers within this
MARGIN = 1.0                 # on top of request_timeout
KEY = 'ca'
FAULT_LASTS = 1.3            # seconds each fault is in force, at least

# Each fault kind as a "* fail" rule, and the state /readyz must give the key.
FAULT_STATES = {
    'CKR_DEVICE_REMOVED': 'token not present',
    'CKR_TOKEN_NOT_PRESENT': 'token not present',
    'CKR_SESSION_HANDLE_INVALID': 'session lost',
    'CKR_SESSION_CLOSED': 'session lost',
    'CKR_USER_NOT_LOGGED_IN': 'not logged in',
    'CKR_DEVICE_ERROR': 'device error',
    'CKR_GENERAL_ERROR': 'module error',
    'CKR_CRYPTOKI_NOT_INITIALIZED': 'module not initialised',
}

token = None
caller = h.Caller('ops', '*')


def faulty_module():
    path = os.environ.get('FAULTY_PKCS11_PATH')
    if not path:
        raise RuntimeError('FAULTY_PKCS11_PATH is not set: run through meson test')
    return path


def setUpModule():
    global token
    token = h.Token(['ec256'])


def tearDownModule():
    if token is not None:
        token.cleanup()


def set_faults(path, text):
    """Rewrites the control file atomically (the module sees a new inode)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.rename(tmp, path)


def metric_samples(text):
    """[(name, {label: value}, float value)] of a Prometheus text page."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ''))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def readyz_states(resp):
    """{key name: state} from a /readyz body: "keys" as {name: state},
    {name: {"state": ...}} or [{"name"|"key": ..., "state": ...}]."""
    keys = (resp.json or {}).get('keys') if isinstance(resp.json, dict) else None
    if isinstance(keys, dict):
        return {k: v if isinstance(v, str) else (v or {}).get('state') for k, v in keys.items()}
    if isinstance(keys, list):
        return {e.get('name') or e.get('key'): e.get('state') for e in keys if isinstance(e, dict)}
    return {}


class Base(h.ApiAssertions, unittest.TestCase):
    """A fresh popsignd with its own control file and call log per test."""
    workers = 2

    def setUp(self):
        self.control = token.path('faults-%s' % self.id().split('.')[-1])
        self.calls = self.control + '.log'
        for p in (self.control, self.calls):
            if os.path.exists(p):
                os.unlink(p)
        set_faults(self.control, '')
        key = h.key_section(KEY, token.uri('ec256', module=faulty_module()), token.cert('ec256'))
        text = h.config_text([
            ('daemon', [('listen', '127.0.0.1:0'), ('workers', str(self.workers)),
                        ('request_timeout', str(REQUEST_TIMEOUT)),
                        ('rate', '1000/s'), ('burst', '1000')]),
            key, caller.section()])
        conf = h.write_config(token.dir, text=text, name='faults.conf')
        env = dict(token.env, FAULTY_PKCS11_MODULE=h.SOFTHSM_MODULE,
                   FAULTY_PKCS11_CONTROL=self.control, FAULTY_PKCS11_LOG=self.calls)
        self.daemon = h.Daemon(conf, env).start()
        self.n_certs = 0
        resp = h.request(self.daemon.port, 'GET', '/readyz')
        if resp.status == 404:
            self.daemon.kill()
            self.fail('readyz not wired: GET /readyz answers 404')

    def tearDown(self):
        set_faults(self.control, '')
        if self._outcome_ok():
            self.daemon.stop()
        else:
            sys.stderr.write('\n--- popsignd stderr:\n%s' % self.daemon.stderr)
            self.daemon.kill()

    def _outcome_ok(self):
        outcome = self._outcome
        if hasattr(outcome, 'errors'):           # Python <= 3.10
            return not any(exc for _, exc in outcome.errors)
        result = outcome.result
        return not any(getattr(t, 'test_case', t) is self
                       for t, _ in result.errors + result.failures)

    # --- helpers ---

    def faults(self, text):
        set_faults(self.control, text)

    def count(self, line):
        """How often the module logged line (e.g. "C_Login CKR_OK")."""
        try:
            with open(self.calls) as f:
                return f.read().splitlines().count(line)
        except FileNotFoundError:
            return 0

    def calls_log(self):
        with open(self.calls) as f:
            return f.read().splitlines()

    def sign(self):
        return h.request(self.daemon.port, 'POST', h.sign_path(KEY),
                         {'verification_code': h.new_code()}, token=caller.token)

    def assertUnavailable(self, resp):
        self.assertError(resp, 503, 'token_unavailable')
        retry = resp.headers.get('Retry-After')
        self.assertIsNotNone(retry, 'no Retry-After on a 503')
        self.assertRegex(retry, r'^[1-9][0-9]*$')

    def assertValid(self, resp):
        """A 201 whose certificate openssl verifies against the CA."""
        self.assertEqual(resp.status, 201, resp.body[:300])
        self.n_certs += 1
        path = token.path('%s-%d.pem' % (os.path.basename(self.control), self.n_certs))
        with open(path, 'w') as f:
            f.write(resp.json['certificate'])
        bad, out, _ = h.openssl_verify(token.cert('ec256'), [path])
        self.assertEqual(bad, [], out)

    def sign_fails_promptly(self):
        t0 = time.monotonic()
        resp = self.sign()
        took = time.monotonic() - t0
        self.assertUnavailable(resp)
        self.assertLess(took, PROMPT, 'a 503 for a failed token took %.2f s' % took)

    def wait_signs(self, timeout):
        """Signs until a 201 (asserted valid); every other answer must be a
        503 token_unavailable.  Returns the seconds it took."""
        t0 = time.monotonic()
        while True:
            resp = self.sign()
            if resp.status == 201:
                self.assertValid(resp)
                return time.monotonic() - t0
            self.assertUnavailable(resp)
            self.assertLess(time.monotonic() - t0, timeout,
                            'no certificate within %d s of the fault clearing' % timeout)
            time.sleep(0.1)

    def wait_ready(self, ready, timeout=4):
        """Polls /readyz until it answers 200 (ready) or 503 (not); returns
        the key's state then."""
        t0 = time.monotonic()
        while True:
            resp = h.request(self.daemon.port, 'GET', '/readyz')
            self.assertIn(resp.status, (200, 503), resp.body[:300])
            if (resp.status == 200) == ready:
                state = readyz_states(resp).get(KEY)
                if ready:
                    self.assertEqual(state, 'ready', resp.body[:500])
                else:
                    self.assertIsNotNone(state, 'no state for key %r in %r' % (KEY, resp.body))
                return state
            self.assertLess(time.monotonic() - t0, timeout,
                            '/readyz did not turn %s within %d s: %r'
                            % (200 if ready else 503, timeout, resp.body[:500]))
            time.sleep(0.1)

    def metrics(self):
        resp = h.request(self.daemon.port, 'GET', '/metrics')
        self.assertEqual(resp.status, 200)
        return metric_samples(resp.body.decode())

    def assertErrorCounted(self, ckr):
        """/metrics has a token error counter with label value ckr, >= 1."""
        samples = self.metrics()
        counted = [s for s in samples if ckr in s[1].values() and 'error' in s[0]]
        self.assertTrue(counted, 'no error counter labelled %s in /metrics' % ckr)
        self.assertGreaterEqual(max(s[2] for s in counted), 1)

    def key_ready_metric(self):
        """The readiness-by-key gauge of KEY in /metrics."""
        found = [s for s in self.metrics() if 'ready' in s[0] and s[1].get('key') == KEY]
        self.assertEqual(len(found), 1, 'no single readiness gauge for key %s' % KEY)
        return found[0][2]


class FaultKinds(Base):
    """Each fault kind as a "* fail" rule: every call but the module-wide
    ones fails with it, as when a device is gone."""

    def fault_cycle(self, ckr):
        self.assertValid(self.sign())
        logins = self.count('C_Login CKR_OK')
        self.assertEqual(logins, 1)
        t_fault = time.monotonic()
        self.faults('* fail %s\n' % ckr)
        for _ in range(3):
            self.sign_fails_promptly()
        self.assertEqual(self.wait_ready(False), FAULT_STATES[ckr])
        self.assertErrorCounted(ckr)
        self.assertEqual(self.key_ready_metric(), 0)
        while time.monotonic() - t_fault < FAULT_LASTS:
            self.sign_fails_promptly()
            time.sleep(0.2)
        self.assertEqual(self.count('C_Login CKR_OK'), logins, 'logged in during the fault')
        self.faults('')
        self.wait_signs(timeout=8)
        self.wait_ready(True)
        self.assertEqual(self.key_ready_metric(), 1)
        self.assertEqual(self.count('C_Login CKR_OK') - logins, 1,
                         'login not redone exactly once')
        self.assertNotIn('signer process stopped', self.daemon.stderr)


def add_fault_tests():
    for ckr in FAULT_STATES:
        def test(self, ckr=ckr):
            self.fault_cycle(ckr)
        test.__doc__ = '* fail %s: 503s, /readyz and /metrics, recovery, one login' % ckr
        setattr(FaultKinds, 'test_fault_' + ckr[4:].lower(), test)


add_fault_tests()


class RepairTest(Base):
    """One-off losses are repaired within the request that meets them."""

    def test_session_lost_once(self):
        for ckr in ('CKR_SESSION_HANDLE_INVALID', 'CKR_SESSION_CLOSED'):
            with self.subTest(ckr=ckr):
                self.assertValid(self.sign())
                logins = self.count('C_Login CKR_OK')
                opened = self.count('C_OpenSession CKR_OK')
                self.faults('C_Sign fail %s once\n' % ckr)
                # The other pooled session keeps the login: none is needed.
                self.assertValid(self.sign())
                self.assertEqual(self.count('C_Sign ' + ckr), 1)
                self.assertEqual(self.count('C_OpenSession CKR_OK') - opened, 1)
                self.assertEqual(self.count('C_Login CKR_OK'), logins)

    def test_login_lost_once(self):
        self.assertValid(self.sign())
        logins = self.count('C_Login CKR_OK')
        self.faults('C_Sign fail CKR_USER_NOT_LOGGED_IN once\n')
        self.assertValid(self.sign())
        self.assertEqual(self.count('C_Sign CKR_USER_NOT_LOGGED_IN'), 1)
        self.assertEqual(self.count('C_Login CKR_OK') - logins, 1)
        # SoftHSM refuses key handles found before the new login: found again.
        self.assertValid(self.sign())
        self.assertValid(self.sign())

    def test_slow_sign_within_timeout(self):
        self.faults('C_Sign delay 500\n')
        t0 = time.monotonic()
        self.assertValid(self.sign())
        self.assertGreaterEqual(time.monotonic() - t0, 0.5)
        self.assertEqual(self.wait_ready(True), 'ready')


class PinTest(Base):
    def test_never_logs_in_after_pin_incorrect(self):
        self.assertValid(self.sign())
        self.faults('C_Login fail CKR_PIN_INCORRECT\nC_Sign fail CKR_USER_NOT_LOGGED_IN once\n')
        self.assertUnavailable(self.sign())
        log = self.calls_log()
        self.assertIn('C_Login CKR_PIN_INCORRECT', log)
        refused_at = log.index('C_Login CKR_PIN_INCORRECT')
        self.faults('')
        self.assertEqual(self.wait_ready(False), 'PIN refused')
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            self.sign_fails_promptly()
            time.sleep(0.2)
        self.assertEqual(self.wait_ready(False), 'PIN refused')
        later = self.calls_log()[refused_at + 1:]
        self.assertEqual([c for c in later if c.startswith('C_Login')], [],
                         'logged in again after CKR_PIN_INCORRECT')
        self.assertRegex(self.daemon.stderr, r'refused the PIN: not logging in again')


class HangTest(Base):
    def hung_requests(self, n):
        """n requests at once into a hanging C_Sign: each a 503 within
        request_timeout + margin."""
        results = [None] * n

        def one(i):
            t0 = time.monotonic()
            results[i] = (self.sign(), time.monotonic() - t0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(REQUEST_TIMEOUT + 10)
        for resp, took in results:
            self.assertUnavailable(resp)
            self.assertLess(took, REQUEST_TIMEOUT + MARGIN,
                            'a request into a hung token took %.2f s' % took)

    def test_hang_released(self):
        """A hung call makes the token "not responding": later requests fail
        at once, and the token is back when the call returns."""
        self.assertValid(self.sign())
        t0 = time.monotonic()
        self.faults('C_Sign hang\n')
        self.hung_requests(1)
        self.sign_fails_promptly()
        self.assertEqual(self.wait_ready(False, timeout=1.5), 'not responding')
        self.assertLess(time.monotonic() - t0, WATCHDOG - 0.5, 'too slow to test before the watchdog')
        self.faults('')
        self.wait_signs(timeout=3)
        self.wait_ready(True)
        self.assertNotIn('killing the signer', self.daemon.stderr)

    def test_hang_kills_signer(self):
        """Every worker hung: the signer is killed and started again; the new
        one can sign once the module lets go."""
        self.assertValid(self.sign())
        self.faults('C_Sign hang\n')
        self.hung_requests(self.workers)
        t0 = time.monotonic()
        while 'killing the signer' not in self.daemon.stderr:
            self.sign_fails_promptly()
            self.assertLess(time.monotonic() - t0, WATCHDOG + 3, 'the watchdog did not act')
            time.sleep(0.2)
        self.sign_fails_promptly()
        self.wait_ready(False)
        self.faults('')
        self.wait_signs(timeout=5)
        self.wait_ready(True)
        self.assertIn('the signer process is back', self.daemon.stderr)

    def test_stop_while_hung(self):
        """SIGTERM while a restarted signer still hangs at start: popsignd
        exits 0 at once all the same."""
        self.faults('C_Sign hang\n')
        self.hung_requests(self.workers)
        t0 = time.monotonic()
        while 'killing the signer' not in self.daemon.stderr:
            self.assertLess(time.monotonic() - t0, WATCHDOG + 3, 'the watchdog did not act')
            time.sleep(0.2)
        time.sleep(0.5)
        t0 = time.monotonic()
        self.daemon.stop()
        self.assertLess(time.monotonic() - t0, 3, 'stopping took too long')


if __name__ == '__main__':
    h.main()
