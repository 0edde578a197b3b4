"""Helpers for the tests of the Azure test double (standard library only).

- Certificates made with the openssl command line in a temporary directory:
  a CA (EC P-256 or RSA), and verification certificates signed by it.
- A JWT client assertion signed with `openssl dgst -sha256 -sign`.
- An HTTP helper over urllib that returns error answers instead of raising.
- ARM URLs of the double's default resources.
"""

import base64
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import azure_double  # noqa: E402

DOUBLE_PY = os.path.join(HERE, 'azure_double.py')
DEFAULTS = azure_double.DEFAULT_CONFIG
TENANT = DEFAULTS['tenants'][0]
SECRET_CLIENT = DEFAULTS['clients'][0]['client_id']
SECRET = DEFAULTS['clients'][0]['secret']
SUB = DEFAULTS['resources'][0]['subscription']
RG = DEFAULTS['resources'][0]['resource_group']
DPS = DEFAULTS['resources'][0]['dps'][0]
HUB = DEFAULTS['resources'][0]['iothub'][0]
STATIC_TOKEN = DEFAULTS['static_tokens'][0]
MI_SYSTEM = DEFAULTS['managed_identity']['system_assigned']
MI_USER = DEFAULTS['managed_identity']['user_assigned'][0]
SCOPE = 'https://management.azure.com/.default'
DEFAULT_VERSION = {'dps': '2022-12-12', 'iothub': '2023-06-30'}
SEGMENT = {'dps': 'provisioningServices', 'iothub': 'IotHubs'}
PARENT = {'dps': DPS, 'iothub': HUB}


def openssl(*args, data=None):
    proc = subprocess.run(['openssl'] + list(args), input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError('openssl %s: %s' % (' '.join(args), proc.stderr.decode()))
    return proc.stdout


def _keygen_args(kind):
    if kind == 'ec':
        return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']
    return ['-newkey', 'rsa:2048']


def make_ca(tmp, name, kind='ec', cn=None, days=30):
    """A self-signed CA certificate (CA:TRUE, pathlen 1): (key path, cert path)."""
    key, cert = os.path.join(tmp, name + '.key'), os.path.join(tmp, name + '.pem')
    openssl('req', '-x509', *_keygen_args(kind), '-nodes', '-keyout', key, '-out', cert,
            '-subj', '/CN=' + (cn or name), '-days', str(max(days, 1)),
            '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:1',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature')
    if days == 0:   # req refuses -days 0; x509 re-signs it to expire now
        openssl('x509', '-in', cert, '-signkey', key, '-days', '0', '-out', cert)
    return key, cert


def make_leaf(tmp, ca_key, ca_cert, subject, days=1, akid=True, kind='ec'):
    """A certificate for a fresh key with this subject, signed by ca_key; its PEM text."""
    tag = uuid.uuid4().hex
    key, csr, out, ext = (os.path.join(tmp, tag + s) for s in ('.key', '.csr', '.pem', '.ext'))
    openssl('req', '-new', *_keygen_args(kind), '-nodes', '-keyout', key, '-subj', subject, '-out', csr)
    with open(ext, 'w') as f:
        f.write('authorityKeyIdentifier=keyid\n' if akid else
                'authorityKeyIdentifier=none\nsubjectKeyIdentifier=none\n')
    openssl('x509', '-req', '-in', csr, '-CA', ca_cert, '-CAkey', ca_key, '-days', str(days),
            '-out', out, '-extfile', ext)
    with open(out) as f:
        return f.read()


def pem_der(pem_text):
    return azure_double.pem_to_der(pem_text.encode())


def encode(pem_text, how):
    """The "certificate" string as a client may send it (fact 5)."""
    if how == 'pem':
        return pem_text.replace('\r\n', '\n').replace('\n', '\r\n')
    if how == 'b64pem':
        return base64.b64encode(pem_text.replace('\r\n', '\n').replace('\n', '\r\n').encode()).decode()
    if how == 'b64der':
        return base64.b64encode(pem_der(pem_text)).decode()
    raise ValueError(how)


@functools.lru_cache(maxsize=None)
def thumbprint_by_openssl(pem_path):
    out = openssl('x509', '-in', pem_path, '-noout', '-fingerprint', '-sha1').decode()
    return out.strip().split('=', 1)[1].replace(':', '').upper()


@functools.lru_cache(maxsize=None)
def enddate_by_openssl(pem_path):
    out = openssl('x509', '-in', pem_path, '-noout', '-enddate').decode()
    t = time.strptime(' '.join(out.strip().split('=', 1)[1].split()), '%b %d %H:%M:%S %Y GMT')
    return time.strftime('%a, %d %b %Y %H:%M:%S GMT', t)


@functools.lru_cache(maxsize=None)
def subject_by_openssl(pem_path):
    """The subject as openssl prints it with -nameopt RFC2253."""
    out = openssl('x509', '-in', pem_path, '-noout', '-subject', '-nameopt', 'RFC2253').decode()
    return out.strip().split('=', 1)[1]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def make_assertion(key_path, cert_path, client_id, aud, header=None, claims=None, drop=()):
    """A JWT client assertion signed RS256 with key_path; header/claims override the defaults."""
    with open(cert_path, 'rb') as f:
        der = azure_double.pem_to_der(f.read())
    now = int(time.time())
    h = {'alg': 'RS256', 'typ': 'JWT', 'x5t': b64url(hashlib.sha1(der).digest())}
    c = {'aud': aud, 'iss': client_id, 'sub': client_id, 'jti': str(uuid.uuid4()),
         'nbf': now, 'iat': now, 'exp': now + 600}
    h.update(header or {})
    c.update(claims or {})
    for k in drop:
        c.pop(k, None)
    signing_input = b64url(json.dumps(h).encode()) + '.' + b64url(json.dumps(c).encode())
    sig = openssl('dgst', '-sha256', '-sign', key_path, data=signing_input.encode())
    return signing_input + '.' + b64url(sig)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode('utf-8'))

    def header(self, name):
        return self.headers.get(name)

    def __repr__(self):
        return '<%d %r>' % (self.status, self.body[:300])


def call(method, url, body=None, headers=None, token=None, form=None):
    """One HTTP request; error statuses come back as a Response too."""
    headers = dict(headers or {})
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers.setdefault('Content-Type', 'application/x-www-form-urlencoded')
    elif body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault('Content-Type', 'application/json')
    elif method in ('POST', 'PUT'):
        data = b''
    if token is not None:
        headers['Authorization'] = 'Bearer ' + token
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def certs_url(base, service, name=None, action=None, version=None, sub=SUB, rg=RG, parent=None):
    url = '%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s/certificates' % (
        base, sub, rg, SEGMENT[service], parent or PARENT[service])
    if name is not None:
        url += '/' + urllib.parse.quote(name, safe='')
    if action:
        url += '/' + action
    if version is not False:
        url += '?api-version=' + (DEFAULT_VERSION[service] if version is None else version)
    return url
