"""popsign dps|iothub against the Azure test double, end to end.

A real SoftHSM2 token with an EC P-256 and an RSA-2048 CA key, a real
popsignd, the real popsign client, and the Azure double of
tests/fakes/azure (ARM, Azure AD and the metadata endpoint on one loopback
port, in this process, with its fault injection and request log).

Covered: verify --upload from nothing to Verified on DPS and IoT Hub for
both keys; already verified; not there without --upload; thumbprint
mismatch with nothing signed; stale etag once (recovers) and always (gives
up, exit 8); 429 with Retry-After; 500 then success; a dropped connection;
Azure unreachable; each credential source; Azure AD, metadata endpoint,
az and ARM errors shown verbatim with their exit codes; token refresh in
a long flow; http:// to a non-loopback host refused; show, list, upload,
delete; secrets never in the output.
"""

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True
import harness as h  # noqa: E402

sys.path.insert(0, os.path.join(h.HERE, '..', 'fakes', 'azure'))
import azure_double as ad  # noqa: E402

KEYS = {'ca-ec': 'ec256', 'ca-rsa': 'rsa2048'}
CONF = ad.DEFAULT_CONFIG
SUB = CONF['resources'][0]['subscription']
RG = CONF['resources'][0]['resource_group']
DPS = CONF['resources'][0]['dps'][0]
HUB = CONF['resources'][0]['iothub'][0]
TENANT = CONF['clients'][0]['tenant']
CLIENT = CONF['clients'][0]['client_id']
SECRET = CONF['clients'][0]['secret']
STATIC_TOKEN = CONF['static_tokens'][0]
MI_SYSTEM = CONF['managed_identity']['system_assigned']
MI_USER = CONF['managed_identity']['user_assigned'][0]
CERT_CLIENT = '55555555-5555-5555-5555-555555555555'
EXIT = {'ok': 0, 'usage': 2, 'refused': 8, 'unreachable': 9, 'unauthenticated': 10,
        'mismatch': 11}
SERVICES = {
    'dps': ('--dps-name', DPS, 'provisioningServices', '2022-12-12'),
    'iothub': ('--hub-name', HUB, 'IotHubs', '2023-06-30'),
}

token = daemon = double = caller = workdir = None
names = iter(range(1, 10000))


def setUpModule():
    global token, daemon, double, caller, workdir
    token = h.Token(list(KEYS.values()))
    workdir = tempfile.mkdtemp(prefix='popsign-azure-', dir=token.dir)
    caller = h.Caller('azure', '*')
    keys = [h.key_section(k, token.uri(label), token.cert(label)) for k, label in KEYS.items()]
    conf = h.write_config(token.dir, keys=keys, callers=[caller], name='azure.conf')
    daemon = h.Daemon(conf, token.env).start()
    double = ad.AzureDouble().start()


def tearDownModule():
    if double is not None:
        double.stop()
    if daemon is not None:
        daemon.stop()
    if token is not None:
        token.cleanup()


def new_name(prefix='cert'):
    return '%s-%d' % (prefix, next(names))


def write_private(name, text):
    path = os.path.join(workdir, name)
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def ca_pem(key):
    return h.read_text(token.cert(KEYS[key]))


def thumbprint(key):
    return h.cert_info(token.cert(KEYS[key]))['sha1'].upper()


def resource_id(service, cert):
    return ('/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s/certificates/%s'
            % (SUB, RG, SERVICES[service][2], SERVICES[service][1], cert))


def issued_lines():
    return [line for line in daemon.stderr.splitlines() if 'issued:' in line]


def wait_issued(before, n, timeout=5):
    """The "issued:" lines after the first before, once there are n of them
    (popsignd's stderr is read by a thread of the harness)."""
    deadline = time.monotonic() + timeout
    while len(issued_lines()) - before < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return issued_lines()[before:]


class Result:
    def __init__(self, p, seconds):
        self.code = p.returncode
        self.out = p.stdout.decode('utf-8', errors='replace')
        self.err = p.stderr.decode('utf-8', errors='replace')
        self.seconds = seconds

    def __repr__(self):
        return 'exit %d\n--- stdout\n%s--- stderr\n%s' % (self.code, self.out, self.err)


class AzureTest(unittest.TestCase):
    """Runs popsign with a clean environment: no Azure variables but the
    subscription, no proxies, no az on PATH unless a test puts one there."""

    def setUp(self):
        double.clear_faults()
        double.set_token_lifetime(3599)
        self.token_file = write_private('client.token', caller.token + '\n')
        self.arm_token = write_private('arm.token', STATIC_TOKEN + '\n')
        self.empty_path = tempfile.mkdtemp(dir=workdir)

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('AZURE_') and 'proxy' not in k.lower()
               and not k.startswith('POPSIGN_')}
        env.update(PATH=self.empty_path, POPSIGN_URL='http://127.0.0.1:%d' % daemon.port,
                   POPSIGN_TOKEN_FILE=self.token_file, AZURE_SUBSCRIPTION_ID=SUB,
                   POPSIGN_ARM_ENDPOINT=double.url)
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def popsign(self, *args, env=None, token_file=True):
        argv = [h.program('POPSIGN')] + list(args)
        if token_file:
            argv += ['--access-token-file', self.arm_token]
        t0 = time.monotonic()
        p = subprocess.run(argv, env=env or self.env(), capture_output=True, timeout=120)
        return Result(p, time.monotonic() - t0)

    def azure(self, service, action, cert=None, key=None, *more, **kw):
        flag, parent, _, _ = SERVICES[service]
        args = [service, action, flag, parent, '--resource-group', RG]
        if cert:
            args += ['--certificate-name', cert]
        if key:
            args += ['--key', key]
        return self.popsign(*(args + list(more)), **kw)

    def assertExit(self, r, what):
        self.assertEqual(r.code, EXIT[what], r)

    def fake_az(self, body, status=0, stderr=''):
        d = tempfile.mkdtemp(dir=workdir)
        args_file = os.path.join(d, 'args')
        with open(os.path.join(d, 'az'), 'w') as f:
            f.write('#!/bin/sh\nprintf "%%s\\n" "$@" > %s\n' % args_file)
            if stderr:
                f.write("echo %s >&2\n" % json.dumps(stderr))
            f.write("cat <<'EOF'\n%s\nEOF\nexit %d\n" % (body, status))
        os.chmod(os.path.join(d, 'az'), 0o755)
        return d, args_file

    def seed(self, service, cert, key, verified=False):
        double.seed_certificate(service, SUB, RG, SERVICES[service][1], cert, ca_pem(key), verified)

    def state(self, service, cert):
        for c in double.state()['certificates']:
            if c['service'] == service and c['name'] == cert:
                return c
        return None

    def requests_since(self, seq):
        return [e for e in double.requests() if e['seq'] > seq]

    def last_seq(self):
        log = double.requests()
        return log[-1]['seq'] if log else 0


class VerifyTests(AzureTest):
    def verify_from_nothing(self, service, key):
        cert = new_name(service)
        seq, issued = self.last_seq(), len(issued_lines())
        r = self.azure(service, 'verify', cert, key, '--upload')
        self.assertExit(r, 'ok')
        tp = thumbprint(key)
        # Each step reported on stderr as it happens, in order.
        positions = [r.err.find('[%d/8]' % i) for i in range(1, 9)]
        self.assertTrue(all(p >= 0 for p in positions) and positions == sorted(positions), r)
        self.assertRegex(r.out, r'(?m)^%s\s+popsign test CA %s\s+%s\s+\d{4}-\d\d-\d\dT[\d:]+Z\s+yes$'
                         % (cert, KEYS[key], tp))
        st = self.state(service, cert)
        self.assertTrue(st['isVerified'])
        self.assertEqual(st['thumbprint'], tp)
        # popsignd signed exactly once, with the resource id as context.
        new = wait_issued(issued, 1)
        self.assertEqual(len(new), 1, daemon.stderr)
        self.assertIn("key '%s' code %s" % (key, st['verified_with']), new[0])
        self.assertIn('context ' + resource_id(service, cert), new[0])
        self.check_requests(service, cert, key, self.requests_since(seq))

    def check_requests(self, service, cert, key, log):
        """The wire: paths, api-version, bodies, bare etags in If-Match."""
        version = SERVICES[service][3]
        path = resource_id(service, cert)
        steps = [(e['method'], e['path'][len(path):]) for e in log]
        self.assertEqual(steps, [('GET', ''), ('PUT', ''), ('POST', '/generateVerificationCode'),
                                 ('POST', '/verify')])
        for e in log:
            self.assertEqual(e['query']['api-version'], [version])
            self.assertEqual(e['authorization']['kind'], 'static')
        put = json.loads(log[1]['body'])
        self.assertEqual(put, {'properties': {'certificate': base64.b64encode(
            ca_pem(key).encode()).decode()}})
        self.assertNotIn('If-Match', log[1]['headers'])
        gen, ver = log[2], log[3]
        self.assertEqual(gen['body'], '')
        self.assertNotIn('"', gen['headers']['If-Match'])
        self.assertNotEqual(gen['headers']['If-Match'], ver['headers']['If-Match'])
        leaf = json.loads(ver['body'])['certificate']
        if service == 'dps':
            leaf = base64.b64decode(leaf, validate=True).decode()
        self.assertTrue(leaf.startswith('-----BEGIN CERTIFICATE-----'), leaf)

    def test_dps_ec(self):
        self.verify_from_nothing('dps', 'ca-ec')

    def test_dps_rsa(self):
        self.verify_from_nothing('dps', 'ca-rsa')

    def test_iothub_ec(self):
        self.verify_from_nothing('iothub', 'ca-ec')

    def test_iothub_rsa(self):
        self.verify_from_nothing('iothub', 'ca-rsa')

    def test_json_output(self):
        cert = new_name()
        r = self.azure('dps', 'verify', cert, 'ca-ec', '--upload', '--json')
        self.assertExit(r, 'ok')
        doc = json.loads(r.out)
        self.assertEqual(doc['name'], cert)
        self.assertIs(doc['properties']['isVerified'], True)
        self.assertEqual(doc['properties']['thumbprint'], thumbprint('ca-ec'))

    def test_api_version_override(self):
        # DPS 2020-03-01 answers "certificate": null and DER in the code answer.
        cert = new_name()
        seq = self.last_seq()
        r = self.azure('dps', 'verify', cert, 'ca-rsa', '--upload', '--api-version', '2020-03-01')
        self.assertExit(r, 'ok')
        for e in self.requests_since(seq):
            self.assertEqual(e['query']['api-version'], ['2020-03-01'])

    def test_already_verified(self):
        cert = new_name()
        self.seed('iothub', cert, 'ca-rsa', verified=True)
        seq, issued = self.last_seq(), len(issued_lines())
        r = self.azure('iothub', 'verify', cert, 'ca-rsa')
        self.assertExit(r, 'ok')
        self.assertIn('already verified', r.err)
        self.assertIn(thumbprint('ca-rsa'), r.out)
        self.assertEqual(len(issued_lines()), issued)
        self.assertEqual([e['method'] for e in self.requests_since(seq)], ['GET'])

    def test_missing_without_upload(self):
        cert = new_name()
        seq = self.last_seq()
        r = self.azure('dps', 'verify', cert, 'ca-ec')
        self.assertExit(r, 'refused')
        self.assertIn('add --upload', r.err)
        self.assertIn("Certificate '%s' not found." % cert, r.err)
        self.assertIn('(404015, HTTP 404)', r.err)
        self.assertIsNone(self.state('dps', cert))
        self.assertEqual([e['method'] for e in self.requests_since(seq)], ['GET'])

    def test_thumbprint_mismatch_signs_nothing(self):
        cert = new_name()
        self.seed('dps', cert, 'ca-rsa')
        seq, issued = self.last_seq(), len(issued_lines())
        r = self.azure('dps', 'verify', cert, 'ca-ec', '--upload')
        self.assertExit(r, 'mismatch')
        self.assertIn('certificate %s in %s is not the CA certificate of key ca-ec' % (cert, DPS),
                      r.err)
        time.sleep(0.3)   # a line popsignd wrote would have been read by now
        self.assertEqual(issued_lines()[issued:], [], daemon.stderr)
        self.assertEqual([e['method'] for e in self.requests_since(seq)], ['GET'])
        self.assertFalse(self.state('dps', cert)['isVerified'])

    def test_stale_etag_once_recovers(self):
        for action in ('generateVerificationCode', 'verify'):
            with self.subTest(action=action):
                cert = new_name()
                self.seed('iothub', cert, 'ca-ec')
                double.stale_etag(count=1, method='POST', path=action + '$')
                r = self.azure('iothub', 'verify', cert, 'ca-ec')
                self.assertExit(r, 'ok')
                self.assertIn('HTTP 412', r.err)
                self.assertTrue(self.state('iothub', cert)['isVerified'])

    def test_stale_etag_always_gives_up(self):
        cert = new_name()
        self.seed('dps', cert, 'ca-ec')
        double.stale_etag(count=-1, method='POST')
        seq = self.last_seq()
        r = self.azure('dps', 'verify', cert, 'ca-ec')
        self.assertExit(r, 'refused')
        self.assertIn('Invalid ETag supplied.', r.err)
        self.assertIn('(412001, HTTP 412)', r.err)
        self.assertIn('giving up', r.err)
        posts = [e for e in self.requests_since(seq) if e['method'] == 'POST']
        self.assertEqual(len(posts), 2)   # the first try and the one retry
        self.assertFalse(self.state('dps', cert)['isVerified'])

    def test_verification_refused_verbatim(self):
        cert = new_name()
        self.seed('dps', cert, 'ca-ec')
        message = ('Proof-Of-Possession failed: injected. If you contact a support representative '
                   'please include this correlation identifier: x, errorcode: IH400053.')
        double.add_fault(method='POST', path='/verify$', status=400,
                         body={'code': 400053, 'httpStatusCode': 'BadRequest', 'message': message})
        r = self.azure('dps', 'verify', cert, 'ca-ec')
        self.assertExit(r, 'refused')
        self.assertIn(message + ' (400053, HTTP 400)', r.err)


class RetryTests(AzureTest):
    def test_429_retry_after(self):
        cert = new_name()
        self.seed('dps', cert, 'ca-ec')
        double.add_fault(method='GET', path=cert + '$', status=429, retry_after=1)
        r = self.azure('dps', 'show', cert)
        self.assertExit(r, 'ok')
        self.assertIn('HTTP 429; trying again in 1.0 s (try 2 of 3)', r.err)
        self.assertGreaterEqual(r.seconds, 1.0)
        self.assertIn(cert, r.out)

    def test_500_then_success(self):
        cert = new_name()
        double.add_fault(method='PUT', status=500)
        r = self.azure('iothub', 'verify', cert, 'ca-rsa', '--upload')
        self.assertExit(r, 'ok')
        self.assertIn('HTTP 500; trying again', r.err)
        self.assertTrue(self.state('iothub', cert)['isVerified'])

    def test_dropped_connection_then_success(self):
        double.add_fault(method='GET', action='drop')
        r = self.azure('dps', 'list')
        self.assertExit(r, 'ok')
        self.assertIn('trying again', r.err)

    def test_503_every_time(self):
        cert = new_name()
        double.add_fault(method='GET', status=503, count=-1,
                         body={'error': {'code': 'ServiceUnavailable', 'message': 'Down for a bit.'}})
        r = self.azure('dps', 'show', cert)
        self.assertExit(r, 'unreachable')
        self.assertIn('Down for a bit. (ServiceUnavailable, HTTP 503), after 3 tries', r.err)

    def test_unreachable(self):
        import socket
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()   # nothing listens there now
        r = self.popsign('dps', 'list', '--dps-name', DPS, '--resource-group', RG,
                         '--arm-endpoint', 'http://127.0.0.1:%d' % port)
        self.assertExit(r, 'unreachable')
        self.assertIn('cannot reach Azure Resource Manager', r.err)
        self.assertIn('after 3 tries', r.err)


class CredentialTests(AzureTest):
    def list_with(self, env, token_file=False, *more):
        seq = self.last_seq()
        r = self.azure('dps', 'list', None, None, *more, env=env, token_file=token_file)
        return r, self.requests_since(seq)

    def arm_auth(self, log):
        return [e['authorization'] for e in log if e['path'].startswith('/subscriptions/')]

    def test_token_file(self):
        r, log = self.list_with(self.env(), True)
        self.assertExit(r, 'ok')
        self.assertIn('Azure credentials: access token file', r.err)
        self.assertEqual([a['kind'] for a in self.arm_auth(log)], ['static'])

    def app_env(self, **kw):
        return self.env(AZURE_TENANT_ID=TENANT, AZURE_AUTHORITY_HOST=double.url, **kw)

    def test_client_secret(self):
        r, log = self.list_with(self.app_env(AZURE_CLIENT_ID=CLIENT, AZURE_CLIENT_SECRET=SECRET))
        self.assertExit(r, 'ok')
        aad = [e for e in log if e['path'] == '/%s/oauth2/v2.0/token' % TENANT]
        self.assertEqual(len(aad), 1)
        form = aad[0]['form']
        self.assertEqual(form['grant_type'], ['client_credentials'])
        self.assertEqual(form['scope'], ['https://management.azure.com/.default'])
        self.assertEqual(form['client_id'], [CLIENT])
        self.assertEqual([a['kind'] for a in self.arm_auth(log)], ['client_secret'])
        self.assertNotIn(SECRET, r.out + r.err)

    def make_cert_client(self):
        key = os.path.join(workdir, 'app.key')
        crt = os.path.join(workdir, 'app.crt')
        if not os.path.exists(crt):
            h.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
                   '-out', crt, '-subj', '/CN=popsign-app', '-days', '2'])
            double.add_config({'clients': [{'tenant': TENANT, 'client_id': CERT_CLIENT,
                                            'certificate': crt}]})
        return write_private('app.pem', h.read_text(crt) + h.read_text(key))

    def test_client_certificate(self):
        pem = self.make_cert_client()
        r, log = self.list_with(self.app_env(AZURE_CLIENT_ID=CERT_CLIENT,
                                             AZURE_CLIENT_CERTIFICATE_PATH=pem))
        self.assertExit(r, 'ok')
        form = [e for e in log if 'form' in e][0]['form']
        self.assertEqual(form['client_assertion_type'],
                         ['urn:ietf:params:oauth:client-assertion-type:jwt-bearer'])
        self.assertNotIn('client_secret', form)
        self.assertEqual([a['kind'] for a in self.arm_auth(log)], ['client_assertion'])

    def test_client_certificate_private_file_required(self):
        pem = self.make_cert_client()
        os.chmod(pem, 0o644)
        r, _ = self.list_with(self.app_env(AZURE_CLIENT_ID=CERT_CLIENT,
                                           AZURE_CLIENT_CERTIFICATE_PATH=pem))
        self.assertExit(r, 'unauthenticated')
        self.assertIn('group or others may access it', r.err)

    def test_managed_identity(self):
        env = self.env(AZURE_POD_IDENTITY_AUTHORITY_HOST=double.url)
        for arg, ident in (('--managed-identity', MI_SYSTEM),
                           ('--managed-identity=' + MI_USER, MI_USER)):
            with self.subTest(arg=arg):
                r, log = self.list_with(env, False, arg)
                self.assertExit(r, 'ok')
                imds = [e for e in log if e['path'] == '/metadata/identity/oauth2/token']
                self.assertEqual(len(imds), 1)
                self.assertEqual(imds[0]['headers'].get('Metadata'), 'true')
                self.assertEqual([(a['kind'], a['client_id']) for a in self.arm_auth(log)],
                                 [('managed_identity', ident)])

    def test_azure_cli(self):
        for body in ({'accessToken': STATIC_TOKEN, 'expiresOn': '2099-01-01 00:00:00.000000',
                      'subscription': SUB, 'tenant': TENANT, 'tokenType': 'Bearer'},
                     {'accessToken': STATIC_TOKEN, 'expiresOn': '2099-01-01 00:00:00.000000',
                      'expires_on': 4070908800, 'tokenType': 'Bearer'}):
            with self.subTest(body=sorted(body)):
                d, args = self.fake_az(json.dumps(body))
                r, log = self.list_with(self.env(PATH=d + ':/usr/bin:/bin'))
                self.assertExit(r, 'ok')
                self.assertIn('Azure CLI', r.err)
                self.assertEqual(h.read_text(args).split(),
                                 ['account', 'get-access-token', '--output', 'json',
                                  '--resource', 'https://management.azure.com'])
                self.assertEqual([a['kind'] for a in self.arm_auth(log)], ['static'])

    def test_first_source_wins(self):
        # A token file beats the environment's application.
        r, log = self.list_with(self.app_env(AZURE_CLIENT_ID=CLIENT, AZURE_CLIENT_SECRET='x'), True)
        self.assertExit(r, 'ok')
        self.assertFalse([e for e in log if 'form' in e])

    def test_no_credentials(self):
        r, log = self.list_with(self.env())
        self.assertExit(r, 'unauthenticated')
        self.assertIn('no Azure credentials', r.err)
        self.assertEqual(log, [])

    def test_token_refreshed_in_a_long_flow(self):
        # Tokens live 4 s, so popsign fetches a new one after 2 s; the upload
        # takes 2.5 s: every request after it must carry a fresh token, and
        # none an expired one.
        double.set_token_lifetime(4)
        cert = new_name()
        double.add_fault(method='PUT', action='delay', delay=2.5)
        seq = self.last_seq()
        r = self.azure('dps', 'verify', cert, 'ca-ec', '--upload',
                       env=self.app_env(AZURE_CLIENT_ID=CLIENT, AZURE_CLIENT_SECRET=SECRET),
                       token_file=False)
        self.assertExit(r, 'ok')
        log = self.requests_since(seq)
        auth = self.arm_auth(log)
        self.assertFalse([a for a in auth if a.get('expired')], auth)
        self.assertEqual(len({a['token_id'] for a in auth}), 2, auth)
        self.assertEqual(auth[0]['token_id'], auth[1]['token_id'])   # GET, PUT
        self.assertNotEqual(auth[1]['token_id'], auth[2]['token_id'])
        self.assertEqual(len([e for e in log if 'form' in e]), 2)


class ErrorTests(AzureTest):
    def lines_shown(self, text, err):
        """Every line of Azure's multi-line text appears in stderr."""
        for line in text.replace('\r\n', '\n').split('\n'):
            self.assertIn(line, err)

    def aad_env(self, **kw):
        env = dict(AZURE_TENANT_ID=TENANT, AZURE_AUTHORITY_HOST=double.url, AZURE_CLIENT_ID=CLIENT,
                   AZURE_CLIENT_SECRET=SECRET)
        env.update(kw)
        return self.env(**env)

    def test_aad_errors_verbatim(self):
        cases = [
            ('wrong secret', dict(AZURE_CLIENT_SECRET='not-the-secret'), 'invalid_client',
             'AADSTS7000215: Invalid client secret provided.'),
            ('unknown tenant', dict(AZURE_TENANT_ID='99999999-9999-9999-9999-999999999999'),
             'invalid_request', "AADSTS90002: Tenant '99999999-9999-9999-9999-999999999999' not found."),
            ('unknown application', dict(AZURE_CLIENT_ID='77777777-7777-7777-7777-777777777777'),
             'unauthorized_client', "AADSTS700016: Application with identifier "
                                    "'77777777-7777-7777-7777-777777777777' was not found"),
        ]
        for what, env, code, start in cases:
            with self.subTest(what=what):
                r = self.azure('dps', 'list', env=self.aad_env(**env), token_file=False)
                self.assertExit(r, 'unauthenticated')
                self.assertIn('popsign: Azure AD: ' + start, r.err)
                self.assertRegex(r.err, r'\n  Trace ID: [0-9a-f-]+\n  Correlation ID: ')
                self.assertIn('(%s, HTTP 40' % code, r.err)
                self.assertNotIn('not-the-secret', r.out + r.err)

    def test_aad_injected_error_verbatim(self):
        double.fail_aad(700024)
        r = self.azure('dps', 'list', env=self.aad_env(), token_file=False)
        self.assertExit(r, 'unauthenticated')
        self.assertIn('AADSTS700024: Client assertion is not within its valid time range. '
                      'Injected by the test.', r.err)

    def test_metadata_endpoint_error_verbatim(self):
        env = self.env(AZURE_POD_IDENTITY_AUTHORITY_HOST=double.url)
        r = self.azure('dps', 'list', None, None, '--managed-identity=no-such-identity', env=env,
                       token_file=False)
        self.assertExit(r, 'unauthenticated')
        self.assertIn('managed identity endpoint: Identity not found (invalid_request, HTTP 400)',
                      r.err)

    def test_azure_cli_failure(self):
        d, _ = self.fake_az('', status=1,
                                       stderr="ERROR: Please run 'az login' to setup account.")
        r = self.azure('dps', 'list', env=self.env(PATH=d + ':/usr/bin:/bin'), token_file=False)
        self.assertExit(r, 'unauthenticated')
        self.assertIn("ERROR: Please run 'az login' to setup account.", r.err)
        self.assertIn('failed with exit status 1', r.err)

    def test_arm_401_invalid_token(self):
        self.arm_token = write_private('bad.token', 'not-a-token-the-double-issued\n')
        r = self.azure('dps', 'list')
        self.assertExit(r, 'unauthenticated')
        self.assertIn('The access token is invalid. (InvalidAuthenticationToken, HTTP 401)', r.err)
        self.assertNotIn('not-a-token-the-double-issued', r.out + r.err)

    def test_arm_401_expired_token(self):
        tok, _ = double.issue_token(lifetime=-10)
        self.arm_token = write_private('expired.token', tok + '\n')
        r = self.azure('dps', 'list')
        self.assertExit(r, 'unauthenticated')
        self.assertIn('(ExpiredAuthenticationToken, HTTP 401)', r.err)
        self.assertNotIn(tok, r.out + r.err)

    def test_arm_403(self):
        double.add_fault(method='GET', status=403, body={'error': {
            'code': 'AuthorizationFailed', 'message': "The client 'x' does not have authorization "
            "to perform action 'Microsoft.Devices/provisioningServices/certificates/read'."}})
        r = self.azure('dps', 'list')
        self.assertExit(r, 'unauthenticated')
        self.assertIn("does not have authorization to perform action 'Microsoft.Devices/"
                      "provisioningServices/certificates/read'. (AuthorizationFailed, HTTP 403)",
                      r.err)

    def test_arm_404_parent_missing(self):
        r = self.popsign('iothub', 'verify', '--hub-name', HUB, '--resource-group', 'no-such-rg',
                         '--certificate-name', new_name(), '--key', 'ca-ec', '--upload')
        self.assertExit(r, 'refused')
        self.assertIn("Resource group 'no-such-rg' could not be found. "
                      "(ResourceGroupNotFound, HTTP 404)", r.err)
        self.assertNotIn('uploading', r.err)

    def test_arm_400_api_version(self):
        r = self.azure('dps', 'list', None, None, '--api-version', '1999-01-01')
        self.assertExit(r, 'refused')
        self.assertIn("(NoRegisteredProviderFound, HTTP 400)", r.err)

    def test_token_file_insecure(self):
        os.chmod(self.arm_token, 0o644)
        r = self.azure('dps', 'list')
        self.assertExit(r, 'unauthenticated')
        self.assertIn('group or others may access it', r.err)

    def test_http_to_other_hosts_refused(self):
        seq = self.last_seq()
        cases = [
            ('--arm-endpoint', self.env(), ['--arm-endpoint', 'http://management.example.com'], True),
            ('$POPSIGN_ARM_ENDPOINT', self.env(POPSIGN_ARM_ENDPOINT='http://10.1.2.3:8080'), [], True),
            ('AZURE_AUTHORITY_HOST', self.aad_env(AZURE_AUTHORITY_HOST='http://login.example.com'),
             [], False),
        ]
        for what, env, args, token_file in cases:
            with self.subTest(what=what):
                r = self.azure('dps', 'list', None, None, *args, env=env, token_file=token_file)
                self.assertExit(r, 'usage')
                self.assertIn('invalid %s: plain http:// is accepted only for a loopback host'
                              % what, r.err)
        self.assertEqual(self.requests_since(seq), [])

    def test_usage_errors(self):
        cases = [
            (['dps', 'verify', '--dps-name', DPS, '--resource-group', RG, '--key', 'ca-ec'],
             "needs --certificate-name"),
            (['dps', 'list', '--dps-name', DPS, '--resource-group', RG, '--certificate-name', 'x'],
             '--certificate-name does not apply'),
            (['iothub', 'list', '--dps-name', DPS, '--resource-group', RG],
             '--dps-name does not apply'),
            (['dps', 'show', '--dps-name', DPS, '--resource-group', RG, '--certificate-name', 'x',
              '--upload'], '--upload does not apply'),
            (['dps', 'frobnicate', '--dps-name', DPS, '--resource-group', RG], 'unknown action'),
            (['keys', '--dps-name', DPS], '--dps-name does not apply'),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                r = self.popsign(*args)
                self.assertExit(r, 'usage')
                self.assertIn(message, r.err)
        r = self.popsign('dps', 'list', '--dps-name', DPS, '--resource-group', RG,
                         env=self.env(AZURE_SUBSCRIPTION_ID=None))
        self.assertExit(r, 'usage')
        self.assertIn('needs --subscription', r.err)


class CommandTests(AzureTest):
    def test_show_and_list(self):
        cert = new_name()
        self.seed('iothub', cert, 'ca-ec')
        r = self.azure('iothub', 'show', cert)
        self.assertExit(r, 'ok')
        lines = r.out.splitlines()
        self.assertEqual(lines[0].split(), ['NAME', 'SUBJECT', 'THUMBPRINT', 'EXPIRES', 'VERIFIED'])
        self.assertRegex(lines[1], r'^%s\s+popsign test CA ec256\s+%s\s+\S+Z\s+no$'
                         % (cert, thumbprint('ca-ec')))
        r = self.azure('iothub', 'list')
        self.assertExit(r, 'ok')
        self.assertRegex(r.out, r'(?m)^%s\s' % cert)
        r = self.azure('iothub', 'list', None, None, '--json')
        self.assertExit(r, 'ok')
        self.assertIn(cert, [c['name'] for c in json.loads(r.out)['value']])

    def test_show_missing(self):
        r = self.azure('dps', 'show', 'never-there')
        self.assertExit(r, 'refused')
        self.assertIn("Certificate 'never-there' not found.", r.err)

    def test_upload(self):
        cert = new_name()
        seq = self.last_seq()
        r = self.azure('dps', 'upload', cert, 'ca-rsa')
        self.assertExit(r, 'ok')
        st = self.state('dps', cert)
        self.assertFalse(st['isVerified'])
        self.assertEqual(st['thumbprint'], thumbprint('ca-rsa'))
        puts = [e for e in self.requests_since(seq) if e['method'] == 'PUT']
        self.assertEqual(len(puts), 1)
        self.assertNotIn('isVerified', puts[0]['body'])
        self.assertEqual(double.state()['verified_upload_attempts'], [])
        # Again: already there, nothing sent but the read.
        seq = self.last_seq()
        r = self.azure('dps', 'upload', cert, 'ca-rsa')
        self.assertExit(r, 'ok')
        self.assertIn('already in DPS', r.err)
        self.assertEqual([e['method'] for e in self.requests_since(seq)], ['GET'])
        # Another key's certificate under that name is not replaced.
        r = self.azure('dps', 'upload', cert, 'ca-ec')
        self.assertExit(r, 'mismatch')
        self.assertEqual(self.state('dps', cert)['thumbprint'], thumbprint('ca-rsa'))

    def test_delete(self):
        cert = new_name()
        self.seed('dps', cert, 'ca-ec')
        seq = self.last_seq()
        r = self.azure('dps', 'delete', cert)
        self.assertExit(r, 'usage')
        self.assertIn('needs --yes', r.err)
        self.assertIsNotNone(self.state('dps', cert))
        self.assertEqual(self.requests_since(seq), [])
        etag = self.state('dps', cert)['etag']
        r = self.azure('dps', 'delete', cert, None, '--yes')
        self.assertExit(r, 'ok')
        self.assertIsNone(self.state('dps', cert))
        log = self.requests_since(seq)
        self.assertEqual([e['method'] for e in log], ['GET', 'DELETE'])
        self.assertEqual(log[1]['headers']['If-Match'], etag)

    def test_secrets_not_in_argv_or_output(self):
        r = self.azure('dps', 'verify', new_name(), 'ca-ec', '--upload')
        self.assertExit(r, 'ok')
        for secret in (STATIC_TOKEN, caller.token):
            self.assertNotIn(secret, r.out + r.err)


if __name__ == '__main__':
    h.main()
