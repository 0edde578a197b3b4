"""Read the recorded Azure HTTP sessions in ../shared/azure/recordings/.

Two formats, one result: a list of Session objects, each a list of Interaction
(method, uri, request headers and body, status, response headers and body).
Bodies are JSON text or None, exactly as recorded.

- .NET recordings (JSON): track 1 keeps bodies as strings and header values as
  lists; track 2 keeps bodies as parsed JSON and header values as strings.
- azure-cli cassettes (YAML, vcrpy): read by the small YAML reader below, which
  covers what the cassettes use: block mappings and sequences, "- key: value"
  items, plain scalars, and single- or double-quoted scalars folded over lines.
  The standard library has no YAML and the tests must not need PyYAML.
"""

import glob
import json
import os
import re
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))


def shared_dir():
    """SHARED_DIR from meson, else <project root>/../shared."""
    return os.environ.get('SHARED_DIR') or os.path.normpath(os.path.join(HERE, '..', '..', '..', '..', 'shared'))


def recordings_dir():
    return os.path.join(shared_dir(), 'azure', 'recordings')


# ---------------------------------------------------------------------------
# A YAML subset

class YamlError(ValueError):
    pass


class _Reader:
    def __init__(self, text):
        self.lines = text.split('\n')
        self.i = 0

    def _blank(self, line):
        s = line.strip()
        return not s or s.startswith('#')

    def peek(self):
        while self.i < len(self.lines) and self._blank(self.lines[self.i]):
            self.i += 1
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        if '\t' in line[:len(line) - len(line.lstrip())]:
            raise YamlError('line %d: tab in indentation' % (self.i + 1))
        indent = len(line) - len(line.lstrip(' '))
        return indent, line[indent:]

    def node(self, indent):
        p = self.peek()
        if p is None or p[0] < indent:
            return None
        if _is_item(p[1]):
            return self.sequence(p[0])
        return self.mapping(p[0])

    def sequence(self, indent):
        items = []
        while True:
            p = self.peek()
            if p is None or p[0] != indent or not _is_item(p[1]):
                return items
            rest = p[1][1:]
            col = indent + 1 + (len(rest) - len(rest.lstrip(' ')))
            rest = rest.strip()
            if not rest:
                self.i += 1
                items.append(self.node(indent + 1))
            elif _KEY_RE.match(rest):
                self.lines[self.i] = ' ' * col + rest
                items.append(self.mapping(col))
            else:
                self.i += 1
                items.append(self.scalar(rest, indent))

    def mapping(self, indent):
        out = {}
        while True:
            p = self.peek()
            if p is None or p[0] != indent or _is_item(p[1]):
                return out
            m = _KEY_RE.match(p[1])
            if not m:
                raise YamlError('line %d: expected "key: value"' % (self.i + 1))
            key, rest = m.group(1), (m.group(2) or '').strip()
            if key in out:
                raise YamlError('line %d: duplicate key %r' % (self.i + 1, key))
            self.i += 1
            if rest:
                out[key] = self.scalar(rest, indent)
                continue
            nxt = self.peek()
            if nxt and (nxt[0] > indent or (nxt[0] == indent and _is_item(nxt[1]))):
                out[key] = self.sequence(indent) if nxt[0] == indent else self.node(indent + 1)
            else:
                out[key] = None

    def scalar(self, first, indent):
        """A scalar starting with the text first; continuation lines follow (self.i is past first's line)."""
        if first[0] in '\'"':
            return self.quoted(first, first[0])
        parts = [first.strip()]
        while self.i < len(self.lines):
            line = self.lines[self.i]
            lead = len(line) - len(line.lstrip(' '))
            if self._blank(line) or lead <= indent:
                break
            parts.append(line.strip())
            self.i += 1
        return _plain(' '.join(parts))

    def quoted(self, first, quote):
        pieces = [first[1:]]
        while True:
            text = '\n'.join(pieces)
            end = _closing(text, quote)
            if end is not None:
                if text[end + 1:].strip():
                    raise YamlError('line %d: text after a closing quote' % self.i)
                return _unquote(_fold(text[:end].split('\n')), quote)
            if self.i >= len(self.lines):
                raise YamlError('unterminated quoted scalar')
            pieces.append(self.lines[self.i])
            self.i += 1


_KEY_RE = re.compile(r'^([^\s\'"#\-:][^:]*?|[\-][^\s:][^:]*?):(?:\s+(.*))?$')


def _is_item(text):
    return text == '-' or text.startswith('- ')


def _closing(text, quote):
    i = 0
    while i < len(text):
        c = text[i]
        if quote == '"' and c == '\\':
            i += 2
            continue
        if c == quote:
            if quote == "'" and text[i + 1:i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    return None


def _fold(lines):
    """YAML flow folding: a single line break is a space, each empty line a newline."""
    out = lines[0].rstrip(' ')
    pending_empty = 0
    for line in lines[1:]:
        s = line.strip(' ')
        if not s:
            pending_empty += 1
            continue
        if out.endswith('\\') and not out.endswith('\\\\'):
            out = out[:-1] + s   # an escaped line break (double quotes only)
        else:
            out += ('\n' * pending_empty if pending_empty else ' ') + s
        pending_empty = 0
    return out + '\n' * pending_empty


_ESCAPES = {'n': '\n', 't': '\t', 'r': '\r', '"': '"', '\\': '\\', '/': '/', '0': '\0', ' ': ' ', 'b': '\b'}


def _unquote(text, quote):
    if quote == "'":
        return text.replace("''", "'")

    def esc(m):
        s = m.group(1)
        if s[0] in 'uxU':
            return chr(int(s[1:], 16))
        return _ESCAPES[s]
    return re.sub(r'\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|x[0-9A-Fa-f]{2}|.)', esc, text)


def _plain(text):
    if text in ('null', '~', ''):
        return None
    if text in ('true', 'false'):
        return text == 'true'
    if re.fullmatch(r'-?\d+', text):
        return int(text)
    if ' #' in text:
        text = text.split(' #', 1)[0].rstrip()
    return text


def yaml_load(text):
    r = _Reader(text)
    out = r.node(0)
    if r.peek() is not None:
        raise YamlError('line %d: unexpected text' % (r.i + 1))
    return out


# ---------------------------------------------------------------------------
# Sessions

class Interaction:
    def __init__(self, method, uri, req_headers, req_body, status, resp_headers, resp_body):
        self.method = method
        self.uri = uri
        self.req_headers = {k.lower(): v for k, v in req_headers.items()}
        self.req_body = req_body
        self.status = status
        self.resp_headers = {k.lower(): v for k, v in resp_headers.items()}
        self.resp_body = resp_body
        parts = urllib.parse.urlsplit(uri)
        self.path = parts.path
        self.api_version = (urllib.parse.parse_qs(parts.query).get('api-version') or [None])[0]

    def resp_json(self):
        return json.loads(self.resp_body) if self.resp_body else None

    def req_json(self):
        return json.loads(self.req_body) if self.req_body else None


class Session:
    def __init__(self, name, fmt, interactions):
        self.name = name
        self.format = fmt
        self.interactions = interactions


def _one(value):
    """A header value: track 1 keeps a list, track 2 and vcrpy a string or list."""
    if isinstance(value, list):
        return ', '.join(str(v) for v in value)
    return None if value is None else str(value)


def _json_text(body):
    if body is None or body == '':
        return None
    if isinstance(body, str):
        return body
    return json.dumps(body)


def load_dotnet(path):
    with open(path) as f:
        data = json.load(f)
    out = []
    for e in data['Entries']:
        out.append(Interaction(e['RequestMethod'], e['RequestUri'],
                               {k: _one(v) for k, v in e['RequestHeaders'].items()}, _json_text(e.get('RequestBody')),
                               int(e['StatusCode']), {k: _one(v) for k, v in e['ResponseHeaders'].items()},
                               _json_text(e.get('ResponseBody'))))
    return out


def load_cassette(path):
    with open(path) as f:
        data = yaml_load(f.read())
    out = []
    for item in data['interactions']:
        req, resp = item['request'], item['response']
        body = resp.get('body') or {}
        out.append(Interaction(req['method'], req['uri'], {k: _one(v) for k, v in (req.get('headers') or {}).items()},
                               _json_text(req.get('body')), int(resp['status']['code']),
                               {k: _one(v) for k, v in (resp.get('headers') or {}).items()},
                               _json_text(body.get('string'))))
    return out


def load_all(root=None):
    root = root or recordings_dir()
    sessions = []
    for path in sorted(glob.glob(os.path.join(root, 'net-*', '*', '*.json'))):
        sessions.append(Session(os.path.relpath(path, root), 'dotnet', load_dotnet(path)))
    for path in sorted(glob.glob(os.path.join(root, 'azure-cli', '*.yaml'))):
        sessions.append(Session(os.path.relpath(path, root), 'azure-cli', load_cassette(path)))
    return sessions


CERT_PATH_RE = re.compile(r'^/subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.devices/'
                          r'(provisioningservices|iothubs)/([^/]+)/certificates(?:/([^/]+)(?:/(\w+))?)?$',
                          re.IGNORECASE)


def certificate_operation(inter):
    """(service, subscription, rg, parent, name, op) of a certificate request, else None.

    op: put, get, list, delete, generate or verify."""
    m = CERT_PATH_RE.match(inter.path)
    if not m:
        return None
    sub, rg, kind, parent, name, action = m.groups()
    service = 'dps' if kind.lower() == 'provisioningservices' else 'iothub'
    if name is None:
        op = 'list'
    elif action is None:
        op = {'PUT': 'put', 'GET': 'get', 'DELETE': 'delete'}[inter.method]
    else:
        op = {'generateverificationcode': 'generate', 'verify': 'verify'}[action.lower()]
    return service, sub, rg, parent, name, op
