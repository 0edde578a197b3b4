#!/usr/bin/env python3
"""A test double of the Azure services popsign talks to, on one loopback port.

- Azure Resource Manager: the six certificate operations of DPS
  (Microsoft.Devices/provisioningServices) and IoT Hub (Microsoft.Devices/IotHubs).
- Azure AD: POST /{tenant}/oauth2/v2.0/token (client secret or signed JWT
  client assertion).
- The managed-identity metadata endpoint: GET /metadata/identity/oauth2/token.
- A test-only control API under /_double/ (faults, request log, state).

Behaviour follows the observed facts in ../shared/azure/README.md; where the
facts are silent the choice made here is listed in tests/fakes/azure/README.md.
X.509 and signature work is done by the openssl command line: the standard
library has no X.509.

Python 3 standard library only.  Run it as a program:

    python3 azure_double.py --port 0 [--config F] [--state-file F] [--log-file F]

It prints "listening on 127.0.0.1:PORT" and serves until SIGTERM or SIGINT.
Or use it in process:

    with AzureDouble() as d:
        d.url ...
"""

import argparse
import base64
import binascii
import calendar
import copy
import email.utils
import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

# ---------------------------------------------------------------------------
# What the service accepts

MANAGEMENT_SCOPE = 'https://management.azure.com/.default'
MANAGEMENT_RESOURCES = ('https://management.azure.com/', 'https://management.azure.com')
ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
CLOCK_SKEW = 300
MAX_BODY = 1 << 20
CERT_NAME_RE = re.compile(r'^[A-Za-z0-9-._]{1,64}$')      # IoT Hub swagger
DPS_CERT_NAME_MAX = 256                                    # DPS swagger maxLength
API_VERSION_SYNTAX = re.compile(r'^\d{4}-\d{2}-\d{2}(-preview|-privatepreview|-beta|-alpha)?$')
ZERO_TIME = 'Mon, 01 Jan 0001 00:00:00 GMT'

# What "certificate" holds in a response, per api-version and operation
# (fact 13).  null: JSON null; echo: the string as uploaded; der: base64 of
# the DER.  Versions without a recording copy their nearest recorded neighbour;
# README.md says which cells are recorded and which are chosen.
#               put     get/list  generate  verify   created
SERVICES = {
    'dps': {
        'segment': 'provisioningServices',
        'type': 'Microsoft.Devices/provisioningServices/Certificates',
        'label': 'provisioningServices',
        'versions': {
            '2020-03-01':         ('null', 'null', 'der',  'null', 'real'),
            '2021-10-15':         ('null', 'null', 'echo', 'null', 'zero'),
            '2022-02-05':         ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2022-12-12':         ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2023-03-01-preview': ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2025-02-01-preview': ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2026-08-01':         ('echo', 'echo', 'echo', 'echo', 'zero'),
        },
    },
    'iothub': {
        'segment': 'IotHubs',
        'type': 'Microsoft.Devices/IotHubs/Certificates',
        'label': 'IotHubs',
        'versions': {
            '2020-03-01':         ('null', 'null', 'der',  'der',  'real'),
            '2021-03-31':         ('echo', 'der',  'der',  'der',  'real'),
            '2021-07-02':         ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2022-04-30-preview': ('echo', 'echo', 'echo', 'echo', 'zero'),
            '2023-06-30':         ('echo', 'echo', 'echo', 'echo', 'zero'),
        },
    },
}
OPERATION_COLUMN = {'put': 0, 'get': 1, 'list': 1, 'generate': 2, 'verify': 3}

DEFAULT_CONFIG = {
    'tenants': ['11111111-1111-1111-1111-111111111111'],
    'clients': [
        {'tenant': '11111111-1111-1111-1111-111111111111',
         'client_id': '22222222-2222-2222-2222-222222222222',
         'secret': 'double-client-secret'},
    ],
    'managed_identity': {
        'system_assigned': '44444444-4444-4444-4444-444444444444',
        'user_assigned': ['33333333-3333-3333-3333-333333333333'],
    },
    'static_tokens': ['double-az-cli-token'],
    'resources': [
        {'subscription': '00000000-0000-0000-0000-000000000001',
         'resource_group': 'popsign-rg',
         'dps': ['popsign-dps'],
         'iothub': ['popsign-hub']},
    ],
    'token_lifetime': 3599,
    'etag_style': 'guid',
    'verify_check_time': True,
    'keep_alive': True,
}


def rfc1123(epoch):
    return email.utils.formatdate(epoch, usegmt=True)


def azure_timestamp(epoch=None):
    return time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(time.time() if epoch is None else epoch))


def b64url_decode(text):
    if not isinstance(text, str) or not re.fullmatch(r'[A-Za-z0-9_-]*', text):
        raise ValueError('not base64url')
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


class DoubleError(Exception):
    """An answer other than success: carries the whole HTTP response."""

    def __init__(self, status, body, headers=None):
        super().__init__('%d %s' % (status, body))
        self.status = status
        self.body = body
        self.headers = headers or {}


# ---------------------------------------------------------------------------
# X.509 through the openssl command line

PEM_BLOCK_RE = re.compile(rb'-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----')


def pem_to_der(pem_bytes):
    m = PEM_BLOCK_RE.search(pem_bytes)
    if not m:
        raise ValueError('no CERTIFICATE block in the PEM text')
    return base64.b64decode(re.sub(rb'\s+', b'', m.group(1)), validate=True)


def der_to_pem(der):
    b64 = base64.b64encode(der).decode('ascii')
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return '-----BEGIN CERTIFICATE-----\n' + '\n'.join(lines) + '\n-----END CERTIFICATE-----\n'


def certificate_value_to_der(value):
    """DER bytes of a "certificate" string: raw PEM, base64(PEM) or base64(DER)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('the certificate is empty')
    if '-----BEGIN' in value:
        return pem_to_der(value.encode('utf-8', 'replace'))
    try:
        raw = base64.b64decode(re.sub(r'\s+', '', value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError('the certificate is neither PEM text nor base64') from None
    if raw.lstrip().startswith(b'-----BEGIN'):
        return pem_to_der(raw)
    return raw


def _openssl(args, data=None):
    proc = subprocess.run(['openssl'] + args, input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)
    return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


def _unescape_2253(value):
    return re.sub(r'\\([0-9A-Fa-f]{2}|.)',
                  lambda m: chr(int(m.group(1), 16)) if len(m.group(1)) == 2 else m.group(1), value)


def _split_2253(name):
    """Attribute (type, value) pairs of an RFC 2253 name, most specific first."""
    out = []
    for rdn in re.split(r'(?<!\\)[,+]', name):
        if '=' in rdn:
            k, v = rdn.split('=', 1)
            out.append((k.strip(), _unescape_2253(v)))
    return out


def _openssl_date(text):
    return calendar.timegm(time.strptime(re.sub(r'\s+', ' ', text.strip()), '%b %d %H:%M:%S %Y GMT'))


def certificate_info(der):
    """Subject, issuer, validity and thumbprint of DER bytes; ValueError if unparsable."""
    rc, out, err = _openssl(['x509', '-inform', 'DER', '-noout', '-subject', '-issuer',
                             '-startdate', '-enddate', '-nameopt', 'RFC2253,-esc_msb'], der)
    if rc != 0:
        raise ValueError('not an X.509 certificate: ' + err.strip().splitlines()[0] if err.strip()
                         else 'not an X.509 certificate')
    fields = {}
    for line in out.splitlines():
        if '=' in line:
            k, v = line.split('=', 1)
            fields[k.strip()] = v.strip()
    subject = fields.get('subject', '')
    cns = [v for k, v in _split_2253(subject) if k == 'CN']
    return {
        'subject': subject,
        'subject_cn': cns[0] if cns else subject,
        'issuer': fields.get('issuer', ''),
        'not_before': _openssl_date(fields['notBefore']),
        'not_after': _openssl_date(fields['notAfter']),
        'thumbprint': hashlib.sha1(der).hexdigest().upper(),
    }


def signed_by(leaf_der, ca_der):
    """None if the CA's key signed the leaf (and names chain), else the reason."""
    with tempfile.TemporaryDirectory(prefix='azure-double-') as tmp:
        ca_path = os.path.join(tmp, 'ca.pem')
        leaf_path = os.path.join(tmp, 'leaf.pem')
        with open(ca_path, 'w') as f:
            f.write(der_to_pem(ca_der))
        with open(leaf_path, 'w') as f:
            f.write(der_to_pem(leaf_der))
        rc, out, err = _openssl(['verify', '-no_check_time', '-partial_chain',
                                 '-CAfile', ca_path, leaf_path])
    if rc == 0 and out.strip().endswith('OK'):
        return None
    text = ' '.join((out + ' ' + err).split())
    m = re.search(r'error \d+ at \d+ depth lookup: (.+?)(?: error |$)', text)
    return m.group(1).strip() if m else (text or 'openssl verify failed')


def public_key_pem(der):
    rc, out, err = _openssl(['x509', '-inform', 'DER', '-noout', '-pubkey'], der)
    if rc != 0:
        raise ValueError('cannot read the public key: ' + err.strip())
    return out


def rsa_sha256_verifies(pubkey_pem, data, signature):
    with tempfile.TemporaryDirectory(prefix='azure-double-') as tmp:
        paths = {}
        for name, content in (('key.pem', pubkey_pem.encode()), ('data', data), ('sig', signature)):
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], 'wb') as f:
                f.write(content)
        rc, _, _ = _openssl(['dgst', '-sha256', '-verify', paths['key.pem'],
                             '-signature', paths['sig'], paths['data']])
    return rc == 0


# ---------------------------------------------------------------------------
# Error bodies

def _correlation():
    return str(uuid.uuid4())


def iot_error(status, code, reason, text):
    """The IoT Hub / DPS resource-provider shape (facts 23-26): numeric code."""
    message = ('%s If you contact a support representative please include this correlation '
               'identifier: %s, timestamp: %s, errorcode: IH%d.' % (text, _correlation(), azure_timestamp(), code))
    return DoubleError(status, {'code': code, 'httpStatusCode': reason, 'message': message})


def arm_error(status, code, message, headers=None):
    """The ARM front door shape: {"error": {"code", "message"}}."""
    return DoubleError(status, {'error': {'code': code, 'message': message}}, headers)


def aad_error_body(aadsts, error, description):
    trace, corr, ts = str(uuid.uuid4()), str(uuid.uuid4()), azure_timestamp()
    return {
        'error': error,
        'error_description': 'AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s' % (
            aadsts, description, trace, corr, ts),
        'error_codes': [aadsts],
        'timestamp': ts,
        'trace_id': trace,
        'correlation_id': corr,
        'error_uri': 'https://login.microsoftonline.com/error?code=%d' % aadsts,
    }


# status, error, description template (str.format with tenant, client)
AAD_ERRORS = {
    90002: (400, 'invalid_request', "Tenant '{tenant}' not found. Check to make sure you have the correct "
            'tenant ID and are signing into the correct cloud.'),
    700016: (400, 'unauthorized_client', "Application with identifier '{client}' was not found in the directory "
             "'{tenant}'. This can happen if the application has not been installed by the administrator of the "
             'tenant or consented to by any user in the tenant. You may have sent your authentication request to '
             'the wrong tenant.'),
    7000215: (401, 'invalid_client', 'Invalid client secret provided. Ensure the secret being sent in the request '
              "is the client secret value, not the client secret ID, for a secret added to app '{client}'."),
    700027: (401, 'invalid_client', 'Client assertion contains an invalid signature. {detail}'),
    700024: (401, 'invalid_client', 'Client assertion is not within its valid time range. {detail}'),
    700021: (401, 'invalid_client', "Client assertion application identifier doesn't match 'client_id' parameter. "
             '{detail}'),
    50027: (401, 'invalid_client', 'JWT token is invalid or is malformed. {detail}'),
    7000216: (400, 'invalid_request', "'client_assertion', 'client_secret' or 'request' is required for the "
              "'client_credentials' grant type."),
    900144: (400, 'invalid_request', "The request body must contain the following parameter: '{detail}'."),
    9002313: (400, 'invalid_request', 'Invalid request. Request is malformed or invalid. {detail}'),
    70003: (400, 'unsupported_grant_type', "The app requested an unsupported grant type '{detail}'."),
    1002012: (400, 'invalid_scope', 'The provided value for scope {detail} is not valid. Client credential flows '
              'must have a scope value with /.default suffixed to the resource identifier (application ID URI).'),
    500011: (400, 'invalid_resource', "The resource principal named {detail} was not found in the tenant named "
             "'{tenant}'. This can happen if the application has not been installed by the administrator of the "
             'tenant or consented to by any user in the tenant.'),
}


def aad_error(aadsts, tenant='', client='', detail='', status=None):
    st, error, template = AAD_ERRORS.get(aadsts, (400, 'invalid_request', 'Injected error. {detail}'))
    desc = template.format(tenant=tenant, client=client, detail=detail).strip()
    return DoubleError(status or st, aad_error_body(aadsts, error, desc))


# ---------------------------------------------------------------------------
# State

class Certificate:
    def __init__(self, service, subscription, resource_group, parent, name):
        self.service = service
        self.subscription = subscription
        self.resource_group = resource_group
        self.parent = parent
        self.name = name
        self.der = b''
        self.uploaded = ''
        self.info = {}
        self.verified = False
        self.created = 0
        self.updated = 0
        self.etag = ''
        self.code = None            # the one code that verifies now
        self.codes_issued = []
        self.verified_with = None
        self.writes = 0

    def arm_id(self):
        return ('/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s/certificates/%s' % (
            self.subscription, self.resource_group, SERVICES[self.service]['segment'], self.parent, self.name))

    def resource(self, api_version, operation, name=None):
        modes = SERVICES[self.service]['versions'][api_version]
        mode = modes[OPERATION_COLUMN[operation]]
        if mode == 'null':
            cert = None
        elif mode == 'echo':
            cert = self.uploaded
        else:
            cert = base64.b64encode(self.der).decode('ascii')
        props = {}
        if operation == 'generate':
            props['verificationCode'] = self.code
        props.update({
            'subject': self.info['subject_cn'],
            'expiry': rfc1123(self.info['not_after']),
            'thumbprint': self.info['thumbprint'],
            'isVerified': self.verified,
            'created': rfc1123(self.created) if modes[4] == 'real' else ZERO_TIME,
            'updated': rfc1123(self.updated),
            'certificate': cert,
        })
        return {'properties': props, 'id': self.arm_id(), 'name': name or self.name,
                'type': SERVICES[self.service]['type'], 'etag': self.etag}

    def to_json(self):
        return {
            'service': self.service, 'subscription': self.subscription,
            'resource_group': self.resource_group, 'parent': self.parent, 'name': self.name,
            'id': self.arm_id(), 'subject': self.info.get('subject'), 'subject_cn': self.info.get('subject_cn'),
            'thumbprint': self.info.get('thumbprint'), 'isVerified': self.verified, 'etag': self.etag,
            'verification_code': self.code, 'codes_issued': list(self.codes_issued),
            'verified_with': self.verified_with, 'created': self.created, 'updated': self.updated,
            'writes': self.writes, 'uploaded': self.uploaded,
            'der_base64': base64.b64encode(self.der).decode('ascii'),
        }


class Etags:
    """New etag on every write: base64 of a quoted GUID (fact 21) or of a counter (fact 20)."""

    def __init__(self, style):
        self.style = style
        self.counter = secrets.randbits(24) << 8

    def next(self):
        self.counter = (self.counter + 0x100 + secrets.randbelow(0x100)) & 0xffffffff
        if self.style == 'counter':
            return base64.b64encode(struct.pack('>Q', self.counter)).decode('ascii')
        text = '"%08x-0000-%04x-0000-%08x0000"' % (self.counter, 0x0100 * (1 + secrets.randbelow(9)),
                                                   int(time.time()) & 0xffffffff)
        return base64.b64encode(text.encode('ascii')).decode('ascii')


class Rule:
    FIELDS = ('method', 'path', 'count', 'action', 'status', 'body', 'content_type', 'headers',
              'retry_after', 'delay', 'aadsts')
    ACTIONS = ('respond', 'drop', 'drop_after', 'delay', 'stale_etag', 'aad_error')

    def __init__(self, rid, spec):
        unknown = set(spec) - set(self.FIELDS)
        if unknown:
            raise ValueError('unknown fault fields: %s' % ', '.join(sorted(unknown)))
        self.id = rid
        self.method = spec.get('method')
        self.path = spec.get('path')
        self.path_re = re.compile(self.path) if self.path else None
        self.count = int(spec.get('count', 1))
        self.action = spec.get('action', 'respond')
        if self.action not in self.ACTIONS:
            raise ValueError('unknown fault action %r' % self.action)
        self.status = int(spec['status']) if spec.get('status') is not None else None
        self.body = spec.get('body')
        self.content_type = spec.get('content_type')
        self.headers = dict(spec.get('headers') or {})
        if spec.get('retry_after') is not None:
            self.headers['Retry-After'] = str(spec['retry_after'])
        self.delay = float(spec.get('delay', 0))
        self.aadsts = int(spec.get('aadsts', 7000215))
        self.hits = 0

    def matches(self, method, path):
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_re or bool(self.path_re.search(path))

    def to_json(self):
        return {'id': self.id, 'method': self.method, 'path': self.path, 'action': self.action,
                'remaining': self.count, 'hits': self.hits, 'status': self.status, 'aadsts': self.aadsts}


class Registry:
    """Identities and resources that exist (the config file)."""

    def __init__(self):
        self.tenants = set()
        self.clients = {}          # (tenant, client_id) -> {'secrets': [], 'certs': [{x5t, pubkey, der}]}
        self.mi_system = None
        self.mi_user = set()
        self.static_tokens = set()
        self.resources = {}        # (sub.lower(), rg.lower(), service, name.lower()) -> (sub, rg, name)
        self.subscriptions = {}    # sub.lower() -> sub
        self.groups = {}           # (sub.lower(), rg.lower()) -> rg

    def load(self, config):
        for t in config.get('tenants', []):
            self.tenants.add(t)
        for c in config.get('clients', []):
            tenant, cid = c['tenant'], c['client_id']
            self.tenants.add(tenant)
            entry = self.clients.setdefault((tenant, cid), {'secrets': [], 'certs': []})
            if c.get('secret') is not None:
                entry['secrets'].append(c['secret'])
            if c.get('certificate'):
                with open(c['certificate'], 'rb') as f:
                    der = pem_to_der(f.read())
                entry['certs'].append({'x5t': b64url(hashlib.sha1(der).digest()),
                                       'pubkey': public_key_pem(der), 'der': der})
        mi = config.get('managed_identity') or {}
        if 'system_assigned' in mi:
            self.mi_system = mi['system_assigned']
        self.mi_user.update(mi.get('user_assigned', []))
        self.static_tokens.update(config.get('static_tokens', []))
        for r in config.get('resources', []):
            sub, rg = r['subscription'], r['resource_group']
            self.subscriptions[sub.lower()] = sub
            self.groups[(sub.lower(), rg.lower())] = rg
            for service in SERVICES:
                for name in r.get(service, []):
                    self.resources[(sub.lower(), rg.lower(), service, name.lower())] = (sub, rg, name)


# ---------------------------------------------------------------------------
# The double

class AzureDouble:
    """The whole double; HTTP handlers and the Python control methods share it.

    config: a dict in the config-file format (README.md), DEFAULT_CONFIG if None.
    """

    def __init__(self, config=None, port=0, state_file=None, log_file=None, control_secret=None,
                 host='127.0.0.1'):
        self.config = copy.deepcopy(DEFAULT_CONFIG if config is None else config)
        self.host = host
        self.port = port
        self.state_file = state_file
        self.log_file = log_file
        self.control_secret = control_secret
        self.lock = threading.RLock()
        self.registry = Registry()
        self.registry.load(self.config)
        self.token_lifetime = int(self.config.get('token_lifetime', 3599))
        self.verify_check_time = bool(self.config.get('verify_check_time', True))
        self.keep_alive = bool(self.config.get('keep_alive', True))
        self.etags = Etags(self.config.get('etag_style', 'guid'))
        self.certs = {}            # (sub, rg, service, parent, name) lower-cased but name -> Certificate
        self.tokens = {}           # token -> info
        self.rules = []
        self.next_rule = 1
        self.log = []
        self.next_codes = []
        self.verified_upload_attempts = []
        self.server = None
        self.thread = None
        self._load_state()

    # -- life cycle -------------------------------------------------------

    def start(self):
        self.server = _Server((self.host, self.port), _Handler)
        self.server.double = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name='azure-double', daemon=True)
        self.thread.start()
        with self.lock:
            self._save_state()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(10)
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return 'http://%s:%d' % (self.host, self.port)

    # -- Python control API (the HTTP control API calls these) ------------

    def add_fault(self, **spec):
        """Add a fault rule (see README.md); returns its id."""
        with self.lock:
            rule = Rule(self.next_rule, spec)
            self.next_rule += 1
            self.rules.append(rule)
            return rule.id

    def clear_faults(self):
        with self.lock:
            self.rules = []

    def faults(self):
        with self.lock:
            return [r.to_json() for r in self.rules]

    def stale_etag(self, count=1, method=None, path=None):
        """The next count If-Match checks (-1: all) fail as if someone else had just written."""
        return self.add_fault(action='stale_etag', count=count, method=method, path=path)

    def fail_aad(self, aadsts, count=1, status=None):
        spec = {'action': 'aad_error', 'aadsts': aadsts, 'count': count, 'path': r'/oauth2/v2\.0/token$'}
        if status:
            spec['status'] = status
        return self.add_fault(**spec)

    def requests(self):
        with self.lock:
            return copy.deepcopy(self.log)

    def clear_log(self):
        with self.lock:
            self.log = []

    def state(self):
        with self.lock:
            return {'certificates': [c.to_json() for c in self.certs.values()],
                    'verified_upload_attempts': list(self.verified_upload_attempts)}

    def set_token_lifetime(self, seconds):
        with self.lock:
            self.token_lifetime = int(seconds)

    def expire_tokens(self):
        """Every token issued so far (not the static ones) is now expired."""
        with self.lock:
            now = time.time()
            for info in self.tokens.values():
                info['expires_at'] = min(info['expires_at'], now - 1)

    def issue_token(self, kind='test', client_id=None, tenant=None, lifetime=None):
        with self.lock:
            now = int(time.time())
            life = self.token_lifetime if lifetime is None else int(lifetime)
            tid = 't%d' % (len(self.tokens) + 1)
            claims = {'aud': 'https://management.azure.com/', 'iss': 'https://sts.windows.net/%s/' % (tenant or ''),
                      'iat': now, 'nbf': now, 'exp': now + life, 'appid': client_id, 'tid': tenant,
                      'uti': tid + '-' + secrets.token_hex(8)}
            token = '.'.join((b64url(b'{"typ":"JWT","alg":"RS256","kid":"azure-double"}'),
                              b64url(json.dumps(claims).encode()), b64url(secrets.token_bytes(32))))
            self.tokens[token] = {'token_id': tid, 'kind': kind, 'client_id': client_id, 'tenant': tenant,
                                  'issued_at': now, 'expires_at': now + life, 'access_token': token}
            return token, life

    def token_info(self):
        with self.lock:
            return copy.deepcopy(list(self.tokens.values()))

    def set_next_verification_code(self, code):
        """The next generateVerificationCode hands out this code (tests replaying recordings)."""
        with self.lock:
            self.next_codes.append(code)

    def add_config(self, config):
        """Merge more identities or resources, same format as the config file."""
        with self.lock:
            self.registry.load(config)
            if 'token_lifetime' in config:
                self.token_lifetime = int(config['token_lifetime'])
            if 'verify_check_time' in config:
                self.verify_check_time = bool(config['verify_check_time'])
            if 'etag_style' in config:
                self.etags.style = config['etag_style']
            if 'keep_alive' in config:
                self.keep_alive = bool(config['keep_alive'])

    def reset(self):
        """Forget certificates, faults, the log and queued codes; identities and tokens stay."""
        with self.lock:
            self.certs = {}
            self.rules = []
            self.log = []
            self.next_codes = []
            self.verified_upload_attempts = []
            self._save_state()

    def seed_certificate(self, service, subscription, resource_group, parent, name, certificate, verified=False):
        """Put a certificate in place without a request (e.g. an already verified one)."""
        with self.lock:
            sub, rg, parent = self._parent(subscription, resource_group, service, parent)
            der = certificate_value_to_der(certificate)
            cert = Certificate(service, sub, rg, parent, name)
            self._store_upload(cert, der, certificate)
            cert.verified = bool(verified)
            self.certs[self._key(service, sub, rg, parent, name)] = cert
            self._save_state()
            return cert.to_json()

    # -- internals --------------------------------------------------------

    @staticmethod
    def _key(service, sub, rg, parent, name):
        return (service, sub.lower(), rg.lower(), parent.lower(), name)

    def _parent(self, sub, rg, service, parent):
        reg = self.registry
        if sub.lower() not in reg.subscriptions:
            raise arm_error(404, 'SubscriptionNotFound', "The subscription '%s' could not be found." % sub)
        if (sub.lower(), rg.lower()) not in reg.groups:
            raise arm_error(404, 'ResourceGroupNotFound', "Resource group '%s' could not be found." % rg)
        found = reg.resources.get((sub.lower(), rg.lower(), service, parent.lower()))
        if not found:
            raise arm_error(404, 'ResourceNotFound',
                            "The Resource 'Microsoft.Devices/%s/%s' under resource group '%s' was not found. For more "
                            'details please go to https://aka.ms/ARMResourceNotFoundFix' % (
                                SERVICES[service]['label'], parent, rg))
        return found

    def _store_upload(self, cert, der, uploaded, info=None):
        now = int(time.time())
        info = info or certificate_info(der)
        changed = cert.der != der
        cert.der, cert.uploaded, cert.info = der, uploaded, info
        if not cert.created:
            cert.created = now
        if changed:
            cert.verified = False
            cert.code = None
        self._touch(cert)

    def _touch(self, cert):
        cert.updated = int(time.time())
        cert.etag = self.etags.next()
        cert.writes += 1

    def _take_rule(self, method, path, actions):
        with self.lock:
            for rule in self.rules:
                if rule.action in actions and rule.matches(method, path):
                    rule.hits += 1
                    if rule.count > 0:
                        rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                    return rule
        return None

    def _load_state(self):
        if not self.state_file or not os.path.exists(self.state_file) or os.path.getsize(self.state_file) == 0:
            return
        with open(self.state_file) as f:
            data = json.load(f)
        for c in data.get('certificates', []):
            cert = Certificate(c['service'], c['subscription'], c['resource_group'], c['parent'], c['name'])
            cert.der = base64.b64decode(c['der_base64'])
            cert.uploaded = c['uploaded']
            cert.info = certificate_info(cert.der)
            cert.verified, cert.etag, cert.code = c['isVerified'], c['etag'], c['verification_code']
            cert.codes_issued, cert.verified_with = c['codes_issued'], c['verified_with']
            cert.created, cert.updated, cert.writes = c['created'], c['updated'], c['writes']
            self.certs[self._key(cert.service, cert.subscription, cert.resource_group, cert.parent, cert.name)] = cert
        self.verified_upload_attempts = data.get('verified_upload_attempts', [])

    def _save_state(self):
        if not self.state_file:
            return
        tmp = self.state_file + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.state(), f, indent=1)
        os.replace(tmp, self.state_file)

    def _log_append(self, entry):
        with self.lock:
            entry['seq'] = len(self.log) + 1
            self.log.append(entry)

    def _log_finish(self, entry):
        if self.log_file:
            with self.lock, open(self.log_file, 'a') as f:
                f.write(json.dumps(entry) + '\n')


# ---------------------------------------------------------------------------
# Request handling: one function per service, each returning (status, body, headers)

class Request:
    def __init__(self, method, raw_path, headers, body, host):
        self.method = method
        parts = urllib.parse.urlsplit(raw_path)
        self.path = parts.path
        self.query_string = parts.query
        self.query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.host = host

    def header(self, name):
        return self.headers.get(name)

    def q(self, name):
        v = self.query.get(name)
        return v[0] if v else None


def _auth_summary(double, req):
    value = req.header('Authorization')
    if value is None:
        return {'present': False}
    scheme, _, token = value.partition(' ')
    out = {'present': True, 'scheme': scheme}
    with double.lock:
        if scheme.lower() == 'bearer':
            token = token.strip()
            info = double.tokens.get(token)
            if info:
                out.update(token_id=info['token_id'], kind=info['kind'], client_id=info['client_id'],
                           expired=info['expires_at'] <= time.time())
            elif token in double.registry.static_tokens:
                out.update(token_id='static', kind='static')
            else:
                out.update(token_id=None, kind='unknown')
    return out


def check_bearer(double, req):
    value = req.header('Authorization')
    www = ('Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token", '
           'error_description="%s"')
    if value is None:
        raise arm_error(401, 'AuthenticationFailed', "Authentication failed. The 'Authorization' header is missing.",
                        {'WWW-Authenticate': www % "The authentication failed because of missing 'Authorization' header."})
    scheme, _, token = value.partition(' ')
    token = token.strip()
    if scheme.lower() != 'bearer' or not token:
        raise arm_error(401, 'AuthenticationFailed',
                        "Authentication failed. The 'Authorization' header is provided in an invalid format.",
                        {'WWW-Authenticate': www % "The 'Authorization' header is provided in an invalid format."})
    with double.lock:
        if token in double.registry.static_tokens:
            return
        info = double.tokens.get(token)
    if info is None:
        raise arm_error(401, 'InvalidAuthenticationToken', 'The access token is invalid.',
                        {'WWW-Authenticate': www % 'The access token is invalid.'})
    now = time.time()
    if info['expires_at'] <= now:
        fmt = lambda t: time.strftime('%m/%d/%Y %H:%M:%S', time.gmtime(t))
        raise arm_error(401, 'ExpiredAuthenticationToken',
                        "The access token expiry UTC time '%s' is earlier than current UTC time '%s'." % (
                            fmt(info['expires_at']), fmt(now)),
                        {'WWW-Authenticate': www % 'The access token has expired.'})


ARM_RE = re.compile(r'^/subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.devices/'
                    r'(provisioningservices|iothubs)/([^/]+)/certificates(?:/([^/]+)(?:/(generateverificationcode|verify))?)?/?$',
                    re.IGNORECASE)


def handle_arm(double, req):
    check_bearer(double, req)
    m = ARM_RE.match(req.path)
    version = req.q('api-version')
    if version is None:
        raise arm_error(400, 'MissingApiVersionParameter',
                        'The api-version query parameter (?api-version=) is required for all requests.')
    if not m:
        raise arm_error(404, 'InvalidResourceType',
                        "The resource type could not be found in the namespace 'Microsoft.Devices' for api "
                        "version '%s'." % version)
    sub, rg, kind, parent, name, action = (urllib.parse.unquote(g) if g else g for g in m.groups())
    service = 'dps' if kind.lower() == 'provisioningservices' else 'iothub'
    versions = SERVICES[service]['versions']
    if not API_VERSION_SYNTAX.match(version):
        raise arm_error(400, 'InvalidApiVersionParameter',
                        "The api-version '%s' is invalid. The supported versions are '%s'." % (
                            version, ','.join(sorted(versions))))
    if version not in versions:
        raise arm_error(400, 'NoRegisteredProviderFound',
                        "No registered resource provider found for location 'westus' and API version '%s' for type "
                        "'%s'. The supported api-versions are '%s'. The supported locations are 'westus, eastus'." % (
                            version, SERVICES[service]['label'], ', '.join(sorted(versions))))
    ctype = (req.header('Content-Type') or '').split(';')[0].strip().lower()
    if req.body and ctype != 'application/json':
        raise arm_error(415, 'UnsupportedMediaType', "The content media type '%s' is not supported. Only "
                        "'application/json' is supported." % ctype)
    with double.lock:
        sub, rg, parent = double._parent(sub, rg, service, parent)
        ctx = (service, sub, rg, parent, version)
        if name is None:
            if req.method != 'GET':
                raise arm_method_not_allowed(req.method)
            return op_list(double, ctx)
        check_cert_name(service, name)
        if action is None:
            ops = {'GET': op_get, 'PUT': op_put, 'DELETE': op_delete}
        elif action.lower() == 'generateverificationcode':
            ops = {'POST': op_generate}
        else:
            ops = {'POST': op_verify}
        op = ops.get(req.method)
        if op is None:
            raise arm_method_not_allowed(req.method)
        return op(double, ctx, name, req)


def arm_method_not_allowed(method):
    return arm_error(405, 'MethodNotAllowed', "The requested resource does not support http method '%s'." % method)


def check_cert_name(service, name):
    ok = CERT_NAME_RE.match(name) if service == 'iothub' else (0 < len(name) <= DPS_CERT_NAME_MAX
                                                               and name.isprintable())
    if not ok:
        raise iot_error(400, 400004, 'BadRequest', "Certificate name '%s' is invalid." % name)


def not_found(name):
    return iot_error(404, 404015, 'NotFound', "Certificate '%s' not found." % name)


def json_body(req):
    try:
        body = json.loads(req.body.decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        raise iot_error(400, 400004, 'BadRequest', 'The request body is not valid JSON.') from None
    if not isinstance(body, dict):
        raise iot_error(400, 400004, 'BadRequest', 'The request body must be a JSON object.')
    return body


def check_if_match(double, cert, req, required):
    """Apply If-Match (fact 2); a stale_etag rule first makes someone else write."""
    if_match = req.header('If-Match')
    if if_match is None and not required:
        return
    with double.lock:
        if double._take_rule(req.method, req.path, ('stale_etag',)):
            double._touch(cert)
            double._save_state()
    if if_match is None:
        raise iot_error(412, 412001, 'PreconditionFailed', 'Invalid ETag supplied. An ETag is required for this '
                        'operation.')
    value = if_match.strip()
    if value != '*' and value != cert.etag:
        raise iot_error(412, 412001, 'PreconditionFailed', 'Invalid ETag supplied.')


def op_list(double, ctx):
    service, sub, rg, parent, version = ctx
    items = [c.resource(version, 'list') for c in double.certs.values()
             if (c.service, c.subscription, c.resource_group, c.parent) == (service, sub, rg, parent)]
    return 200, {'value': items}, {}


def _find(double, ctx, name):
    service, sub, rg, parent, _ = ctx
    return double.certs.get(double._key(service, sub, rg, parent, name))


def op_get(double, ctx, name, req):
    cert = _find(double, ctx, name)
    if cert is None:
        raise not_found(name)
    if ctx[0] == 'dps' and req.header('If-Match') is not None:
        check_if_match(double, cert, req, False)
    return 200, cert.resource(ctx[4], 'get', name), {}


def op_put(double, ctx, name, req):
    service, sub, rg, parent, version = ctx
    body = json_body(req)
    wrapped = isinstance(body.get('properties'), dict)
    fields = body['properties'] if wrapped else body
    value = fields.get('certificate')
    if fields.get('isVerified') is True:
        double.verified_upload_attempts.append({'service': service, 'parent': parent, 'name': name,
                                                'shape': 'wrapped' if wrapped else 'flat', 'api_version': version})
    if not isinstance(value, str) or not value:
        raise iot_error(400, 400004, 'BadRequest', 'The certificate is missing from the request body.')
    try:
        der = certificate_value_to_der(value)
        info = certificate_info(der)
    except ValueError as e:
        raise iot_error(400, 400004, 'BadRequest', 'The certificate is not a valid X509 certificate: %s.' % e) from None
    cert = _find(double, ctx, name)
    if cert is None:
        if req.header('If-Match') is not None and req.header('If-Match').strip() != '*':
            raise iot_error(412, 412001, 'PreconditionFailed', 'Invalid ETag supplied.')
        cert = Certificate(service, sub, rg, parent, name)
    else:
        check_if_match(double, cert, req, True)
    double._store_upload(cert, der, value, info)
    if fields.get('isVerified') is True and not wrapped:
        cert.verified = True
    double.certs[double._key(service, sub, rg, parent, name)] = cert
    double._save_state()
    return 200, cert.resource(version, 'put', name), {}


def op_delete(double, ctx, name, req):
    cert = _find(double, ctx, name)
    if cert is None:
        raise not_found(name)
    check_if_match(double, cert, req, True)
    del double.certs[double._key(ctx[0], ctx[1], ctx[2], ctx[3], name)]
    double._save_state()
    return 200, None, {}


def op_generate(double, ctx, name, req):
    cert = _find(double, ctx, name)
    if cert is None:
        raise not_found(name)
    check_if_match(double, cert, req, True)
    cert.code = double.next_codes.pop(0) if double.next_codes else secrets.token_hex(24).upper()
    cert.codes_issued.append(cert.code)
    double._touch(cert)
    double._save_state()
    return 200, cert.resource(ctx[4], 'generate', name), {}


def pop_failed(reason):
    return iot_error(400, 400053, 'BadRequest', 'Proof-Of-Possession failed: %s.' % reason)


def op_verify(double, ctx, name, req):
    cert = _find(double, ctx, name)
    if cert is None:
        raise not_found(name)
    check_if_match(double, cert, req, True)
    body = json_body(req)
    value = body.get('certificate')
    if not isinstance(value, str) or not value:
        raise iot_error(400, 400004, 'BadRequest', 'The verification certificate is missing from the request body.')
    try:
        leaf = certificate_value_to_der(value)
        info = certificate_info(leaf)
    except ValueError as e:
        raise iot_error(400, 400004, 'BadRequest',
                        'The verification certificate is not a valid X509 certificate: %s.' % e) from None
    if cert.code is None:
        raise pop_failed('no verification code is pending for this certificate; call generateVerificationCode first')
    if info['subject'] != 'CN=' + cert.code:
        raise pop_failed("the verification certificate's subject '%s' is not 'CN=%s'" % (info['subject'], cert.code))
    if info['issuer'] != cert.info['subject']:
        raise pop_failed("the issuer certificate '%s' cannot be found in the certificate chain" % info['issuer'])
    if double.verify_check_time:
        now = time.time()
        if now + CLOCK_SKEW < info['not_before'] or now > info['not_after']:
            raise pop_failed('the verification certificate is not valid at this time')
    reason = signed_by(leaf, cert.der)
    if reason:
        raise pop_failed('the verification certificate was not signed by the uploaded certificate (%s)' % reason)
    cert.verified = True
    cert.verified_with = cert.code
    cert.code = None
    double._touch(cert)
    double._save_state()
    return 200, cert.resource(ctx[4], 'verify', name), {}


# -- Azure AD ----------------------------------------------------------------

AAD_RE = re.compile(r'^/([^/]+)/oauth2/v2\.0/token$')


def handle_aad(double, req, tenant, form):
    rule = double._take_rule(req.method, req.path, ('aad_error',))
    if rule:
        raise aad_error(rule.aadsts, tenant, _first(form, 'client_id') or '', 'Injected by the test.', rule.status)
    if req.method != 'POST':
        raise aad_error(9002313, tenant, detail='The token endpoint takes POST.')
    ctype = (req.header('Content-Type') or '').split(';')[0].strip().lower()
    if ctype != 'application/x-www-form-urlencoded':
        raise aad_error(9002313, tenant, detail='The body must be application/x-www-form-urlencoded.')
    reg = double.registry
    if tenant not in reg.tenants:
        raise aad_error(90002, tenant)
    grant = _first(form, 'grant_type')
    if not grant:
        raise aad_error(900144, tenant, detail='grant_type')
    if grant != 'client_credentials':
        raise aad_error(70003, tenant, detail=grant)
    client_id = _first(form, 'client_id')
    if not client_id:
        raise aad_error(900144, tenant, detail='client_id')
    client = reg.clients.get((tenant, client_id))
    if client is None:
        raise aad_error(700016, tenant, client_id)
    secret = _first(form, 'client_secret')
    assertion = _first(form, 'client_assertion')
    if secret is not None and assertion is not None:
        raise aad_error(9002313, tenant, client_id, 'Both client_secret and client_assertion were sent.')
    if secret is not None:
        if not any(secrets.compare_digest(secret.encode(), s.encode()) for s in client['secrets']):
            raise aad_error(7000215, tenant, client_id)
        kind = 'client_secret'
    elif assertion is not None:
        if _first(form, 'client_assertion_type') != ASSERTION_TYPE:
            raise aad_error(9002313, tenant, client_id, "client_assertion_type must be '%s'." % ASSERTION_TYPE)
        check_assertion(assertion, client, tenant, client_id, 'http://%s%s' % (req.host, req.path))
        kind = 'client_assertion'
    else:
        raise aad_error(7000216, tenant, client_id)
    scope = _first(form, 'scope')
    if not scope:
        raise aad_error(900144, tenant, detail='scope')
    if scope != MANAGEMENT_SCOPE:
        if scope.rstrip('/') == 'https://management.azure.com':
            raise aad_error(1002012, tenant, client_id, scope)
        raise aad_error(500011, tenant, client_id, scope)
    token, life = double.issue_token(kind, client_id, tenant)
    return 200, {'token_type': 'Bearer', 'expires_in': life, 'ext_expires_in': life, 'access_token': token}, {}


def _first(form, name):
    v = form.get(name)
    return v[0] if v else None


def check_assertion(assertion, client, tenant, client_id, expected_aud):
    """The JWT client assertion: RS256 by a registered certificate, claims as MSAL sends them."""
    parts = assertion.split('.')
    try:
        if len(parts) != 3:
            raise ValueError('three dot-separated parts expected')
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError('header and claims must be JSON objects')
    except ValueError as e:
        raise aad_error(50027, tenant, client_id, '(%s)' % e) from None
    if header.get('alg') != 'RS256':
        raise aad_error(50027, tenant, client_id, "(alg must be RS256, not '%s')" % header.get('alg'))
    x5t = header.get('x5t')
    key = next((c for c in client['certs'] if c['x5t'] == x5t), None)
    if key is None:
        raise aad_error(700027, tenant, client_id, "[Reason - The key was not found., Thumbprint of key used by "
                        "client: '%s']" % x5t)
    signing_input = (parts[0] + '.' + parts[1]).encode('ascii')
    if not rsa_sha256_verifies(key['pubkey'], signing_input, signature):
        raise aad_error(700027, tenant, client_id, '[Reason - The provided signature value did not match the '
                        "expected signature value., Thumbprint of key used by client: '%s']" % x5t)
    aud = claims.get('aud')
    if aud != expected_aud and not (isinstance(aud, list) and expected_aud in aud):
        raise aad_error(50027, tenant, client_id, "(the audience '%s' is not '%s')" % (aud, expected_aud))
    if claims.get('iss') != client_id or claims.get('sub') != client_id:
        raise aad_error(700021, tenant, client_id, "(iss '%s', sub '%s')" % (claims.get('iss'), claims.get('sub')))
    if not isinstance(claims.get('jti'), str) or not claims['jti']:
        raise aad_error(50027, tenant, client_id, '(the jti claim is missing)')
    now = time.time()
    exp, nbf, iat = claims.get('exp'), claims.get('nbf'), claims.get('iat')
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not numeric(exp) or (nbf is not None and not numeric(nbf)) or (iat is not None and not numeric(iat)):
        raise aad_error(50027, tenant, client_id, '(exp is required; exp, nbf and iat must be numbers)')
    if exp <= now or (nbf is not None and (nbf > now + CLOCK_SKEW or nbf >= exp)) \
            or (iat is not None and (iat > now + CLOCK_SKEW or iat >= exp)):
        raise aad_error(700024, tenant, client_id, 'Current time: %s, assertion valid from %s, expiry time of '
                        'assertion %s.' % (azure_timestamp(now), azure_timestamp(nbf or iat or 0),
                                           azure_timestamp(exp)))


# -- Managed identity (IMDS) --------------------------------------------------

def imds_error(description, error='invalid_request', status=400):
    return DoubleError(status, {'error': error, 'error_description': description})


def handle_imds(double, req):
    if req.method != 'GET':
        raise imds_error('The request method must be GET.', status=405)
    if (req.header('Metadata') or '').lower() != 'true':
        raise imds_error('Required metadata header not specified')
    if req.q('api-version') is None:
        raise imds_error("Required query variable 'api-version' is missing")
    if req.q('api-version') != '2018-02-01':
        raise imds_error('Invalid API version')
    resource = req.q('resource')
    if resource is None:
        raise imds_error("Required query variable 'resource' is missing")
    reg = double.registry
    client_id = req.q('client_id')
    if client_id is None:
        client_id = reg.mi_system
    elif client_id not in reg.mi_user and client_id != reg.mi_system:
        client_id = None
    if client_id is None:
        raise imds_error('Identity not found')
    if resource not in MANAGEMENT_RESOURCES:
        raise imds_error('AADSTS500011: The resource principal named %s was not found in the tenant.' % resource,
                         error='invalid_resource')
    token, life = double.issue_token('managed_identity', client_id)
    now = int(time.time())
    return 200, {'access_token': token, 'client_id': client_id, 'expires_in': str(life),
                 'expires_on': str(now + life), 'ext_expires_in': str(life), 'not_before': str(now),
                 'resource': resource, 'token_type': 'Bearer'}, {}


# -- Control API ---------------------------------------------------------------

def handle_control(double, req):
    if double.control_secret is not None and req.header('X-Double-Secret') != double.control_secret:
        return 403, {'error': 'the X-Double-Secret header is missing or wrong'}, {}
    route = req.path[len('/_double'):]
    body = None
    if req.method in ('POST', 'PUT'):
        try:
            body = json.loads(req.body.decode('utf-8')) if req.body else {}
        except ValueError as e:
            return 400, {'error': 'not JSON: %s' % e}, {}
    try:
        return _control_route(double, req.method, route, body)
    except (ValueError, KeyError, TypeError) as e:
        return 400, {'error': '%s: %s' % (type(e).__name__, e)}, {}
    except DoubleError as e:
        return e.status, e.body, {}


def _control_route(double, method, route, body):
    if route == '/log' and method == 'GET':
        return 200, {'requests': double.requests()}, {}
    if route == '/log' and method == 'DELETE':
        double.clear_log()
        return 200, {}, {}
    if route == '/state' and method == 'GET':
        return 200, double.state(), {}
    if route == '/faults' and method == 'GET':
        return 200, {'faults': double.faults()}, {}
    if route == '/faults' and method == 'POST':
        specs = body if isinstance(body, list) else [body]
        return 200, {'ids': [double.add_fault(**s) for s in specs]}, {}
    if route == '/faults' and method == 'DELETE':
        double.clear_faults()
        return 200, {}, {}
    if route == '/tokens' and method == 'GET':
        return 200, {'tokens': double.token_info()}, {}
    if route == '/tokens' and method == 'POST':
        token, life = double.issue_token(body.get('kind', 'test'), body.get('client_id'), body.get('tenant'),
                                         body.get('lifetime'))
        return 200, {'access_token': token, 'expires_in': life}, {}
    if route == '/tokens/expire' and method == 'POST':
        double.expire_tokens()
        return 200, {}, {}
    if route == '/config' and method == 'POST':
        double.add_config(body)
        return 200, {}, {}
    if route == '/certificates' and method == 'POST':
        return 200, double.seed_certificate(body['service'], body['subscription'], body['resource_group'],
                                            body['parent'], body['name'], body['certificate'],
                                            body.get('verified', False)), {}
    if route == '/reset' and method == 'POST':
        double.reset()
        return 200, {}, {}
    if route == '/next-code' and method == 'POST':
        double.set_next_verification_code(body['code'])
        return 200, {}, {}
    return 404, {'error': 'no control route %s %s' % (method, route)}, {}


# ---------------------------------------------------------------------------
# HTTP glue

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return      # the client hung up: nothing to report
        super().handle_error(request, client_address)


class _Drop(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def version_string(self):
        return 'Microsoft-HTTPAPI/2.0'

    def log_message(self, fmt, *args):
        if os.environ.get('AZURE_DOUBLE_VERBOSE'):
            sys.stderr.write('azure-double: ' + (fmt % args) + '\n')

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self):
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            data = b''
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    raise _Drop()
        length = int(self.headers.get('Content-Length') or 0)
        if length > MAX_BODY:
            raise _Drop()
        return self.rfile.read(length) if length else b''

    def _serve(self):
        double = self.server.double
        try:
            body = self._read_body()
        except (_Drop, ValueError):
            self.close_connection = True
            return
        headers = {}
        for k, v in self.headers.items():
            headers[k] = headers[k] + ', ' + v if k in headers else v
        req = Request(self.command, self.path, _Caseless(headers), body, self.headers.get('Host', ''))
        if req.path.startswith('/_double/'):
            status, out, extra = handle_control(double, req)
            self._send(status, out, extra)
            return
        entry = self._log_entry(double, req)
        double._log_append(entry)
        try:
            status, out, extra, after = self._dispatch(double, req, entry)
        except _Drop:
            entry['dropped'] = True
            double._log_finish(entry)
            self._drop()
            return
        entry['status'] = status
        double._log_finish(entry)
        if after == 'drop_after':
            entry['dropped'] = True
            self._drop()
            return
        self._send(status, out, extra)

    def _dispatch(self, double, req, entry):
        rule = double._take_rule(req.method, req.path, ('respond', 'drop', 'drop_after', 'delay'))
        if rule:
            entry['fault'] = rule.id
            if rule.delay:
                time.sleep(rule.delay)
            if rule.action == 'drop':
                raise _Drop()
            if rule.action == 'respond':
                status = rule.status or 500
                return status, _fault_body(rule, req, status), self._fault_headers(rule), None
        try:
            status, out, extra = route(double, req, entry)
        except DoubleError as e:
            status, out, extra = e.status, e.body, e.headers
        except Exception as e:  # a bug in the double: say so loudly, keep serving
            import traceback
            traceback.print_exc()
            status, out, extra = 500, {'error': {'code': 'DoubleBug', 'message': repr(e)}}, {}
        return status, out, extra, rule.action if rule else None

    @staticmethod
    def _fault_headers(rule):
        h = dict(rule.headers)
        if rule.content_type:
            h['Content-Type'] = rule.content_type
        return h

    def _log_entry(self, double, req):
        headers = {k: ('<redacted>' if k.lower() == 'authorization' else v) for k, v in req.headers.items()}
        entry = {'time': time.time(), 'method': req.method, 'path': req.path, 'query': req.query,
                 'headers': headers, 'authorization': _auth_summary(double, req), 'status': None, 'fault': None}
        if AAD_RE.match(req.path):
            form = urllib.parse.parse_qs(req.body.decode('utf-8', 'replace'), keep_blank_values=True)
            entry['form'] = {k: (['<redacted>'] if k == 'client_secret' else v) for k, v in form.items()}
            entry['body'] = None
        else:
            entry['body'] = req.body.decode('utf-8', 'replace')
        return entry

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status, out, extra):
        if out is None:
            payload = b''
        elif isinstance(out, (bytes, bytearray)):
            payload = bytes(out)
        elif isinstance(out, str):
            payload = out.encode('utf-8')
        else:
            payload = json.dumps(out, separators=(',', ':')).encode('utf-8')
        self.send_response(status)
        names = {k.lower() for k in extra}
        if out is not None and 'content-type' not in names:
            self.send_header('Content-Type', 'application/json; charset=utf-8')
        self.send_header('Cache-Control', 'no-cache')
        self.send_header('Pragma', 'no-cache')
        self.send_header('Expires', '-1')
        rid = str(uuid.uuid4())
        self.send_header('x-ms-request-id', rid)
        self.send_header('x-ms-correlation-request-id', rid)
        for k, v in extra.items():
            self.send_header(k, v)
        if not self.server.double.keep_alive:
            self.send_header('Connection', 'close')
            self.close_connection = True
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(payload)


class _Caseless(dict):
    def get(self, name, default=None):
        lname = name.lower()
        for k, v in self.items():
            if k.lower() == lname:
                return v
        return default


def _fault_body(rule, req, status):
    if rule.body is not None:
        return rule.body
    if status < 400:
        return None
    if AAD_RE.match(req.path):
        return aad_error_body(9002313, 'temporarily_unavailable', 'Injected error.')
    codes = {429: 'TooManyRequests', 500: 'InternalServerError', 502: 'BadGateway', 503: 'ServiceUnavailable',
             504: 'GatewayTimeout', 403: 'AuthorizationFailed'}
    return {'error': {'code': codes.get(status, 'InjectedFault'),
                      'message': 'Injected HTTP %d by the test double.' % status}}


def route(double, req, entry):
    if req.path == '/metadata/identity/oauth2/token':
        return handle_imds(double, req)
    m = AAD_RE.match(req.path)
    if m:
        form = urllib.parse.parse_qs(req.body.decode('utf-8', 'replace'), keep_blank_values=True)
        return handle_aad(double, req, urllib.parse.unquote(m.group(1)), form)
    if req.path.lower().startswith('/subscriptions/'):
        return handle_arm(double, req)
    raise arm_error(404, 'NotFound', "No route for '%s %s'." % (req.method, req.path))


# ---------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description='Test double of ARM (DPS/IoT Hub certificates), Azure AD and IMDS.')
    p.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0: any free port)')
    p.add_argument('--config', help='JSON file of identities and resources (README.md); defaults if absent')
    p.add_argument('--state-file', help='certificates are loaded from and saved to this JSON file')
    p.add_argument('--log-file', help='append every request seen as one JSON line')
    p.add_argument('--control-secret', help='require X-Double-Secret: VALUE on /_double/ requests')
    args = p.parse_args(argv)
    config = None
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    double = AzureDouble(config, args.port, args.state_file, args.log_file, args.control_secret)
    double.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    print('listening on %s:%d' % (double.host, double.port), flush=True)
    while not stop.wait(1):
        pass
    double.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
