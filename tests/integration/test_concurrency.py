"""Concurrent signing: 200 requests from 8 clients at once, each on its own
connection, for an EC and an RSA key; every certificate valid, for the code
that was asked, and every serial distinct.  Then, through OpenSC's
pkcs11-spy, that token sessions and key look-ups do not grow with requests.
"""

import os
import re
import sys
import threading
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

THREADS = 8
REQUESTS = 200
KEYS = {'conc-ec': 'ec256', 'conc-rsa': 'rsa2048'}

token = None


def setUpModule():
    global token
    token = h.Token(list(KEYS.values()))


def tearDownModule():
    if token is not None:
        token.cleanup()


def start(caller, workers, module=h.SOFTHSM_MODULE, env=None, name='popsignd.conf'):
    keys = [h.key_section(k, token.uri(label, module=module), token.cert(label))
            for k, label in KEYS.items()]
    conf = h.write_config(token.dir, keys=keys, callers=[caller], workers=workers, name=name)
    return h.Daemon(conf, env or token.env).start()


def hammer(port, caller, key, total, threads):
    """total signing requests for key from threads threads, each with its own
    connection, started together.  Returns [(code, Response)] and errors."""
    results = []
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(n):
        mine = []
        conn = h.connect(port)
        try:
            barrier.wait(30)
            for i in range(n):
                code = h.new_code()
                resp = h.request(port, 'POST', h.sign_path(key), {'verification_code': code},
                                 token=caller.token, conn=conn)
                mine.append((code, resp))
        except Exception as e:  # reported by the test, not lost in the thread
            with lock:
                errors.append(repr(e))
        finally:
            conn.close()
            with lock:
                results.extend(mine)

    share = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
    ts = [threading.Thread(target=worker, args=(n,)) for n in share]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return results, errors


class ConcurrentSigningTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.caller = h.Caller('load', '*')
        cls.daemon = start(cls.caller, workers=4)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def run_load(self, key):
        label = KEYS[key]
        results, errors = hammer(self.daemon.port, self.caller, key, REQUESTS, THREADS)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), REQUESTS)
        bad = [(code, r.status, r.body[:200]) for code, r in results if r.status != 201]
        self.assertEqual(bad, [])

        ca_subject = h.der_tbs(h.pem_to_der(h.read_text(token.cert(label)))).subject
        out_dir = token.path('load-' + key)
        os.mkdir(out_dir)
        paths, serials, fingerprints = [], set(), set()
        for n, (code, r) in enumerate(results):
            j = r.json
            self.assertEqual((j['key'], j['verification_code']), (key, code))
            tbs = h.der_tbs(h.pem_to_der(j['certificate']))
            # Each answer carries the certificate for its own request.
            self.assertEqual(h.der_subject_cn(tbs.subject), code)
            self.assertEqual(tbs.issuer, ca_subject)
            self.assertEqual(int(j['serial'], 16), int.from_bytes(tbs.serial, 'big'))
            serials.add(tbs.serial)
            fingerprints.add(j['sha256_fingerprint'].lower())
            path = os.path.join(out_dir, '%03d.pem' % n)
            with open(path, 'w') as f:
                f.write(j['certificate'])
            paths.append(path)
        self.assertEqual(len(serials), REQUESTS, 'repeated serials')
        self.assertEqual(len(fingerprints), REQUESTS, 'repeated certificates')
        failed, out, rc = h.openssl_verify(token.cert(label), paths)
        self.assertEqual(failed, [], out[-2000:])
        self.assertEqual(rc, 0)

    def test_ec_key(self):
        self.run_load('conc-ec')

    def test_rsa_key(self):
        self.run_load('conc-rsa')


class TokenSessionsTest(unittest.TestCase):
    """One session per worker, one login, key handles found once: counted
    from the PKCS#11 calls the daemon makes."""
    WORKERS = 2
    PER_KEY = 60

    def test_no_lookup_per_request(self):
        if not os.path.exists(h.SPY_MODULE):
            self.fail('%s (package opensc-pkcs11) is needed' % h.SPY_MODULE)
        log = token.path('spy.log')
        env = dict(token.env, PKCS11SPY=h.SOFTHSM_MODULE, PKCS11SPY_OUTPUT=log)
        caller = h.Caller('spy', '*')
        d = start(caller, self.WORKERS, module=h.SPY_MODULE, env=env, name='spy.conf')
        try:
            for key in KEYS:
                results, errors = hammer(d.port, caller, key, self.PER_KEY, 4)
                self.assertEqual(errors, [])
                self.assertEqual([r.status for _, r in results], [201] * self.PER_KEY)
        finally:
            d.stop()
        with open(log) as f:
            calls = re.findall(r'^\d+: (C_\w+)$', f.read(), re.M)
        count = {name: calls.count(name) for name in set(calls)}
        requests = self.PER_KEY * len(KEYS)
        self.assertGreaterEqual(count.get('C_Sign', 0), requests, count)
        self.assertEqual(count.get('C_Login', 0), 1, count)
        self.assertLessEqual(count.get('C_OpenSession', 0), self.WORKERS + 2, count)
        # A few look-ups per session and key at start; none per request.
        lookups = count.get('C_FindObjectsInit', 0)
        self.assertLessEqual(lookups, 4 * len(KEYS) * (self.WORKERS + 2), count)


if __name__ == '__main__':
    h.main()
