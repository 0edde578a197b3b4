"""Tests of the Azure test double, driven over HTTP with urllib.

Certificates come from the openssl command line in a temporary directory; the
double checks them with openssl too, so each verification test uses keys and
names built to pass or fail one particular check.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from testlib import (DOUBLE_PY, DPS, HUB, MI_SYSTEM, MI_USER, PARENT, RG, SCOPE, SECRET,
                     SECRET_CLIENT, STATIC_TOKEN, SUB, TENANT, azure_double, call, certs_url,
                     enddate_by_openssl, encode, make_assertion, make_ca, make_leaf, subject_by_openssl,
                     thumbprint_by_openssl)

CODE_RE = re.compile(r'^[0-9A-F]{48}$')
RFC1123_RE = re.compile(r'^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) '
                        r'\d{4} \d{2}:\d{2}:\d{2} GMT$')
GUID_ETAG_RE = re.compile(r'^"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"$')
TAIL = (r' If you contact a support representative please include this correlation identifier: '
        r'[0-9a-f-]{36}, timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ, errorcode: IH%d\.$')
PROPS = ['subject', 'expiry', 'thumbprint', 'isVerified', 'created', 'updated', 'certificate']
TOP = ['properties', 'id', 'name', 'type', 'etag']
CERT_CLIENT = '55555555-5555-5555-5555-555555555555'
OTHER_TENANT_CLIENT = '66666666-6666-6666-6666-666666666666'

_names = iter(range(1, 1 << 30))


def fresh(prefix='cert'):
    return '%s-%d' % (prefix, next(_names))


class DoubleTest(unittest.TestCase):
    """One double for the class; CAs and the client certificate made once."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix='azure-double-test-')
        cls.ca_key, cls.ca_pem = make_ca(cls.tmp, 'ec-ca', 'ec', cn='popsign test EC CA')
        cls.rsa_key, cls.rsa_pem = make_ca(cls.tmp, 'rsa-ca', 'rsa', cn='popsign test RSA CA')
        # Same subject as the EC CA, different key: a verification certificate it
        # signs names the right issuer but carries the wrong signature.
        cls.twin_key, cls.twin_pem = make_ca(cls.tmp, 'twin-ca', 'ec', cn='popsign test EC CA')
        # The client certificate of a service principal: cert and key in one PEM,
        # as AZURE_CLIENT_CERTIFICATE_PATH holds them.
        cls.app_key, cls.app_pem = make_ca(cls.tmp, 'app', 'rsa', cn='popsign test app')
        cls.other_app_key, cls.other_app_pem = make_ca(cls.tmp, 'other-app', 'rsa', cn='other app')
        cls.app_bundle = os.path.join(cls.tmp, 'app-bundle.pem')
        with open(cls.app_bundle, 'w') as out:
            for p in (cls.app_key, cls.app_pem):
                with open(p) as f:
                    out.write(f.read())
        with open(cls.ca_pem) as f:
            cls.ca_text = f.read()
        with open(cls.rsa_pem) as f:
            cls.rsa_text = f.read()
        config = json.loads(json.dumps(azure_double.DEFAULT_CONFIG))
        config['clients'].append({'tenant': TENANT, 'client_id': CERT_CLIENT, 'certificate': cls.app_bundle})
        cls.state_file = os.path.join(cls.tmp, 'state.json')
        cls.d = azure_double.AzureDouble(config, state_file=cls.state_file).start()
        cls.base = cls.d.url
        cls.token = cls.d.issue_token()[0]

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.d.clear_faults()

    # -- helpers ---------------------------------------------------------

    def url(self, service, name=None, action=None, version=None, **kw):
        return certs_url(self.base, service, name, action, version, **kw)

    def arm(self, method, service, name=None, action=None, body=None, if_match=None, version=None,
            token=None, headers=None, **kw):
        h = dict(headers or {})
        if if_match is not None:
            h['If-Match'] = if_match
        return call(method, self.url(service, name, action, version, **kw), body=body, headers=h,
                    token=self.token if token is None else token)

    def put(self, service, name, pem=None, how='b64pem', shape='wrapped', version=None, if_match=None,
            extra=None):
        value = encode(pem or self.ca_text, how)
        body = {'properties': {'certificate': value}} if shape == 'wrapped' else {'certificate': value}
        if extra:
            (body['properties'] if shape == 'wrapped' else body).update(extra)
        return self.arm('PUT', service, name, body=body, if_match=if_match, version=version)

    def ok(self, r, status=200):
        self.assertEqual(r.status, status, r)
        return r.json() if r.body else None

    def leaf(self, subject, key=None, cert=None, **kw):
        return make_leaf(self.tmp, key or self.ca_key, cert or self.ca_pem, subject, **kw)

    def assertIotError(self, r, status, code, reason, message_re, exact=False):
        """The resource provider's error shape; message_re matches the start of the message
        (all of it before the correlation tail when exact)."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.header('Content-Type'), 'application/json; charset=utf-8')
        body = r.json()
        self.assertEqual(list(body), ['code', 'httpStatusCode', 'message'])
        self.assertIs(type(body['code']), int)
        self.assertEqual(body['code'], code)
        self.assertEqual(body['httpStatusCode'], reason)
        self.assertRegex(body['message'], '^' + message_re + ('' if exact else '.*') + TAIL % code)

    def assertArmError(self, r, status, code, message_re=None):
        self.assertEqual(r.status, status, r)
        body = r.json()
        self.assertEqual(list(body), ['error'])
        self.assertEqual(sorted(body['error']), ['code', 'message'])
        self.assertEqual(body['error']['code'], code)
        if message_re:
            self.assertRegex(body['error']['message'], message_re)

    def assertAadError(self, r, status, error, aadsts):
        self.assertEqual(r.status, status, r)
        body = r.json()
        self.assertEqual(body['error'], error)
        self.assertEqual(body['error_codes'], [aadsts])
        self.assertRegex(body['error_description'],
                         r'^AADSTS%d: .+\r\nTrace ID: [0-9a-f-]{36}\r\nCorrelation ID: [0-9a-f-]{36}\r\n'
                         r'Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$' % aadsts)
        for k in ('timestamp', 'trace_id', 'correlation_id'):
            self.assertIsInstance(body[k], str)
        return body

    def assertResource(self, body, service, name, pem_path, verified, version=None, code=False):
        props = (['verificationCode'] if code else []) + PROPS
        self.assertEqual(list(body), TOP)
        self.assertEqual(list(body['properties']), props)
        p = body['properties']
        self.assertEqual('CN=' + p['subject'], subject_by_openssl(pem_path))
        self.assertFalse(p['subject'].startswith('CN='))
        self.assertEqual(p['thumbprint'], thumbprint_by_openssl(pem_path))
        self.assertEqual(p['expiry'], enddate_by_openssl(pem_path))
        self.assertIs(p['isVerified'], verified)
        self.assertRegex(p['created'], RFC1123_RE)
        self.assertRegex(p['updated'], RFC1123_RE)
        if code:
            self.assertRegex(p['verificationCode'], CODE_RE)
        self.assertEqual(body['name'], name)
        self.assertEqual(body['id'], '/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s/'
                                     'certificates/%s' % (SUB, RG, {'dps': 'provisioningServices',
                                                                    'iothub': 'IotHubs'}[service],
                                                          PARENT[service], name))
        self.assertEqual(body['type'], {'dps': 'Microsoft.Devices/provisioningServices/Certificates',
                                        'iothub': 'Microsoft.Devices/IotHubs/Certificates'}[service])
        self.assertRegex(azure_double.base64.b64decode(body['etag']).decode(), GUID_ETAG_RE)

    def expected_certificate(self, service, version, op, uploaded, pem_path):
        mode = azure_double.SERVICES[service]['versions'][version][azure_double.OPERATION_COLUMN[op]]
        if mode == 'null':
            return None
        if mode == 'echo':
            return uploaded
        return encode(open(pem_path).read(), 'b64der')

    def generate(self, service, name, etag, **kw):
        return self.ok(self.arm('POST', service, name, 'generateVerificationCode', if_match=etag, **kw))

    def verify(self, service, name, etag, cert_value, **kw):
        return self.arm('POST', service, name, 'verify', body={'certificate': cert_value}, if_match=etag, **kw)

    def ready_for_verify(self, service='dps', pem=None, key=None):
        """A certificate with a fresh code: (name, etag, code)."""
        name = fresh()
        body = self.ok(self.put(service, name, pem))
        g = self.generate(service, name, body['etag'])
        return name, g['etag'], g['properties']['verificationCode']


class LifecycleTest(DoubleTest):

    def lifecycle(self, service, version, ca_pem, ca_key, how_put, shape, how_verify):
        name = fresh(service)
        ca_text = open(ca_pem).read()
        uploaded = encode(ca_text, how_put)
        body = {'properties': {'certificate': uploaded}} if shape == 'wrapped' else {'certificate': uploaded}
        put = self.ok(self.arm('PUT', service, name, body=body, version=version))
        self.assertResource(put, service, name, ca_pem, False, version)
        self.assertEqual(put['properties']['certificate'],
                         self.expected_certificate(service, version, 'put', uploaded, ca_pem))

        got = self.ok(self.arm('GET', service, name, version=version))
        self.assertResource(got, service, name, ca_pem, False, version)
        self.assertEqual(got['etag'], put['etag'])
        self.assertEqual(got['properties']['certificate'],
                         self.expected_certificate(service, version, 'get', uploaded, ca_pem))

        gen = self.generate(service, name, got['etag'], version=version)
        self.assertResource(gen, service, name, ca_pem, False, version, code=True)
        self.assertNotEqual(gen['etag'], got['etag'])
        self.assertEqual(gen['properties']['certificate'],
                         self.expected_certificate(service, version, 'generate', uploaded, ca_pem))
        code = gen['properties']['verificationCode']

        leaf = self.leaf('/CN=' + code, ca_key, ca_pem)
        ver = self.ok(self.verify(service, name, gen['etag'], encode(leaf, how_verify), version=version))
        self.assertResource(ver, service, name, ca_pem, True, version)
        self.assertNotEqual(ver['etag'], gen['etag'])
        self.assertEqual(ver['properties']['certificate'],
                         self.expected_certificate(service, version, 'verify', uploaded, ca_pem))

        again = self.ok(self.arm('GET', service, name, version=version))
        self.assertIs(again['properties']['isVerified'], True)
        self.assertEqual(again['etag'], ver['etag'])
        listed = self.ok(self.arm('GET', service, version=version))
        self.assertEqual(list(listed), ['value'])
        self.assertIn(again, listed['value'])

        r = self.arm('DELETE', service, name, if_match=ver['etag'], version=version)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b'')
        self.assertEqual(r.header('Content-Length'), '0')
        self.assertIsNone(r.header('Content-Type'))
        self.assertIotError(self.arm('GET', service, name, version=version), 404, 404015, 'NotFound',
                            re.escape("Certificate '%s' not found." % name), True)
        self.assertNotIn(name, [c['name'] for c in self.ok(self.arm('GET', service, version=version))['value']])

    def test_dps_default_version_ec_and_rsa(self):
        self.lifecycle('dps', '2022-12-12', self.ca_pem, self.ca_key, 'b64pem', 'wrapped', 'b64pem')
        self.lifecycle('dps', '2022-12-12', self.rsa_pem, self.rsa_key, 'b64pem', 'wrapped', 'pem')

    def test_iothub_default_version_ec_and_rsa(self):
        self.lifecycle('iothub', '2023-06-30', self.ca_pem, self.ca_key, 'b64pem', 'wrapped', 'pem')
        self.lifecycle('iothub', '2023-06-30', self.rsa_pem, self.rsa_key, 'pem', 'wrapped', 'b64der')

    def test_every_accepted_version_and_encoding(self):
        encodings = ['b64der', 'b64pem', 'pem']
        i = 0
        for service, spec in sorted(azure_double.SERVICES.items()):
            for version in spec['versions']:
                i += 1
                how_put, how_verify = encodings[i % 3], encodings[(i + 1) % 3]
                shape = 'flat' if i % 2 else 'wrapped'
                with self.subTest(service=service, version=version, put=how_put, shape=shape, verify=how_verify):
                    self.lifecycle(service, version, self.ca_pem, self.ca_key, how_put, shape, how_verify)

    def test_created_year_0001_on_newer_versions(self):
        name = fresh()
        self.ok(self.put('dps', name))
        new = self.ok(self.arm('GET', 'dps', name, version='2022-12-12'))
        old = self.ok(self.arm('GET', 'dps', name, version='2020-03-01'))
        self.assertEqual(new['properties']['created'], 'Mon, 01 Jan 0001 00:00:00 GMT')
        self.assertNotEqual(old['properties']['created'], 'Mon, 01 Jan 0001 00:00:00 GMT')
        self.assertIsNone(old['properties']['certificate'])

    def test_every_write_changes_the_etag(self):
        for service in ('dps', 'iothub'):
            name = fresh(service)
            etags = [self.ok(self.put(service, name))['etag']]
            etags.append(self.ok(self.put(service, name, if_match=etags[-1]))['etag'])
            etags.append(self.generate(service, name, etags[-1])['etag'])
            g = self.generate(service, name, etags[-1])
            etags.append(g['etag'])
            leaf = self.leaf('/CN=' + g['properties']['verificationCode'])
            etags.append(self.ok(self.verify(service, name, etags[-1], encode(leaf, 'pem')))['etag'])
            self.assertEqual(len(set(etags)), len(etags), etags)
            for e in etags:
                self.assertRegex(azure_double.base64.b64decode(e).decode(), GUID_ETAG_RE)
            # Reads do not write.
            self.assertEqual(self.ok(self.arm('GET', service, name))['etag'], etags[-1])
            self.assertEqual(self.ok(self.arm('GET', service, name))['etag'], etags[-1])

    def test_counter_etag_style(self):
        d = azure_double.AzureDouble(dict(azure_double.DEFAULT_CONFIG, etag_style='counter')).start()
        try:
            url = certs_url(d.url, 'dps', 'c1')
            tok = d.issue_token()[0]
            a = call('PUT', url, {'certificate': encode(self.ca_text, 'b64der')}, token=tok).json()['etag']
            b = call('PUT', url, {'certificate': encode(self.ca_text, 'b64der')}, token=tok,
                     headers={'If-Match': a}).json()['etag']
            ia, ib = (int.from_bytes(azure_double.base64.b64decode(x), 'big') for x in (a, b))
            self.assertEqual(len(azure_double.base64.b64decode(a)), 8)
            self.assertGreater(ib, ia)
        finally:
            d.stop()

    def test_two_names_may_hold_the_same_certificate(self):
        a, b = fresh(), fresh()
        ta = self.ok(self.put('dps', a))['properties']['thumbprint']
        tb = self.ok(self.put('dps', b, how='b64der', shape='flat'))['properties']['thumbprint']
        self.assertEqual(ta, tb)


class PutTest(DoubleTest):

    def test_all_encodings_and_shapes_give_one_certificate(self):
        expected = thumbprint_by_openssl(self.ca_pem)
        for how in ('b64der', 'b64pem', 'pem'):
            for shape in ('flat', 'wrapped'):
                with self.subTest(how=how, shape=shape):
                    name = fresh()
                    body = self.ok(self.put('iothub', name, how=how, shape=shape))
                    self.assertEqual(body['properties']['thumbprint'], expected)
                    self.assertEqual(body['properties']['certificate'], encode(self.ca_text, how))

    def test_flat_is_verified_is_honoured_and_recorded(self):
        before = len(self.d.state()['verified_upload_attempts'])
        name = fresh()
        body = self.ok(self.put('dps', name, shape='flat', extra={'isVerified': True}, version='2021-10-15'))
        self.assertIs(body['properties']['isVerified'], True)
        attempts = self.d.state()['verified_upload_attempts'][before:]
        self.assertEqual(attempts, [{'service': 'dps', 'parent': DPS, 'name': name, 'shape': 'flat',
                                     'api_version': '2021-10-15'}])

    def test_wrapped_is_verified_is_ignored_but_recorded(self):
        before = len(self.d.state()['verified_upload_attempts'])
        name = fresh()
        body = self.ok(self.put('iothub', name, shape='wrapped', extra={'isVerified': True}))
        self.assertIs(body['properties']['isVerified'], False)
        attempts = self.d.state()['verified_upload_attempts'][before:]
        self.assertEqual([(a['name'], a['shape']) for a in attempts], [(name, 'wrapped')])

    def test_update_with_another_certificate_resets_verification(self):
        name, etag, code = self.ready_for_verify('dps')
        etag = self.ok(self.verify('dps', name, etag, encode(self.leaf('/CN=' + code), 'pem')))['etag']
        same = self.ok(self.put('dps', name, if_match=etag))
        self.assertIs(same['properties']['isVerified'], True)
        other = self.ok(self.put('dps', name, pem=self.rsa_text, if_match=same['etag']))
        self.assertIs(other['properties']['isVerified'], False)
        self.assertEqual(other['properties']['thumbprint'], thumbprint_by_openssl(self.rsa_pem))

    def test_expired_ca_is_accepted(self):
        tmp = tempfile.mkdtemp(dir=self.tmp)
        key, pem = make_ca(tmp, 'short', 'ec', days=0)
        time.sleep(1.1)
        body = self.ok(self.put('dps', fresh(), pem=open(pem).read()))
        self.assertEqual(body['properties']['expiry'], enddate_by_openssl(pem))

    def test_bad_bodies(self):
        url = self.url('dps', fresh())
        self.assertIotError(call('PUT', url, b'{not json', token=self.token), 400, 400004, 'BadRequest', '.*')
        self.assertIotError(call('PUT', url, [1, 2], token=self.token), 400, 400004, 'BadRequest', '.*')
        self.assertIotError(call('PUT', url, {'properties': {}}, token=self.token), 400, 400004, 'BadRequest',
                            'The certificate is missing')
        for junk in ('bm90IGEgY2VydA==', '@@@', '-----BEGIN CERTIFICATE-----\r\nAAAA\r\n-----END CERTIFICATE-----'):
            with self.subTest(junk=junk):
                self.assertIotError(call('PUT', url, {'certificate': junk}, token=self.token), 400, 400004,
                                    'BadRequest', 'The certificate is not a valid X509 certificate')
        self.assertEqual(self.ok(self.arm('GET', 'dps'))['value'],
                         [c for c in self.ok(self.arm('GET', 'dps'))['value'] if c['name'] != url])

    def test_certificate_names(self):
        for bad in ('has space', 'x' * 65, 'sl%2Fash', 'caf\u00e9'):
            with self.subTest(bad=bad):
                self.assertIotError(self.put('iothub', bad), 400, 400004, 'BadRequest', 'Certificate name')
        for good in ('a', 'A-b.c_d', 'x' * 64):
            with self.subTest(good=good):
                self.ok(self.put('iothub', good))
        self.ok(self.put('dps', 'x' * 200))
        self.assertIotError(self.put('dps', 'x' * 257), 400, 400004, 'BadRequest', 'Certificate name')


class IfMatchTest(DoubleTest):

    def test_stale_etag_gives_412_with_azure_body(self):
        for service in ('dps', 'iothub'):
            name = fresh(service)
            first = self.ok(self.put(service, name))['etag']
            gen = self.generate(service, name, first)
            code = gen['properties']['verificationCode']
            leaf = encode(self.leaf('/CN=' + code), 'b64pem')
            # The etag from the upload, not the one generateVerificationCode gave.
            r = self.verify(service, name, first, leaf)
            self.assertIotError(r, 412, 412001, 'PreconditionFailed', re.escape('Invalid ETag supplied.'), True)
            for method, action in (('POST', 'generateVerificationCode'), ('DELETE', None)):
                r = self.arm(method, service, name, action, if_match=first)
                self.assertIotError(r, 412, 412001, 'PreconditionFailed', re.escape('Invalid ETag supplied.'), True)
            r = self.put(service, name, if_match=first)
            self.assertIotError(r, 412, 412001, 'PreconditionFailed', re.escape('Invalid ETag supplied.'))
            # Nothing changed: the code still verifies with the right etag.
            self.assertEqual(self.ok(self.arm('GET', service, name))['etag'], gen['etag'])
            self.assertIs(self.ok(self.verify(service, name, gen['etag'], leaf))['properties']['isVerified'], True)

    def test_missing_if_match_gives_412(self):
        name = fresh()
        etag = self.ok(self.put('iothub', name))['etag']
        for method, action, body in (('POST', 'generateVerificationCode', None), ('DELETE', None, None),
                                     ('POST', 'verify', {'certificate': encode(self.ca_text, 'pem')})):
            with self.subTest(method=method, action=action):
                r = self.arm(method, 'iothub', name, action, body=body)
                self.assertIotError(r, 412, 412001, 'PreconditionFailed',
                                    re.escape('Invalid ETag supplied. An ETag is required for this operation.'),
                                    True)
        r = self.put('iothub', name)
        self.assertIotError(r, 412, 412001, 'PreconditionFailed', 'Invalid ETag supplied.')
        self.assertEqual(self.ok(self.arm('GET', 'iothub', name))['etag'], etag)

    def test_star_and_quotes(self):
        name = fresh()
        etag = self.ok(self.put('dps', name))['etag']
        self.assertIotError(self.arm('POST', 'dps', name, 'generateVerificationCode', if_match='"%s"' % etag),
                            412, 412001, 'PreconditionFailed', 'Invalid ETag supplied.')
        self.ok(self.arm('POST', 'dps', name, 'generateVerificationCode', if_match='*'))
        self.assertIotError(self.put('dps', fresh(), if_match=etag), 412, 412001, 'PreconditionFailed',
                            'Invalid ETag supplied.')

    def test_dps_get_honours_if_match(self):
        name = fresh()
        etag = self.ok(self.put('dps', name))['etag']
        self.ok(self.arm('GET', 'dps', name, if_match=etag))
        self.assertEqual(self.arm('GET', 'dps', name, if_match='AAAAAAAAAAA=').status, 412)
        hub = fresh()
        self.ok(self.put('iothub', hub))
        self.ok(self.arm('GET', 'iothub', hub, if_match='AAAAAAAAAAA='))

    def test_operations_on_a_missing_certificate_give_404(self):
        name = fresh()
        for method, action in (('GET', None), ('DELETE', None), ('POST', 'generateVerificationCode'),
                               ('POST', 'verify')):
            with self.subTest(method=method, action=action):
                body = {'certificate': 'x'} if action == 'verify' else None
                self.assertIotError(self.arm(method, 'dps', name, action, body=body, if_match='*'), 404, 404015,
                                    'NotFound', re.escape("Certificate '%s' not found." % name))


class VerifyTest(DoubleTest):

    def assertPopFailed(self, r, why):
        self.assertIotError(r, 400, 400053, 'BadRequest', 'Proof-Of-Possession failed: ' + why)

    def check_refused(self, service, leaf_pem, why, code_of=None):
        name, etag, code = self.ready_for_verify(service)
        r = self.verify(service, name, etag, encode(leaf_pem(code), 'pem'))
        self.assertPopFailed(r, why)
        after = self.ok(self.arm('GET', service, name))
        self.assertIs(after['properties']['isVerified'], False)
        self.assertEqual(after['etag'], etag)   # a refused verify writes nothing
        # The code was not used up: the right certificate still verifies.
        self.ok(self.verify(service, name, etag, encode(self.leaf('/CN=' + code), 'pem')))

    def test_wrong_cn(self):
        self.check_refused('dps', lambda code: self.leaf('/CN=' + code[:-1] + ('0' if code[-1] != '0' else '1')),
                           "the verification certificate's subject")
        self.check_refused('iothub', lambda code: self.leaf('/CN=' + code.lower()), "the verification")
        self.check_refused('dps', lambda code: self.leaf('/CN=%s/O=extra' % code), "the verification")
        self.check_refused('iothub', lambda code: self.leaf('/O=%s' % code), "the verification")

    def test_wrong_signer(self):
        # Same issuer name, other key: with and without the authority key id.
        for akid in (True, False):
            with self.subTest(akid=akid):
                self.check_refused('dps', lambda code: self.leaf('/CN=' + code, self.twin_key, self.twin_pem,
                                                                 akid=akid),
                                   'the verification certificate was not signed by the uploaded certificate')

    def test_wrong_issuer_name(self):
        self.check_refused('iothub', lambda code: self.leaf('/CN=' + code, self.rsa_key, self.rsa_pem),
                           "the issuer certificate 'CN=popsign test RSA CA' cannot be found")

    def test_expired_verification_certificate(self):
        def expired(code):
            pem = self.leaf('/CN=' + code, days=0)
            time.sleep(1.1)
            return pem
        self.check_refused('dps', expired, 'the verification certificate is not valid at this time')

    def test_old_code_after_new_generate(self):
        name, etag, old = self.ready_for_verify('iothub')
        g = self.generate('iothub', name, etag)
        new = g['properties']['verificationCode']
        self.assertNotEqual(new, old)
        self.assertPopFailed(self.verify('iothub', name, g['etag'], encode(self.leaf('/CN=' + old), 'pem')),
                             "the verification certificate's subject 'CN=%s' is not 'CN=%s'" % (old, new))
        self.ok(self.verify('iothub', name, g['etag'], encode(self.leaf('/CN=' + new), 'pem')))

    def test_code_is_single_use(self):
        name, etag, code = self.ready_for_verify('dps')
        leaf = encode(self.leaf('/CN=' + code), 'b64der')
        etag = self.ok(self.verify('dps', name, etag, leaf))['etag']
        self.assertPopFailed(self.verify('dps', name, etag, leaf), 'no verification code is pending')
        state = [c for c in self.d.state()['certificates'] if c['name'] == name][0]
        self.assertEqual(state['verified_with'], code)
        self.assertIsNone(state['verification_code'])

    def test_no_code_yet(self):
        name = fresh()
        etag = self.ok(self.put('dps', name))['etag']
        leaf = self.leaf('/CN=' + 'A' * 48)
        self.assertPopFailed(self.verify('dps', name, etag, encode(leaf, 'pem')), 'no verification code')

    def test_bad_verify_bodies(self):
        name, etag, code = self.ready_for_verify('iothub')
        url = self.url('iothub', name, 'verify')
        for body, msg in ((b'nope', 'The request body is not valid JSON'),
                          ({}, 'The verification certificate is missing'),
                          ({'properties': {'certificate': encode(self.leaf('/CN=' + code), 'pem')}},
                           'The verification certificate is missing'),
                          ({'certificate': 'bm90IGEgY2VydA=='}, 'The verification certificate is not a valid')):
            with self.subTest(body=body):
                r = call('POST', url, body, token=self.token, headers={'If-Match': etag})
                self.assertIotError(r, 400, 400004, 'BadRequest', msg)

    def test_seeded_verified_certificate(self):
        name = fresh()
        self.d.seed_certificate('dps', SUB, RG, DPS, name, self.ca_text, verified=True)
        self.assertIs(self.ok(self.arm('GET', 'dps', name))['properties']['isVerified'], True)
        r = call('POST', self.base + '/_double/certificates',
                 {'service': 'iothub', 'subscription': SUB, 'resource_group': RG, 'parent': HUB,
                  'name': name, 'certificate': encode(self.ca_text, 'b64der')})
        self.assertEqual(r.status, 200, r)
        self.assertIs(self.ok(self.arm('GET', 'iothub', name))['properties']['isVerified'], False)

    def test_next_code_hook(self):
        name = fresh()
        etag = self.ok(self.put('dps', name))['etag']
        call('POST', self.base + '/_double/next-code', {'code': '00DF14B96E8E24DBB613F4BC6027DF1814FC8F051E6B0C39'})
        g = self.generate('dps', name, etag)
        self.assertEqual(g['properties']['verificationCode'], '00DF14B96E8E24DBB613F4BC6027DF1814FC8F051E6B0C39')
        self.assertRegex(self.generate('dps', name, g['etag'])['properties']['verificationCode'], CODE_RE)


class ArmFrontDoorTest(DoubleTest):

    def test_api_version_required(self):
        for service in ('dps', 'iothub'):
            r = self.arm('GET', service, version=False)
            self.assertArmError(r, 400, 'MissingApiVersionParameter',
                                re.escape('The api-version query parameter (?api-version=) is required for all '
                                          'requests.'))
            r = self.arm('PUT', service, fresh(), version=False, body={'certificate': 'x'})
            self.assertArmError(r, 400, 'MissingApiVersionParameter')

    def test_unknown_api_versions(self):
        self.assertArmError(self.arm('GET', 'dps', version='2099-01-01'), 400, 'NoRegisteredProviderFound',
                            "API version '2099-01-01' for type 'provisioningServices'")
        self.assertArmError(self.arm('GET', 'iothub', version='2022-12-12'), 400, 'NoRegisteredProviderFound',
                            "for type 'IotHubs'")
        self.assertArmError(self.arm('GET', 'dps', version='2021-07-02'), 400, 'NoRegisteredProviderFound')
        self.assertArmError(self.arm('GET', 'dps', version='latest'), 400, 'InvalidApiVersionParameter')
        self.assertArmError(self.arm('GET', 'dps', version=''), 400, 'InvalidApiVersionParameter')

    def test_accepted_api_versions(self):
        wanted = {'dps': ['2020-03-01', '2021-10-15', '2022-02-05', '2022-12-12', '2023-03-01-preview',
                          '2025-02-01-preview', '2026-08-01'],
                  'iothub': ['2020-03-01', '2021-03-31', '2021-07-02', '2022-04-30-preview', '2023-06-30']}
        for service, versions in wanted.items():
            self.assertEqual(sorted(azure_double.SERVICES[service]['versions']), sorted(versions))
            for v in versions:
                self.ok(self.arm('GET', service, version=v))

    def test_bearer_token_checked(self):
        www = r'^Bearer authorization_uri="[^"]+", error="invalid_token", error_description="[^"]+"$'
        r = call('GET', self.url('dps'))
        self.assertArmError(r, 401, 'AuthenticationFailed',
                            re.escape("Authentication failed. The 'Authorization' header is missing."))
        self.assertRegex(r.header('WWW-Authenticate'), www)
        r = call('GET', self.url('dps'), headers={'Authorization': 'Basic dXNlcjpwdw=='})
        self.assertArmError(r, 401, 'AuthenticationFailed', 'invalid format')
        r = call('GET', self.url('dps'), headers={'Authorization': 'Bearer'})
        self.assertArmError(r, 401, 'AuthenticationFailed')
        r = call('GET', self.url('iothub'), token='not-a-token-the-double-issued')
        self.assertArmError(r, 401, 'InvalidAuthenticationToken', '^The access token is invalid.$')
        self.assertRegex(r.header('WWW-Authenticate'), www)
        # Authentication comes before the api-version check, as at the ARM front door.
        self.assertArmError(call('GET', self.url('dps', version=False)), 401, 'AuthenticationFailed')
        # The static az-cli token is accepted as it is; so is the scheme in any case.
        self.ok(call('GET', self.url('dps'), token=STATIC_TOKEN))
        self.ok(call('GET', self.url('dps'), headers={'Authorization': 'bearer ' + self.token}))

    def test_expired_token(self):
        tok, life = self.d.issue_token(lifetime=1)
        self.assertEqual(life, 1)
        self.ok(call('GET', self.url('dps'), token=tok))
        time.sleep(1.2)
        self.assertArmError(call('GET', self.url('dps'), token=tok), 401, 'ExpiredAuthenticationToken',
                            r"^The access token expiry UTC time '.+' is earlier than current UTC time '.+'\.$")
        other = self.d.issue_token()[0]
        self.d.expire_tokens()
        self.assertArmError(call('GET', self.url('dps'), token=other), 401, 'ExpiredAuthenticationToken')
        self.ok(call('GET', self.url('dps'), token=STATIC_TOKEN))
        type(self).token = self.d.issue_token()[0]

    def test_unknown_parents(self):
        self.assertArmError(self.arm('GET', 'dps', parent='nope'), 404, 'ResourceNotFound',
                            re.escape("The Resource 'Microsoft.Devices/provisioningServices/nope' under resource "
                                      "group '%s' was not found." % RG))
        self.assertArmError(self.arm('GET', 'iothub', fresh(), parent='nope'), 404, 'ResourceNotFound',
                            "'Microsoft.Devices/IotHubs/nope'")
        self.assertArmError(self.arm('GET', 'dps', rg='other-rg'), 404, 'ResourceGroupNotFound',
                            "Resource group 'other-rg' could not be found.")
        self.assertArmError(self.arm('GET', 'dps', sub='99999999-0000-0000-0000-000000000000'), 404,
                            'SubscriptionNotFound')
        self.assertArmError(self.arm('PUT', 'dps', parent=HUB, name=fresh(), body={'certificate': 'x'}), 404,
                            'ResourceNotFound')

    def test_paths_are_case_insensitive_and_ids_canonical(self):
        name = fresh()
        self.ok(self.put('dps', name))
        url = ('%s/subscriptions/%s/resourcegroups/%s/providers/microsoft.devices/provisioningservices/%s/'
               'certificates/%s?api-version=2022-12-12' % (self.base, SUB, RG.upper(), DPS.upper(), name))
        body = self.ok(call('GET', url, token=self.token))
        self.assertIn('/resourceGroups/%s/providers/Microsoft.Devices/provisioningServices/%s/' % (RG, DPS),
                      body['id'])

    def test_json_content_type_required_for_bodies(self):
        name = fresh()
        value = encode(self.ca_text, 'b64pem')
        for ctype in ('application/x-www-form-urlencoded', 'text/plain'):
            r = call('PUT', self.url('dps', name), json.dumps({'certificate': value}).encode(), token=self.token,
                     headers={'Content-Type': ctype})
            self.assertArmError(r, 415, 'UnsupportedMediaType',
                                re.escape("The content media type '%s' is not supported. Only 'application/json' "
                                          "is supported." % ctype))
        r = call('PUT', self.url('dps', name), json.dumps({'certificate': value}).encode(), token=self.token,
                 headers={'Content-Type': 'application/json; charset=utf-8'})
        etag = self.ok(r)['etag']
        # An empty POST (generateVerificationCode) needs no content type, whatever curl puts there.
        r = call('POST', self.url('dps', name, 'generateVerificationCode'), b'', token=self.token,
                 headers={'If-Match': etag, 'Content-Type': 'application/x-www-form-urlencoded'})
        self.ok(r)

    def test_methods_not_allowed(self):
        self.assertArmError(self.arm('POST', 'dps'), 405, 'MethodNotAllowed')
        self.assertArmError(self.arm('GET', 'dps', fresh(), 'verify'), 405, 'MethodNotAllowed')
        self.assertArmError(self.arm('PATCH', 'iothub', fresh(), body={}), 405, 'MethodNotAllowed')


class AadTest(DoubleTest):

    def token_url(self, tenant=TENANT):
        return '%s/%s/oauth2/v2.0/token' % (self.base, tenant)

    def form(self, **kw):
        f = {'grant_type': 'client_credentials', 'client_id': SECRET_CLIENT, 'client_secret': SECRET,
             'scope': SCOPE}
        f.update(kw)
        return {k: v for k, v in f.items() if v is not None}

    def assertTokenWorks(self, r):
        body = self.ok(r)
        self.assertEqual(sorted(body), ['access_token', 'expires_in', 'ext_expires_in', 'token_type'])
        self.assertEqual(body['token_type'], 'Bearer')
        self.assertIs(type(body['expires_in']), int)
        self.assertEqual(body['expires_in'], 3599)
        self.ok(call('GET', self.url('dps'), token=body['access_token']))
        return body

    def test_client_secret(self):
        self.assertTokenWorks(call('POST', self.token_url(), form=self.form()))

    def test_client_secret_errors(self):
        b = self.assertAadError(call('POST', self.token_url(), form=self.form(client_secret='wrong')), 401,
                                'invalid_client', 7000215)
        self.assertIn('Invalid client secret provided.', b['error_description'])
        self.assertNotIn('wrong', b['error_description'])
        self.assertAadError(call('POST', self.token_url(), form=self.form(client_id=OTHER_TENANT_CLIENT)), 400,
                            'unauthorized_client', 700016)
        self.assertAadError(call('POST', self.token_url('no-such-tenant'), form=self.form()), 400,
                            'invalid_request', 90002)
        self.assertAadError(call('POST', self.token_url(), form=self.form(scope='https://management.azure.com')),
                            400, 'invalid_scope', 1002012)
        self.assertAadError(call('POST', self.token_url(), form=self.form(scope='https://vault.azure.net/.default')),
                            400, 'invalid_resource', 500011)
        self.assertAadError(call('POST', self.token_url(), form=self.form(scope=None)), 400, 'invalid_request',
                            900144)
        self.assertAadError(call('POST', self.token_url(), form=self.form(grant_type='password')), 400,
                            'unsupported_grant_type', 70003)
        self.assertAadError(call('POST', self.token_url(), form=self.form(client_secret=None)), 400,
                            'invalid_request', 7000216)
        self.assertAadError(call('POST', self.token_url(), body={'grant_type': 'client_credentials'}), 400,
                            'invalid_request', 9002313)
        self.assertAadError(call('GET', self.token_url()), 400, 'invalid_request', 9002313)
        # The certificate-only client has no secret.
        self.assertAadError(call('POST', self.token_url(), form=self.form(client_id=CERT_CLIENT)), 401,
                            'invalid_client', 7000215)

    def assertion_form(self, assertion, **kw):
        f = dict(client_id=CERT_CLIENT, client_secret=None, client_assertion=assertion,
                 client_assertion_type='urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
        f.update(kw)
        return self.form(**f)

    def assertion(self, **kw):
        kw.setdefault('key_path', self.app_key)
        kw.setdefault('cert_path', self.app_pem)
        kw.setdefault('client_id', CERT_CLIENT)
        kw.setdefault('aud', self.token_url())
        return make_assertion(**kw)

    def test_client_assertion(self):
        self.assertTokenWorks(call('POST', self.token_url(), form=self.assertion_form(self.assertion())))
        now = int(time.time())
        # nbf and iat are optional; the audience may be a list holding the endpoint.
        a = self.assertion(drop=('nbf', 'iat'), claims={'aud': [self.token_url()]})
        self.assertTokenWorks(call('POST', self.token_url(), form=self.assertion_form(a)))
        a = self.assertion(claims={'nbf': now + 200, 'iat': now + 200})   # within the clock skew
        self.assertTokenWorks(call('POST', self.token_url(), form=self.assertion_form(a)))

    def test_client_assertion_errors(self):
        now = int(time.time())
        cases = [
            ('signed by another key', self.assertion(key_path=self.other_app_key), 700027, 'did not match'),
            ('unknown x5t', self.assertion(cert_path=self.other_app_pem, key_path=self.other_app_key), 700027,
             'The key was not found'),
            ('no x5t', self.assertion(header={'x5t': None}), 700027, 'The key was not found'),
            ('audience', self.assertion(aud='https://login.microsoftonline.com/%s/oauth2/v2.0/token' % TENANT),
             50027, 'audience'),
            ('issuer', self.assertion(claims={'iss': SECRET_CLIENT}), 700021, "doesn't match"),
            ('subject', self.assertion(claims={'sub': 'someone'}), 700021, "doesn't match"),
            ('no jti', self.assertion(drop=('jti',)), 50027, 'jti'),
            ('expired', self.assertion(claims={'exp': now - 5, 'nbf': now - 600, 'iat': now - 600}), 700024,
             'valid time range'),
            ('no exp', self.assertion(drop=('exp',)), 50027, 'exp is required'),
            ('nbf in the future', self.assertion(claims={'nbf': now + 900, 'exp': now + 1800}), 700024,
             'valid time range'),
            ('iat in the future', self.assertion(claims={'iat': now + 900, 'exp': now + 1800}), 700024,
             'valid time range'),
            ('HS256', self.assertion(header={'alg': 'HS256'}), 50027, 'alg must be RS256'),
            ('malformed', 'a.b', 50027, 'malformed'),
            ('tampered', self.assertion()[:-4] + 'AAAA', 700027, 'did not match'),
        ]
        for what, assertion, code, text in cases:
            with self.subTest(what):
                b = self.assertAadError(call('POST', self.token_url(), form=self.assertion_form(assertion)),
                                        400 if code == 9002313 else 401, 'invalid_client', code)
                self.assertIn(text, b['error_description'])
        f = self.assertion_form(self.assertion())
        f['client_assertion_type'] = 'jwt'
        self.assertAadError(call('POST', self.token_url(), form=f), 400, 'invalid_request', 9002313)
        f = self.assertion_form(self.assertion(), client_secret=SECRET)
        self.assertAadError(call('POST', self.token_url(), form=f), 400, 'invalid_request', 9002313)
        # The secret client has no certificate registered.
        f = self.form(client_secret=None, client_assertion=self.assertion(client_id=SECRET_CLIENT),
                      client_assertion_type='urn:ietf:params:oauth:client-assertion-type:jwt-bearer')
        self.assertAadError(call('POST', self.token_url(), form=f), 401, 'invalid_client', 700027)

    def test_token_lifetime_control(self):
        self.d.set_token_lifetime(2)
        try:
            body = self.ok(call('POST', self.token_url(), form=self.form()))
            self.assertEqual(body['expires_in'], 2)
            self.ok(call('GET', self.url('dps'), token=body['access_token']))
            time.sleep(2.2)
            self.assertArmError(call('GET', self.url('dps'), token=body['access_token']), 401,
                                'ExpiredAuthenticationToken')
        finally:
            self.d.set_token_lifetime(3599)


class ImdsTest(DoubleTest):

    def imds(self, headers={'Metadata': 'true'}, **query):
        q = {'api-version': '2018-02-01', 'resource': 'https://management.azure.com/'}
        q.update(query)
        q = {k: v for k, v in q.items() if v is not None}
        return call('GET', self.base + '/metadata/identity/oauth2/token?' + azure_double.urllib.parse.urlencode(q),
                    headers=headers)

    def test_metadata_header_required(self):
        for headers in ({}, {'Metadata': 'false'}):
            r = self.imds(headers=headers)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json(), {'error': 'invalid_request',
                                        'error_description': 'Required metadata header not specified'})

    def test_system_and_user_assigned(self):
        for client_id, expect in ((None, MI_SYSTEM), (MI_USER, MI_USER), (MI_SYSTEM, MI_SYSTEM)):
            with self.subTest(client_id=client_id):
                before = int(time.time())
                body = self.ok(self.imds(client_id=client_id))
                for k in ('access_token', 'expires_in', 'expires_on', 'resource', 'token_type'):
                    self.assertIsInstance(body[k], str)
                self.assertEqual(body['expires_in'], '3599')
                self.assertTrue(before + 3599 <= int(body['expires_on']) <= int(time.time()) + 3599)
                self.assertEqual(body['resource'], 'https://management.azure.com/')
                self.assertEqual(body['token_type'], 'Bearer')
                self.assertEqual(body['client_id'], expect)
                self.ok(call('GET', self.url('iothub'), token=body['access_token']))

    def test_errors(self):
        r = self.imds(client_id='77777777-7777-7777-7777-777777777777')
        self.assertEqual((r.status, r.json()), (400, {'error': 'invalid_request',
                                                      'error_description': 'Identity not found'}))
        r = self.imds(resource=None)
        self.assertEqual(r.status, 400)
        self.assertIn("'resource'", r.json()['error_description'])
        self.assertEqual(self.imds(**{'api-version': None}).status, 400)
        self.assertEqual(self.imds(resource='https://vault.azure.net').json()['error'], 'invalid_resource')
        self.assertEqual(self.ok(self.imds(resource='https://management.azure.com'))['resource'],
                         'https://management.azure.com')


class FaultTest(DoubleTest):

    def test_status_with_retry_after(self):
        rid = self.d.add_fault(method='GET', path=r'/certificates$', status=429, retry_after=2, count=2)
        for _ in range(2):
            r = self.arm('GET', 'dps')
            self.assertArmError(r, 429, 'TooManyRequests')
            self.assertEqual(r.header('Retry-After'), '2')
        self.ok(self.arm('GET', 'dps'))
        self.assertEqual(self.d.faults(), [])
        log = self.d.requests()
        self.assertEqual([e['fault'] for e in log[-3:]], [rid, rid, None])
        self.assertEqual([e['status'] for e in log[-3:]], [429, 429, 200])

    def test_custom_body_and_method_filter(self):
        self.d.add_fault(method='POST', path='verify$', status=500, body={'code': 500000, 'message': 'boom'},
                         count=-1)
        name, etag, code = self.ready_for_verify('iothub')      # PUT and generate are not affected
        for _ in range(3):
            r = self.verify('iothub', name, etag, encode(self.leaf('/CN=' + code), 'pem'))
            self.assertEqual((r.status, r.json()), (500, {'code': 500000, 'message': 'boom'}))
        self.d.clear_faults()
        self.ok(self.verify('iothub', name, etag, encode(self.leaf('/CN=' + code), 'pem')))

    def test_raw_body_and_content_type(self):
        self.d.add_fault(path='/certificates', status=502, body='<html>bad gateway</html>',
                         content_type='text/html')
        r = self.arm('GET', 'dps')
        self.assertEqual((r.status, r.body, r.header('Content-Type')), (502, b'<html>bad gateway</html>',
                                                                         'text/html'))

    def test_drop_connection(self):
        self.d.add_fault(method='GET', count=1)
        self.d.clear_faults()
        self.d.add_fault(action='drop', path='/certificates$')
        with self.assertRaises(OSError):
            self.arm('GET', 'dps')
        self.ok(self.arm('GET', 'dps'))
        self.assertTrue(self.d.requests()[-2]['dropped'])

    def test_drop_after_processing(self):
        name = fresh()
        etag = self.ok(self.put('dps', name))['etag']
        self.d.add_fault(action='drop_after', path='generateVerificationCode$')
        with self.assertRaises(OSError):
            self.arm('POST', 'dps', name, 'generateVerificationCode', if_match=etag)
        # The code was issued and the etag moved on although no answer came back.
        now = self.ok(self.arm('GET', 'dps', name))
        self.assertNotEqual(now['etag'], etag)
        self.assertIotError(self.arm('POST', 'dps', name, 'generateVerificationCode', if_match=etag), 412,
                            412001, 'PreconditionFailed', 'Invalid ETag supplied.')

    def test_delay(self):
        self.d.add_fault(action='delay', delay=0.5, path='/certificates$')
        t = time.monotonic()
        self.ok(self.arm('GET', 'dps'))
        self.assertGreaterEqual(time.monotonic() - t, 0.5)

    def test_stale_etag_once(self):
        name, etag, code = self.ready_for_verify('dps')
        self.d.stale_etag()
        leaf = encode(self.leaf('/CN=' + code), 'pem')
        self.assertIotError(self.verify('dps', name, etag, leaf), 412, 412001, 'PreconditionFailed',
                            'Invalid ETag supplied.')
        fresh_etag = self.ok(self.arm('GET', 'dps', name))['etag']
        self.assertNotEqual(fresh_etag, etag)
        # Someone else's write did not use up the code.
        self.ok(self.verify('dps', name, fresh_etag, leaf))

    def test_stale_etag_always(self):
        name = fresh()
        self.ok(self.put('iothub', name))
        self.d.stale_etag(count=-1, path='generateVerificationCode$')
        for _ in range(4):
            etag = self.ok(self.arm('GET', 'iothub', name))['etag']
            self.assertEqual(self.arm('POST', 'iothub', name, 'generateVerificationCode', if_match=etag).status,
                             412)
        self.d.clear_faults()
        etag = self.ok(self.arm('GET', 'iothub', name))['etag']
        self.generate('iothub', name, etag)

    def test_stale_etag_only_counts_checks(self):
        name = fresh()
        etag = self.ok(self.put('iothub', name))['etag']
        self.d.stale_etag()
        self.ok(self.arm('GET', 'iothub', name))        # no If-Match check: the rule waits
        self.ok(self.arm('GET', 'iothub'))
        self.assertEqual(len(self.d.faults()), 1)
        self.assertEqual(self.arm('DELETE', 'iothub', name, if_match=etag).status, 412)
        self.assertEqual(self.d.faults(), [])

    def test_aad_error(self):
        url = '%s/%s/oauth2/v2.0/token' % (self.base, TENANT)
        form = {'grant_type': 'client_credentials', 'client_id': SECRET_CLIENT, 'client_secret': SECRET,
                'scope': SCOPE}
        self.d.fail_aad(700016)
        self.assertAadError(call('POST', url, form=form), 400, 'unauthorized_client', 700016)
        self.ok(call('POST', url, form=form))
        r = call('POST', self.base + '/_double/faults', {'action': 'aad_error', 'aadsts': 7000215,
                                                         'path': 'oauth2'})
        self.assertEqual(r.status, 200, r)
        self.assertAadError(call('POST', url, form=form), 401, 'invalid_client', 7000215)
        self.d.add_fault(path='oauth2', status=503, retry_after=1)
        r = call('POST', url, form=form)
        self.assertEqual((r.status, r.header('Retry-After')), (503, '1'))
        self.assertIn('error_codes', r.json())
        self.ok(call('POST', url, form=form))

    def test_http_control_api(self):
        r = call('POST', self.base + '/_double/faults', [{'status': 500, 'path': 'certificates$'},
                                                          {'action': 'drop', 'path': 'nothing-matches'}])
        ids = r.json()['ids']
        self.assertEqual(len(ids), 2)
        self.assertEqual([f['id'] for f in call('GET', self.base + '/_double/faults').json()['faults']], ids)
        self.assertEqual(self.arm('GET', 'dps').status, 500)
        self.assertEqual(call('DELETE', self.base + '/_double/faults').status, 200)
        self.assertEqual(self.d.faults(), [])
        self.assertEqual(call('POST', self.base + '/_double/faults', {'bogus': 1}).status, 400)
        self.assertEqual(call('POST', self.base + '/_double/faults', {'action': 'explode'}).status, 400)
        self.assertEqual(call('GET', self.base + '/_double/nothing').status, 404)
        # Tokens, expiry and config through HTTP.
        tok = call('POST', self.base + '/_double/tokens', {'lifetime': 60}).json()
        self.assertEqual(tok['expires_in'], 60)
        self.ok(call('GET', self.url('dps'), token=tok['access_token']))
        r = call('POST', self.base + '/_double/config', {'resources': [
            {'subscription': SUB, 'resource_group': 'rg2', 'dps': ['dps2']}], 'static_tokens': ['extra']})
        self.assertEqual(r.status, 200)
        self.ok(call('GET', self.url('dps', rg='rg2', parent='dps2'), token='extra'))

    def test_log(self):
        call('DELETE', self.base + '/_double/log')
        name = fresh()
        self.put('dps', name)
        etag = self.ok(self.arm('GET', 'dps', name))['etag']
        call('GET', self.url('dps'))
        call('POST', '%s/%s/oauth2/v2.0/token' % (self.base, TENANT),
             form={'grant_type': 'client_credentials', 'client_id': SECRET_CLIENT, 'client_secret': SECRET,
                   'scope': SCOPE})
        self.arm('POST', 'dps', name, 'generateVerificationCode', if_match=etag)
        log = call('GET', self.base + '/_double/log').json()['requests']
        self.assertEqual([(e['method'], e['status']) for e in log],
                         [('PUT', 200), ('GET', 200), ('GET', 401), ('POST', 200), ('POST', 200)])
        put = log[0]
        self.assertEqual(put['query'], {'api-version': ['2022-12-12']})
        self.assertEqual(put['headers']['Authorization'], '<redacted>')
        self.assertEqual(put['authorization']['present'], True)
        self.assertEqual(put['authorization']['token_id'], 't1')
        self.assertIn(encode(self.ca_text, 'b64pem'), put['body'])
        self.assertEqual(log[2]['authorization'], {'present': False})
        self.assertEqual(log[3]['form']['client_secret'], ['<redacted>'])
        self.assertIsNone(log[3]['body'])
        self.assertEqual(log[4]['headers']['If-Match'], etag)
        text = json.dumps(log)
        self.assertNotIn(self.token, text)
        self.assertNotIn(SECRET, text)
        self.assertEqual([e['seq'] for e in log], [1, 2, 3, 4, 5])

    def test_state(self):
        name = fresh()
        self.put('iothub', name)
        state = call('GET', self.base + '/_double/state').json()
        mine = [c for c in state['certificates'] if c['name'] == name]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]['thumbprint'], thumbprint_by_openssl(self.ca_pem))
        self.assertEqual(mine[0]['service'], 'iothub')
        with open(self.state_file) as f:
            self.assertIn(name, [c['name'] for c in json.load(f)['certificates']])

    def test_keep_alive_and_expect_continue(self):
        import http.client
        import socket
        conn = http.client.HTTPConnection('127.0.0.1', self.d.port, timeout=10)
        path = self.url('dps')[len(self.base):]
        for _ in range(3):
            conn.request('GET', path, headers={'Authorization': 'Bearer ' + self.token})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.getheader('Connection'))
            r.read()
        conn.close()
        # libcurl sends "Expect: 100-continue" before larger bodies and waits for the 100.
        body = json.dumps({'properties': {'certificate': encode(self.rsa_text, 'b64pem')}}).encode()
        name = fresh()
        with socket.create_connection(('127.0.0.1', self.d.port), timeout=10) as sock:
            head = ('PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n'
                    'Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n' % (
                        self.url('dps', name)[len(self.base):], self.d.port, self.token, len(body)))
            sock.sendall(head.encode())
            f = sock.makefile('rb')
            self.assertEqual(f.readline(), b'HTTP/1.1 100 Continue\r\n')
            self.assertEqual(f.readline(), b'\r\n')
            sock.sendall(body)
            self.assertEqual(f.readline(), b'HTTP/1.1 200 OK\r\n')
        self.assertEqual(self.ok(self.arm('GET', 'dps', name))['properties']['thumbprint'],
                         thumbprint_by_openssl(self.rsa_pem))

    def test_keep_alive_off(self):
        self.d.add_config({'keep_alive': False})
        try:
            r = self.arm('GET', 'dps')
            self.assertEqual(r.header('Connection'), 'close')
        finally:
            self.d.add_config({'keep_alive': True})
        self.assertIsNone(self.arm('GET', 'dps').header('Connection'))

    def test_reset(self):
        d = azure_double.AzureDouble().start()
        try:
            tok = d.issue_token()[0]
            self.assertEqual(call('PUT', certs_url(d.url, 'dps', 'c'), {'certificate': encode(self.ca_text, 'pem')},
                                  token=tok).status, 200)
            d.add_fault(status=500, path='nothing')
            self.assertEqual(call('POST', d.url + '/_double/reset').status, 200)
            self.assertEqual(d.state(), {'certificates': [], 'verified_upload_attempts': []})
            self.assertEqual((d.faults(), d.requests()), ([], []))
            self.assertEqual(call('GET', certs_url(d.url, 'dps'), token=tok).json(), {'value': []})
        finally:
            d.stop()

    def test_control_secret(self):
        d = azure_double.AzureDouble(control_secret='s3').start()
        try:
            self.assertEqual(call('GET', d.url + '/_double/state').status, 403)
            self.assertEqual(call('GET', d.url + '/_double/state', headers={'X-Double-Secret': 'x'}).status, 403)
            self.assertEqual(call('GET', d.url + '/_double/state', headers={'X-Double-Secret': 's3'}).status, 200)
        finally:
            d.stop()


class ProgramTest(unittest.TestCase):
    """azure_double.py as a program: the listening line, the state file, SIGTERM."""

    def start(self, *args):
        proc = subprocess.Popen([sys.executable, DOUBLE_PY, '--port', '0'] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        m = re.fullmatch(r'listening on 127\.0\.0\.1:(\d+)\n', line)
        if not m:
            proc.kill()
            self.fail('no listening line: %r %r' % (line, proc.stderr.read()))
        return proc, 'http://127.0.0.1:' + m.group(1)

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        proc.stdout.close()
        proc.stderr.close()

    def test_program(self):
        tmp = tempfile.mkdtemp(prefix='azure-double-prog-')
        self.addCleanup(shutil.rmtree, tmp, True)
        _, ca = make_ca(tmp, 'ca')
        config = os.path.join(tmp, 'config.json')
        with open(config, 'w') as f:
            json.dump({'tenants': ['t1'], 'static_tokens': ['tok'],
                       'resources': [{'subscription': 's1', 'resource_group': 'g1', 'iothub': ['h1']}]}, f)
        state, logf = os.path.join(tmp, 'state.json'), os.path.join(tmp, 'log.jsonl')
        proc, base = self.start('--config', config, '--state-file', state, '--log-file', logf)
        url = certs_url(base, 'iothub', 'c1', sub='s1', rg='g1', parent='h1')
        r = call('PUT', url, {'certificate': encode(open(ca).read(), 'pem')}, token='tok')
        self.assertEqual(r.status, 200, r)
        etag = r.json()['etag']
        # Only what the config lists exists.
        self.assertEqual(call('GET', certs_url(base, 'dps'), token='tok').status, 404)
        self.assertEqual(call('GET', certs_url(base, 'dps'), token=STATIC_TOKEN).status, 401)
        self.stop(proc)
        with open(logf) as f:
            lines = [json.loads(x) for x in f]
        self.assertEqual([(e['method'], e['status']) for e in lines], [('PUT', 200), ('GET', 404), ('GET', 401)])
        # The state file brings the certificate back after a restart.
        proc, base = self.start('--config', config, '--state-file', state)
        url = certs_url(base, 'iothub', 'c1', sub='s1', rg='g1', parent='h1')
        r = call('GET', url, token='tok')
        self.assertEqual((r.status, r.json()['etag']), (200, etag))
        self.stop(proc)


if __name__ == '__main__':
    unittest.main(verbosity=2)
