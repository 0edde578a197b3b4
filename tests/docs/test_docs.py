#!/usr/bin/env python3
"""Keeps the documentation in step with the code.

    test_docs.py SOURCE_ROOT

Reads the C sources (with regular expressions, no compiler) and checks:
  - every key of daemon/config.c's settings[] table is described in its
    section of docs/man/popsignd.conf.5.scd and present (set or commented
    out) in its section of conf/popsignd.conf;
  - every option of popsign's and popsignd's getopt tables is a term of
    their man page, with its argument shown as the table says;
  - every exit status of client/exit_code.h (and popsignd's 0, 1, 2) is a
    term of the EXIT STATUS section, and nothing else is;
  - every environment variable the programs read is in ENVIRONMENT;
  - every route of daemon/http.c's routes[] table is in docs/openapi.yaml
    with exactly the statuses it can answer, openapi.yaml has no other path
    or method, and its 401, 405, 429 and 503 answers name their headers;
  - every API error code of common/error.h is in docs/api.md and in
    openapi.yaml's Error schema, and every route in docs/api.md.

Prints every problem found, then "N passed, N failed"; exits 1 on any.
Python standard library only: openapi.yaml is read by the small YAML reader
below, which knows the subset that file is written in and refuses the rest.
"""
import os
import re
import sys

ROOT = None


def read(rel):
    with open(os.path.join(ROOT, rel), encoding='utf-8') as f:
        return f.read()


class Problem(Exception):
    pass


# ---- C source helpers ---------------------------------------------------

def strip_c(text):
    """Comments removed and string and char literals emptied, keeping the
    line structure; braces inside strings ("{key}") no longer count."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('/*', i):
            j = text.find('*/', i + 2)
            j = n if j < 0 else j + 2
            out.append('\n' * text.count('\n', i, j))
            i = j
        elif text.startswith('//', i):
            j = text.find('\n', i)
            i = n if j < 0 else j
        elif c in '"\'':
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == '\\' else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def matching_brace(text, open_at):
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == '{':
            depth += 1
        elif text[i] == '}':
            depth -= 1
            if depth == 0:
                return i
    raise Problem('unbalanced braces')


def c_functions(text):
    """{name: (parameters, body)} of the functions defined in C text."""
    s = strip_c(text)
    funcs = {}
    pat = re.compile(r'^[A-Za-z_][^;{}()=#]*?\b([A-Za-z_]\w*)\s*\(([^;{}]*?)\)\s*\{', re.M)
    pos = 0
    while True:
        m = pat.search(s, pos)
        if not m:
            return funcs
        end = matching_brace(s, m.end() - 1)
        funcs[m.group(1)] = (m.group(2), s[m.end():end])
        pos = end + 1


def c_table(text, declaration):
    """The body of an initialised array: the text between the '{' after
    declaration and its matching '}'."""
    i = text.find(declaration)
    if i < 0:
        raise Problem('cannot find "%s"' % declaration)
    start = text.index('{', i)
    return text[start + 1:matching_brace(text, start)]


def split_top(text, sep=','):
    parts, depth, cur, quote = [], 0, [], None
    for c in text:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in '"\'':
            quote = c
        elif c in '{(':
            depth += 1
        elif c in '})':
            depth -= 1
        if c == sep and depth == 0:
            parts.append(''.join(cur).strip())
            cur = []
        else:
            cur.append(c)
    if ''.join(cur).strip():
        parts.append(''.join(cur).strip())
    return parts


def struct_fields(text, name):
    body = c_table(strip_c(text), 'struct %s {' % name)
    fields = []
    for decl in body.split(';'):
        decl = re.sub(r'\[[^]]*\]', '', decl).strip()
        m = re.search(r'(\w+)\s*(?:\)\s*\([^)]*\))?$', decl)
        if m:
            fields.append(m.group(1))
    return fields


def initialisers(table_text, fields):
    """Each {...} entry of an array of structs as {field: text}."""
    rows, i = [], 0
    while True:
        i = table_text.find('{', i)
        if i < 0:
            return rows
        end = matching_brace(table_text, i)
        values, row = split_top(table_text[i + 1:end]), {}
        for k, v in enumerate(values):
            m = re.match(r'\.(\w+)\s*=\s*(.*)$', v, re.S)
            if m:
                row[m.group(1)] = m.group(2).strip()
            elif k < len(fields):
                row[fields[k]] = v
        rows.append(row)
        i = end + 1


def c_string(value):
    m = re.fullmatch(r'"((?:[^"\\]|\\.)*)"', value.strip())
    return m.group(1) if m else None


# ---- what the code says ---------------------------------------------------

def error_table():
    """[(name, status, code)] from PS_ERROR_TABLE."""
    rows = re.findall(r'X\(\s*(PS_\w+)\s*,\s*-?\d+\s*,\s*(\d+)\s*,\s*"([^"]*)"',
                      read('common/error.h'))
    if len(rows) < 10:
        raise Problem('common/error.h: PS_ERROR_TABLE not found (%d rows)' % len(rows))
    return [(n, int(s), c) for n, s, c in rows]


def config_settings():
    """[(section, key)] from config.c's settings[] table."""
    text = read('daemon/config.c')
    fields = struct_fields(text, 'setting')
    rows = initialisers(c_table(text, 'settings[] ='), fields)
    out = []
    for r in rows:
        section = re.fullmatch(r'SECTION_([A-Z]+)', r.get('section', ''))
        name = c_string(r.get('name', ''))
        if not section or name is None:
            raise Problem('daemon/config.c: cannot read settings[] entry %r' % r)
        out.append((section.group(1).lower(), name))
    if len(out) < 5:
        raise Problem('daemon/config.c: settings[] has only %d entries' % len(out))
    return out


def getopt_options(main_c, headers):
    """({long: has_arg}, short letters) of the getopt_long call in main_c;
    macros in the option table are expanded from headers."""
    text = read(main_c)
    m = re.search(r'getopt_long\s*\([^,]+,[^,]+,\s*"([^"]*)"\s*,\s*(\w+)', text)
    if not m:
        raise Problem('%s: no getopt_long call' % main_c)
    shorts = [c for c in m.group(1) if c.isalnum()]
    table = c_table(text, '%s[] =' % m.group(2))
    macros = ''.join(read(h) for h in headers)
    for name in re.findall(r'^\s*([A-Z][A-Z0-9_]+)\s*,?\s*$', table, re.M):
        d = re.search(r'#define\s+%s\b((?:.*\\\n)*.*)' % name, macros)
        if not d:
            raise Problem('%s: cannot expand %s in the option table' % (main_c, name))
        table += '\n' + d.group(1).replace('\\\n', '\n')
    longs = dict(re.findall(
        r'\{\s*"([\w-]+)"\s*,\s*(no_argument|required_argument|optional_argument)', table))
    if not longs:
        raise Problem('%s: no long options found' % main_c)
    return longs, shorts


def exit_codes():
    rows = re.findall(r'X\(\s*(PS_EXIT_\w+)\s*,\s*(\d+)\s*,', read('client/exit_code.h'))
    if len(rows) < 5:
        raise Problem('client/exit_code.h: EXIT_CODE_TABLE not found')
    return {int(v): n for n, v in rows}


def daemon_exit_codes():
    m = re.search(r'Exit status:([^"]*)', read('daemon/main.c'))
    if not m:
        raise Problem('daemon/main.c: usage has no "Exit status:" line')
    return {int(n) for n in re.findall(r'\b(\d+) ', m.group(1))}


def env_vars(dirs):
    names = set()
    for d in dirs:
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if not f.endswith(('.c', '.h')):
                continue
            t = read(os.path.join(d, f))
            names.update(re.findall(r'\bgetenv\s*\(\s*"(\w+)"', t))
            names.update(re.findall(r'#define\s+\w*ENV\w*\s+"([A-Za-z_]\w*)"', t))
    return names


# ---- the routes and what each can answer -----------------------------------

MHD_STATUS = {
    'OK': 200, 'CREATED': 201, 'ACCEPTED': 202, 'NO_CONTENT': 204,
    'BAD_REQUEST': 400, 'UNAUTHORIZED': 401, 'FORBIDDEN': 403, 'NOT_FOUND': 404,
    'METHOD_NOT_ALLOWED': 405, 'NOT_ACCEPTABLE': 406, 'CONFLICT': 409,
    'PAYLOAD_TOO_LARGE': 413, 'UNSUPPORTED_MEDIA_TYPE': 415, 'TOO_MANY_REQUESTS': 429,
    'INTERNAL_SERVER_ERROR': 500, 'SERVICE_UNAVAILABLE': 503,
}
MHD_NOT_STATUS = re.compile(r'MHD_HTTP_(HEADER_|METHOD_(?!NOT_ALLOWED)|VERSION_|POST_ENCODING_)')

# request_begin() runs before every handler.  Which of the calls it makes
# apply to which routes cannot be read off with regular expressions, so it
# is said here, and the test fails if request_begin() makes a call or uses
# a code this table does not know.
BEGIN_CALLS = {
    'route_find': 'none', 'method_allowed': 'all', 'strstr': 'all',
    'authenticate': 'auth', 'resolve_key': 'key', 'limits_take': 'sign',
    'check_body_headers': 'sign', 'metric_add': 'all', 'metrics_counter': 'all',
}
BEGIN_CODES = {'PS_E_NOT_FOUND': 'none', 'PS_E_METHOD': 'all'}
# on_request() itself reads the body, which only the signing route takes.
ON_REQUEST_CODES = {'PS_E_TOO_LARGE': 'sign'}
C_KEYWORDS = {'if', 'for', 'while', 'switch', 'return', 'sizeof', 'do', 'else'}
# Functions whose results become values in a body (metrics), never a status.
NO_STATUS = {'update_signer_metrics'}


def header_docs():
    """{function: the comment above its prototype} of daemon/ and common/."""
    docs = {}
    for d in ('daemon', 'common'):
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if not f.endswith('.h'):
                continue
            text, doc = read(os.path.join(d, f)), ''
            for part in re.split(r'(/\*.*?\*/)', text, flags=re.S):
                if part.startswith('/*'):
                    doc = part
                    continue
                for m in re.finditer(r'\b([a-z_]\w*)\s*\([^;{}]*\)\s*(?:__attribute__\s*\(\(.*?\)\)\s*)?;',
                                     part, re.S):
                    docs[m.group(1)] = doc
    return docs


class StatusModel:
    def __init__(self):
        self.errors = {n: s for n, s, _ in error_table()}
        self.funcs = c_functions(read('daemon/http.c'))
        self.docs = header_docs()
        self.memo = {}

    def codes(self, text, where):
        out = set()
        for name in re.findall(r'\b(PS_E_\w+|PS_OK)\b', text):
            if name not in self.errors:
                raise Problem('%s uses %s, which is not in common/error.h' % (where, name))
            out.add(self.errors[name])
        for m in re.finditer(r'\bMHD_HTTP_\w+', text):
            name = m.group(0)
            if MHD_NOT_STATUS.match(name):
                continue
            short = name[len('MHD_HTTP_'):]
            if short not in MHD_STATUS:
                raise Problem('%s uses %s: add it to MHD_STATUS in test_docs.py' % (where, name))
            out.add(MHD_STATUS[short])
        return out

    @staticmethod
    def calls(body):
        return [c for c in re.findall(r'\b([a-z_]\w*)\s*\(', body) if c not in C_KEYWORDS]

    @staticmethod
    def passes_on(params):
        """Response plumbing: a function handed the status or error to send
        only passes on what its caller decided."""
        return re.search(r'\b(unsigned|int|long)\s+(status|err)\b', params) is not None

    def of(self, name, stack=()):
        """Statuses function name can lead to."""
        if name in self.memo:
            return self.memo[name]
        if name in stack or name in NO_STATUS:
            return set()
        if name not in self.funcs:
            return self.codes(self.docs.get(name, ''), 'the header comment of %s()' % name)
        params, body = self.funcs[name]
        if self.passes_on(params):
            return set()
        out = self.codes(body, 'daemon/http.c: %s()' % name)
        for c in self.calls(body):
            out |= self.of(c, stack + (name,))
        self.memo[name] = out
        return out

    def begin(self, route):
        params, body = self.funcs['request_begin']
        applies = {
            'none': False, 'all': True, 'auth': route['auth'],
            'key': route['auth'] and '{key}' in route['pattern'],
            'sign': route['sign'],
        }
        out = set()
        for c in self.calls(body):
            if c not in BEGIN_CALLS:
                raise Problem('request_begin() calls %s(): say in BEGIN_CALLS of '
                              'test_docs.py which routes that applies to' % c)
            if applies[BEGIN_CALLS[c]]:
                out |= self.of(c, ('request_begin',))
        for code in set(re.findall(r'\bPS_E_\w+', body)):
            if code not in BEGIN_CODES:
                raise Problem('request_begin() uses %s: say in BEGIN_CODES of '
                              'test_docs.py which routes that applies to' % code)
            if applies[BEGIN_CODES[code]]:
                out.add(self.errors[code])
        for code in set(re.findall(r'\bPS_E_\w+', self.funcs['on_request'][1])):
            if code not in ON_REQUEST_CODES:
                raise Problem('on_request() uses %s: say in ON_REQUEST_CODES of '
                              'test_docs.py which routes that applies to' % code)
            if applies[ON_REQUEST_CODES[code]]:
                out.add(self.errors[code])
        return out

    def route_statuses(self, route):
        for f in ('request_begin', 'on_request', route['handler']):
            if f not in self.funcs:
                raise Problem('daemon/http.c: no function %s()' % f)
        return self.begin(route) | self.of(route['handler'])


def routes():
    text = read('daemon/http.c')
    fields = struct_fields(text, 'route')
    rows = initialisers(c_table(text, 'routes[] ='), fields)
    out = []
    for r in rows:
        route = {
            'name': c_string(r.get('name', '')), 'pattern': c_string(r.get('pattern', '')),
            'method': c_string(r.get('method', '')), 'auth': r.get('auth') == 'true',
            'sign': r.get('sign') == 'true', 'handler': r.get('handler', '').strip(),
        }
        if not route['pattern'] or not route['method'] or not route['handler']:
            raise Problem('daemon/http.c: cannot read routes[] entry %r (fields %s)' % (r, fields))
        out.append(route)
    if len(out) < 3:
        raise Problem('daemon/http.c: routes[] has only %d entries' % len(out))
    return out


# ---- a YAML reader for openapi.yaml's subset --------------------------------

class Yaml:
    """Block mappings and sequences, '|' and '>' block scalars, quoted and
    plain scalars, flow sequences of scalars and the empty flow mapping.
    Duplicate keys and anything else are errors."""

    def __init__(self, text):
        self.raw = text.split('\n')
        self.lines = []
        for no, line in enumerate(self.raw):
            if '\t' in line[:len(line) - len(line.lstrip())]:
                raise Problem('openapi.yaml:%d: tab in indentation' % (no + 1))
            s = line.strip()
            if s and not s.startswith('#'):
                self.lines.append((len(line) - len(line.lstrip(' ')), s, no))
        self.i = 0

    def parse(self):
        v = self.block(self.lines[0][0])
        if self.i != len(self.lines):
            raise Problem('openapi.yaml:%d: unexpected indentation' % (self.lines[self.i][2] + 1))
        return v

    def block(self, indent):
        if self.lines[self.i][1].startswith('- ') or self.lines[self.i][1] == '-':
            return self.sequence(indent)
        return self.mapping(indent)

    def err(self, msg):
        raise Problem('openapi.yaml:%d: %s' % (self.lines[min(self.i, len(self.lines) - 1)][2] + 1, msg))

    def split_key(self, text):
        if text[0] in '"\'':
            end = text.index(text[0], 1)
            key, rest = text[1:end], text[end + 1:]
        else:
            m = re.match(r'([^:]+?):(?=\s|$)', text)
            if not m:
                self.err('expected "key: value"')
            key, rest = m.group(1), text[m.end(1):]
        if not rest.startswith(':'):
            self.err('expected ":" after key')
        return key, rest[1:].strip()

    def mapping(self, indent):
        out = {}
        while self.i < len(self.lines):
            ind, text, no = self.lines[self.i]
            if ind < indent:
                break
            if ind > indent or text.startswith('- '):
                self.err('unexpected indentation')
            key, rest = self.split_key(text)
            if key in out:
                self.err('duplicate key %r' % key)
            self.i += 1
            out[key] = self.value(indent, rest, no)
        return out

    def value(self, indent, rest, no):
        if rest in ('|', '>', '|-', '>-'):
            return self.block_scalar(indent, rest, no)
        if rest:
            return self.scalar(rest)
        if self.i < len(self.lines):
            ind, text, _ = self.lines[self.i]
            if ind > indent or (ind == indent and (text.startswith('- ') or text == '-')):
                return self.block(ind)
        return None

    def sequence(self, indent):
        out = []
        while self.i < len(self.lines):
            ind, text, no = self.lines[self.i]
            if ind < indent or not (text.startswith('- ') or text == '-'):
                break
            if ind > indent:
                self.err('unexpected indentation')
            content = text[1:].strip()
            if not content:
                self.i += 1
                out.append(self.block(self.lines[self.i][0]))
            elif re.match(r'("[^"]*"|[^\s"\'\[{][^:]*):(\s|$)', content):
                # "- key: value": a mapping indented to where key starts
                self.lines[self.i] = (ind + len(text) - len(content), content, no)
                out.append(self.mapping(ind + len(text) - len(content)))
            else:
                self.i += 1
                out.append(self.scalar(content))
        return out

    def block_scalar(self, indent, style, no):
        lines, j = [], no + 1
        while j < len(self.raw):
            line = self.raw[j]
            if line.strip() and len(line) - len(line.lstrip(' ')) <= indent:
                break
            lines.append(line)
            j += 1
        while self.i < len(self.lines) and self.lines[self.i][2] < j:
            self.i += 1
        body = [l for l in lines]
        while body and not body[-1].strip():
            body.pop()
        cut = min((len(l) - len(l.lstrip(' ')) for l in body if l.strip()), default=0)
        body = [l[cut:] for l in body]
        if style.startswith('>'):
            return ' '.join(l for l in body if l) + ('' if style.endswith('-') else '\n')
        return '\n'.join(body) + ('' if style.endswith('-') else '\n')

    def scalar(self, text):
        if text[0] == '"':
            if not text.endswith('"') or len(text) < 2:
                self.err('unterminated string')
            return re.sub(r'\\(.)', r'\1', text[1:-1])
        if text[0] == "'":
            if not text.endswith("'") or len(text) < 2:
                self.err('unterminated string')
            return text[1:-1].replace("''", "'")
        if text == '{}':
            return {}
        if text.startswith('['):
            if not text.endswith(']'):
                self.err('unterminated flow sequence')
            return [self.scalar(p) for p in split_top(text[1:-1])]
        if text[0] in '{&*!|>%@`':
            self.err('unsupported YAML: %s' % text)
        if ' #' in text:
            text = text[:text.index(' #')].rstrip()
        if re.fullmatch(r'-?\d+', text):
            return int(text)
        return {'true': True, 'false': False, 'null': None, '~': None}.get(text, text)


def openapi():
    doc = Yaml(read('docs/openapi.yaml')).parse()
    if not str(doc.get('openapi', '')).startswith('3.0'):
        raise Problem('docs/openapi.yaml: not an OpenAPI 3.0 document')
    return doc


def resolve(doc, node):
    seen = 0
    while isinstance(node, dict) and '$ref' in node:
        ref = node['$ref']
        if not ref.startswith('#/'):
            raise Problem('openapi.yaml: only local $ref are used, not %s' % ref)
        node = doc
        for part in ref[2:].split('/'):
            if not isinstance(node, dict) or part not in node:
                raise Problem('openapi.yaml: $ref %s does not resolve' % ref)
            node = node[part]
        seen += 1
        if seen > 10:
            raise Problem('openapi.yaml: $ref loop')
    return node


def all_refs_resolve(doc, node, where='#'):
    problems = []
    if isinstance(node, dict):
        if '$ref' in node:
            try:
                resolve(doc, node)
            except Problem as e:
                problems.append('%s: %s' % (where, e))
        for k, v in node.items():
            problems += all_refs_resolve(doc, v, where + '/' + str(k))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            problems += all_refs_resolve(doc, v, '%s/%d' % (where, k))
    return problems


# ---- man page helpers ----------------------------------------------------------

def scd_sections(rel):
    """{heading: text} of an scdoc page's '# HEADING' sections."""
    out, name = {}, None
    for line in read(rel).split('\n'):
        m = re.match(r'# (.+)$', line)
        if m:
            name = m.group(1).strip()
            out[name] = ''
        elif name:
            out[name] += line + '\n'
    return out


def scd_terms(text):
    """The definition-list terms: unindented lines followed by an indented one."""
    lines = text.split('\n')
    return [l for k, l in enumerate(lines[:-1])
            if l and not l[0].isspace() and lines[k + 1].startswith('\t')]


def section(sections, rel, *names):
    for n in names:
        if n in sections:
            return sections[n]
    raise Problem('%s: no section %s' % (rel, ' or '.join(names)))


# ---- the checks ------------------------------------------------------------------

def check_config_keys():
    problems = []
    rel = 'docs/man/popsignd.conf.5.scd'
    sections = scd_sections(rel)
    conf = read('conf/popsignd.conf')
    conf_parts = {}
    for m in re.finditer(r'^\[\s*(daemon|key|client)\b[^\]]*\](.*?)(?=^\[|\Z)', conf, re.M | re.S):
        conf_parts.setdefault(m.group(1), []).append(m.group(2))
    for sec, key in config_settings():
        heading = [h for h in sections if re.search(r'\[%s\b' % sec, h)]
        if not heading:
            problems.append('%s: no section about [%s]' % (rel, sec))
            continue
        terms = scd_terms(sections[heading[0]])
        if not any(t.startswith('*%s*' % key) for t in terms):
            problems.append('%s: [%s] key "%s" is not described (a term "*%s* = ...")'
                            % (rel, sec, key, key))
        if not any(re.search(r'^[#;]?[ \t]*%s[ \t]*=' % re.escape(key), part, re.M)
                   for part in conf_parts.get(sec, [])):
            problems.append('conf/popsignd.conf: [%s] key "%s" is missing (set it or show it '
                            'commented out, "#%s = ...", in a [%s] section)' % (sec, key, key, sec))
    return problems


def check_options(main_c, headers, rel):
    problems = []
    longs, shorts = getopt_options(main_c, headers)
    terms = scd_terms(read(rel))
    for name, has_arg in sorted(longs.items()):
        term = [t for t in terms if re.search(r'\*--%s\*(?![\w-])' % re.escape(name), t)]
        if not term:
            problems.append('%s: option --%s of %s is not described (a term "*--%s*")'
                            % (rel, name, main_c, name))
            continue
        after = term[0].split('*--%s*' % name, 1)[1]
        shown = {'required_argument': after.startswith(' _'),
                 'optional_argument': after.startswith('[*='),
                 'no_argument': not after.startswith((' _', '['))}[has_arg]
        if not shown:
            problems.append('%s: --%s takes %s, but its term is "%s"' % (
                rel, name, has_arg.replace('_', ' '), term[0]))
    for c in shorts:
        if not any(re.search(r'\*-%s\*' % re.escape(c), t) for t in terms):
            problems.append('%s: option -%s of %s is not described' % (rel, c, main_c))
    return problems


def check_client_options():
    return check_options('client/main.c', ['client/azure_cmd.h', 'client/cli.h'],
                         'docs/man/popsign.1.scd')


def check_daemon_options():
    return check_options('daemon/main.c', [], 'docs/man/popsignd.8.scd')


def exit_terms(rel):
    text = section(scd_sections(rel), rel, 'EXIT STATUS')
    return {int(m) for t in scd_terms(text) for m in re.findall(r'^\*(\d+)\*$', t)}


def check_exit_codes():
    problems = []
    rel = 'docs/man/popsign.1.scd'
    codes, documented = exit_codes(), exit_terms(rel)
    for value, name in sorted(codes.items()):
        if value not in documented:
            problems.append('%s: exit status %d (%s) is not in EXIT STATUS' % (rel, value, name))
    for value in sorted(documented - set(codes)):
        problems.append('%s: EXIT STATUS has %d, which client/exit_code.h does not' % (rel, value))
    rel = 'docs/man/popsignd.8.scd'
    daemon, documented = daemon_exit_codes(), exit_terms(rel)
    if daemon != documented:
        problems.append('%s: EXIT STATUS has %s; popsignd --help says %s' % (
            rel, sorted(documented), sorted(daemon)))
    return problems


def check_environment():
    problems = []
    wanted = {
        'docs/man/popsign.1.scd': env_vars(['client']),
        'docs/man/popsignd.8.scd': env_vars(['daemon', 'common']) |
        {'NOTIFY_SOCKET', 'CREDENTIALS_DIRECTORY', 'SOFTHSM2_CONF'},
    }
    for rel, names in wanted.items():
        text = section(scd_sections(rel), rel, 'ENVIRONMENT')
        terms = ' '.join(scd_terms(text))
        for name in sorted(names):
            if not re.search(r'\*%s\*' % re.escape(name), terms):
                problems.append('%s: environment variable %s is not in ENVIRONMENT' % (rel, name))
    return problems


def check_openapi_routes():
    problems = []
    doc = openapi()
    problems += all_refs_resolve(doc, doc)
    paths = doc.get('paths') or {}
    model = StatusModel()
    table = routes()
    methods = {'get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'}
    for r in table:
        op = (paths.get(r['pattern']) or {}).get(r['method'].lower())
        if not op:
            problems.append('docs/openapi.yaml: no %s %s (route "%s" of daemon/http.c)'
                            % (r['method'], r['pattern'], r['name']))
            continue
        want = model.route_statuses(r)
        have = {int(s) for s in (op.get('responses') or {})}
        for s in sorted(want - have):
            problems.append('docs/openapi.yaml: %s %s does not list status %d, which '
                            'daemon/http.c can answer' % (r['method'], r['pattern'], s))
        for s in sorted(have - want):
            problems.append('docs/openapi.yaml: %s %s lists status %d, which daemon/http.c '
                            'never answers there' % (r['method'], r['pattern'], s))
        for status, header in ((401, 'WWW-Authenticate'), (405, 'Allow'),
                               (429, 'Retry-After'), (503, 'Retry-After')):
            resp = resolve(doc, (op.get('responses') or {}).get(str(status)))
            if resp is not None and header not in (resp.get('headers') or {}):
                problems.append('docs/openapi.yaml: %s %s answers %d without the %s header'
                                % (r['method'], r['pattern'], status, header))
    served = {(r['pattern'], r['method'].lower()) for r in table}
    for path, item in paths.items():
        for m in set(item) & methods:
            if (path, m) not in served:
                problems.append('docs/openapi.yaml: %s %s is not a route of daemon/http.c'
                                % (m.upper(), path))
    return problems


def check_error_codes():
    problems = []
    api_md = read('docs/api.md')
    doc = openapi()
    schema = resolve(doc, doc['components']['schemas']['Error'])
    enum = set(schema['properties']['error']['properties']['code']['enum'])
    codes = {c for n, _, c in error_table() if n != 'PS_OK'}
    for code in sorted(codes):
        if not re.search(r'`%s`' % re.escape(code), api_md):
            problems.append('docs/api.md: error code `%s` is not described' % code)
        if code not in enum:
            problems.append('docs/openapi.yaml: error code %s is not in the Error schema' % code)
    for code in sorted(enum - codes):
        problems.append('docs/openapi.yaml: the Error schema has %s, which common/error.h '
                        'does not' % code)
    for r in routes():
        if '%s %s' % (r['method'], r['pattern']) not in api_md:
            problems.append('docs/api.md: route %s %s is not described' % (r['method'], r['pattern']))
    return problems


CHECKS = [check_config_keys, check_client_options, check_daemon_options, check_exit_codes,
          check_environment, check_openapi_routes, check_error_codes]


def main():
    global ROOT
    ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', '..')
    passed = failed = 0
    for check in CHECKS:
        try:
            problems = check()
        except (Problem, OSError, KeyError, ValueError) as e:
            problems = ['cannot check: %s: %s' % (type(e).__name__, e)]
        if problems:
            failed += 1
            print('FAIL %s' % check.__name__)
            for p in problems:
                print('  - %s' % p)
        else:
            passed += 1
            print('ok   %s' % check.__name__)
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
