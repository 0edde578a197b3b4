"""The double answers as the recorded Azure sessions show.

Every certificate operation in ../shared/azure/recordings/ (the .NET JSON
recordings and the azure-cli YAML cassettes) is replayed, in order, against a
fresh double that holds the recording's subscription, resource group and
DPS/hub.  The requests are the recorded ones, with two substitutions: If-Match
carries the double's etag in place of the recorded one, and a certificate the
recorder replaced with "Sanitized" is put back from the other recordings (by
thumbprint).  generateVerificationCode is told to hand out the recorded code, so
the recorded verification certificates, signed by keys nobody here holds, must
pass the double's real proof-of-possession check.

Each answer is compared with the recorded one: status, Content-Type, key names
and their order, JSON types, the values that do not depend on time or chance
(subject, thumbprint, expiry, isVerified, id, name, type, verification code),
what "certificate" holds relative to the upload (null, the upload echoed, or
base64 DER), whether "created" is the year-0001 placeholder, whether the etag
changed, and the error message with its correlation id and timestamp masked.

Operations that are not certificate operations (creating resource groups,
DPS and hubs, polling) are outside the double and are counted, not replayed.
"""

import base64
import hashlib
import os
import re
import unittest

import recordings
from testlib import azure_double, call

TOKEN = 'recorded-session-token'
ZERO = 'Mon, 01 Jan 0001 00:00:00 GMT'
RFC1123_RE = re.compile(r'^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$')
# The azure-cli recorder replaced random names in response bodies (README caveat).
CLI_NAME_RE = re.compile(r'^TESTCERT\d{6}$')

# What the recordings hold; if a file goes missing or changes, this test says so.
EXPECTED = {
    'net-track1-dps/DeviceProvisioningClientCertificates/CreateAndDelete.json':
        ['put', 'list', 'list', 'generate', 'delete'],
    'net-track1-iothub/IotHubLifeCycleTests/TestIotHubCertificateLifeCycle.json':
        ['put', 'list', 'list', 'get', 'generate', 'delete'],
    'net-track2-dps/DpsCertificateTests/DpsCertificateOperations.json':
        ['put', 'get', 'get', 'list', 'delete', 'get'],
    'net-track2-iothub/CertificateDescriptionTests/Delete.json':
        ['put', 'get', 'delete', 'get'],
    'azure-cli/test_certificate_lifecycle.yaml':
        ['list', 'put', 'list', 'get', 'generate', 'verify', 'delete'],
    'azure-cli/test_dps_certificate_lifecycle.yaml':
        ['list', 'put', 'list', 'put', 'list', 'get', 'list', 'put', 'generate', 'verify', 'delete', 'delete'],
}


def upload_value(body):
    body = body or {}
    return body['properties'].get('certificate') if isinstance(body.get('properties'), dict) \
        else body.get('certificate')


class ConformanceTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        root = recordings.recordings_dir()
        if not os.path.isdir(root):
            raise RuntimeError('no recordings at %s: set SHARED_DIR to the shared folder' % root)
        cls.sessions = {s.name: s for s in recordings.load_all(root)}
        # Every certificate embedded in a request, by thumbprint, to undo "Sanitized".
        cls.by_thumbprint = {}
        for s in cls.sessions.values():
            for i in s.interactions:
                op = recordings.certificate_operation(i)
                if op and op[5] in ('put', 'verify'):
                    try:
                        der = azure_double.certificate_value_to_der(upload_value(i.req_json()))
                    except ValueError:
                        continue
                    cls.by_thumbprint[hashlib.sha1(der).hexdigest().upper()] = der

    def test_recordings_are_the_expected_ones(self):
        self.assertEqual(sorted(self.sessions), sorted(EXPECTED))
        for name, ops in EXPECTED.items():
            got = [recordings.certificate_operation(i) for i in self.sessions[name].interactions]
            self.assertEqual([o[5] for o in got if o], ops, name)
        self.assertEqual(len(self.by_thumbprint), 6)    # 4 uploaded CAs, 2 verification certificates

    def test_net_track1_dps(self):
        self.replay('net-track1-dps/DeviceProvisioningClientCertificates/CreateAndDelete.json')

    def test_net_track1_iothub(self):
        self.replay('net-track1-iothub/IotHubLifeCycleTests/TestIotHubCertificateLifeCycle.json')

    def test_net_track2_dps(self):
        self.replay('net-track2-dps/DpsCertificateTests/DpsCertificateOperations.json')

    def test_net_track2_iothub(self):
        self.replay('net-track2-iothub/CertificateDescriptionTests/Delete.json')

    def test_azure_cli_iothub(self):
        self.replay('azure-cli/test_certificate_lifecycle.yaml')

    def test_azure_cli_dps(self):
        self.replay('azure-cli/test_dps_certificate_lifecycle.yaml')

    # -- replay ------------------------------------------------------------

    def replay(self, name):
        session = self.sessions[name]
        steps = [(recordings.certificate_operation(i), i) for i in session.interactions]
        steps = [(op, i) for op, i in steps if op]
        parents = {(op[0], op[1], op[2], op[3]) for op, _ in steps}
        config = {'tenants': [], 'static_tokens': [TOKEN], 'verify_check_time': False,
                  'resources': [{'subscription': sub, 'resource_group': rg, service: [parent]}
                                for service, sub, rg, parent in parents]}
        d = azure_double.AzureDouble(config).start()
        self.addCleanup(d.stop)
        self.etag_map = {}
        self.last = {}          # certificate name -> (recorded etag, double's etag)
        self.uploads = {}       # certificate name -> (recorded upload, upload sent to the double)
        for n, (op, inter) in enumerate(steps):
            with self.subTest(step=n, op=op[5], uri=inter.path):
                self.step(d, op, inter)
        for service, sub, rg, parent in parents:
            r = call('GET', '%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s/certificates'
                     '?api-version=%s' % (d.url, sub, rg, azure_double.SERVICES[service]['segment'], parent,
                                          steps[0][1].api_version), token=TOKEN)
            self.assertEqual((r.status, r.json()), (200, {'value': []}), 'every recording ends with no certificate')

    def step(self, d, op, inter):
        service, _, _, _, cert_name, kind = op
        headers = {}
        if 'if-match' in inter.req_headers:
            recorded = inter.req_headers['if-match']
            self.assertIn(recorded, self.etag_map, 'If-Match of an etag the double never gave')
            headers['If-Match'] = self.etag_map[recorded]
        body = inter.req_body.encode() if inter.req_body else None
        if kind == 'put':
            body = self.put_body(inter, cert_name)
        if kind == 'generate':
            d.set_next_verification_code(inter.resp_json()['properties']['verificationCode'])
        url = d.url + inter.path + '?api-version=' + inter.api_version
        r = call(inter.method, url, body=body, headers=headers, token=TOKEN)
        self.assertEqual(r.status, inter.status, r)
        rec_type = inter.resp_headers.get('content-type')
        if rec_type:
            self.assertEqual(r.header('Content-Type'), rec_type)
        if not inter.resp_body or inter.resp_body == 'null':
            self.assertEqual(r.body, b'')
            self.assertIsNone(r.header('Content-Type'))
            return
        rec, act = inter.resp_json(), r.json()
        if inter.status >= 400:
            self.compare_error(rec, act)
        elif kind == 'list':
            self.compare_list(rec, act, service, inter.api_version)
        else:
            self.compare_resource(rec, act, service, inter.api_version, kind)

    def put_body(self, inter, cert_name):
        body = inter.req_json()
        value = upload_value(body)
        sent = value
        if value == 'Sanitized':
            thumb = inter.resp_json()['properties']['thumbprint']
            sent = base64.b64encode(self.by_thumbprint[thumb]).decode()
            if isinstance(body.get('properties'), dict):
                body['properties']['certificate'] = sent
            else:
                body['certificate'] = sent
        self.uploads[cert_name] = (value, sent)
        return azure_double.json.dumps(body).encode()

    # -- comparisons ---------------------------------------------------------

    def compare_error(self, rec, act):
        self.assertEqual(list(act), list(rec))
        self.assertEqual(type(act['code']), type(rec['code']))
        self.assertEqual(act['code'], rec['code'])
        self.assertEqual(act['httpStatusCode'], rec['httpStatusCode'])
        pattern = re.escape(rec['message'])
        pattern = re.sub(r'[0-9a-f]{8}\\-[0-9a-f]{4}\\-[0-9a-f]{4}\\-[0-9a-f]{4}\\-[0-9a-f]{12}', '[0-9a-f-]{36}',
                         pattern)
        pattern = re.sub(r'\d{4}\\-\d\d\\-\d\d\\ \d\d:\d\d:\d\dZ', r'\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ',
                         pattern)
        self.assertRegex(act['message'], '^' + pattern + '$')

    def compare_list(self, rec, act, service, version):
        self.assertEqual(list(act), list(rec))
        self.assertIsInstance(act['value'], list)
        names = {item['name']: item for item in act['value']}
        for item in rec['value']:
            self.assertIn(item['name'], names)
            self.compare_resource(item, names[item['name']], service, version, 'list')

    def compare_resource(self, rec, act, service, version, kind):
        self.assertEqual(list(act), list(rec))
        rp, ap = rec['properties'], act['properties']
        self.assertEqual(list(ap), list(rp))
        for k in rp:
            self.assertIs(type(ap[k]), type(rp[k]), k)
        for k in ('thumbprint', 'expiry', 'isVerified', 'verificationCode'):
            if k in rp:
                self.assertEqual(ap[k], rp[k], k)
        if CLI_NAME_RE.match(rp['subject']):
            self.assertTrue(ap['subject'].startswith('TESTCERT'), ap['subject'])
        else:
            self.assertEqual(ap['subject'], rp['subject'])
        for k in ('id', 'name', 'type'):
            self.assertEqual(act[k], rec[k], k)
        self.assertEqual(ap['created'] == ZERO, rp['created'] == ZERO, 'created')
        self.assertRegex(ap['created'], RFC1123_RE)
        self.assertRegex(ap['updated'], RFC1123_RE)
        self.compare_certificate(rp['certificate'], ap['certificate'], rec['name'])
        # The etag: opaque base64; it changes exactly when the recorded one did.
        base64.b64decode(act['etag'], validate=True)
        before = self.last.get(rec['name'])
        if before:
            self.assertEqual(act['etag'] != before[1], rec['etag'] != before[0], 'etag change')
        self.last[rec['name']] = (rec['etag'], act['etag'])
        self.etag_map[rec['etag']] = act['etag']

    def compare_certificate(self, rec_value, act_value, cert_name):
        rec_upload, sent = self.uploads[cert_name]
        if rec_value is None:
            self.assertIsNone(act_value)
        elif rec_value == 'Sanitized':
            self.assertIsInstance(act_value, str)   # the recorder hid a string
        elif rec_value == rec_upload:
            self.assertEqual(act_value, sent, 'the upload, echoed')
        else:
            der = azure_double.certificate_value_to_der(rec_upload)
            self.assertEqual(rec_value, base64.b64encode(der).decode(), 'recorded: base64 DER of the upload')
            self.assertEqual(act_value, base64.b64encode(azure_double.certificate_value_to_der(sent)).decode())


if __name__ == '__main__':
    unittest.main(verbosity=2)
