#!/usr/bin/env python3
"""`meson install --destdir` into a temporary directory, and what it leaves.

Environment (set by tests/docs/meson.build):
  POPSIGN_BUILD_ROOT   the build directory to install from (already built)
  POPSIGN_SOURCE_ROOT  the source tree
  MESON                the meson command
  MAKE_TOKEN           tests/make-token.sh

Checks that every file is installed where meson's options and systemd's
pkg-config file say, with sane modes (programs 0755; man pages, units and
fragments 0644; the example config 0644 or 0640); that the unit starts the
installed popsignd with the installed config; that the installed popsignd -t
refuses the example config as shipped (its key and PIN do not exist here)
and accepts it once its key URI, PIN file and certificate name a throwaway
SoftHSM2 token.  Prints each check, then "N passed, N failed".
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

BUILD = os.environ['POPSIGN_BUILD_ROOT']
MESON = os.environ.get('MESON', 'meson')
MAKE_TOKEN = os.environ['MAKE_TOKEN']


class Failed(Exception):
    pass


def run(argv, env=None, timeout=120):
    return subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout)


def options():
    with open(os.path.join(BUILD, 'meson-info', 'intro-buildoptions.json')) as f:
        opts = {o['name']: o['value'] for o in json.load(f)}
    prefix = opts['prefix']

    def under(name):
        return os.path.join(prefix, opts[name])  # an absolute value stays as it is

    return {'prefix': prefix, 'bindir': under('bindir'), 'sbindir': under('sbindir'),
            'libexecdir': under('libexecdir'), 'mandir': under('mandir'),
            'sysconfdir': under('sysconfdir')}


def systemd_dirs(prefix):
    """Where systemd's pkg-config file puts units and fragments, or the
    fallbacks under the prefix that systemd/meson.build uses without it."""
    names = {'unitdir': 'systemdsystemunitdir', 'sysusersdir': 'sysusersdir',
             'tmpfilesdir': 'tmpfilesdir'}
    fallback = {'unitdir': 'lib/systemd/system', 'sysusersdir': 'lib/sysusers.d',
                'tmpfilesdir': 'lib/tmpfiles.d'}
    out = {}
    for key, var in names.items():
        try:
            r = run(['pkg-config', '--variable=' + var, 'systemd'])
            value = r.stdout.strip() if r.returncode == 0 else ''
        except OSError:
            value = ''
        out[key] = value or os.path.join(prefix, fallback[key])
    return out


def in_dest(dest, path):
    return os.path.join(dest, path.lstrip('/'))


def expected_files(o, s):
    config_modes = (0o644, 0o640)
    return [
        (os.path.join(o['bindir'], 'popsign'), (0o755,)),
        (os.path.join(o['sbindir'], 'popsignd'), (0o755,)),
        (os.path.join(o['libexecdir'], 'popsign', 'popsignd-signer'), (0o755,)),
        (os.path.join(o['mandir'], 'man1', 'popsign.1'), (0o644,)),
        (os.path.join(o['mandir'], 'man5', 'popsignd.conf.5'), (0o644,)),
        (os.path.join(o['mandir'], 'man8', 'popsignd.8'), (0o644,)),
        (os.path.join(o['sysconfdir'], 'popsign', 'popsignd.conf'), config_modes),
        (os.path.join(s['unitdir'], 'popsignd.service'), (0o644,)),
        (os.path.join(s['unitdir'], 'popsignd.socket'), (0o644,)),
        (os.path.join(s['sysusersdir'], 'popsign.conf'), (0o644,)),
        (os.path.join(s['tmpfilesdir'], 'popsign.conf'), (0o644,)),
    ]


def check_install(dest):
    r = run([MESON, 'install', '-C', BUILD, '--destdir', dest, '--no-rebuild'])
    if r.returncode != 0:
        raise Failed('meson install failed (%d):\n%s' % (r.returncode, r.stdout))


def check_files(dest, o, s):
    problems = []
    want = expected_files(o, s)
    for path, modes in want:
        p = in_dest(dest, path)
        if not os.path.isfile(p) or os.path.islink(p):
            problems.append('%s: not installed (or not a regular file)' % path)
            continue
        mode = stat.S_IMODE(os.stat(p).st_mode)
        if mode not in modes:
            problems.append('%s: mode %04o, expected %s' % (
                path, mode, ' or '.join('%04o' % m for m in modes)))
    known = {in_dest(dest, p) for p, _ in want}
    for top, _, files in os.walk(dest):
        for f in files:
            p = os.path.join(top, f)
            if p not in known:
                print('  note: also installed: /%s' % os.path.relpath(p, dest))
    if problems:
        raise Failed('\n'.join(problems))


def check_man_pages(dest, o):
    problems = []
    for sec, page in (('1', 'popsign'), ('5', 'popsignd.conf'), ('8', 'popsignd')):
        p = in_dest(dest, os.path.join(o['mandir'], 'man' + sec, '%s.%s' % (page, sec)))
        with open(p) as f:
            text = f.read()
        if not re.search(r'^\.TH "%s" "%s"' % (re.escape(page), sec), text, re.M):
            problems.append('%s: no .TH "%s" "%s" header: not a man page' % (p, page, sec))
        if '.SH NAME' not in text or '.SH SYNOPSIS' not in text:
            problems.append('%s: no NAME or SYNOPSIS section' % p)
    if problems:
        raise Failed('\n'.join(problems))


def check_unit(dest, o, s):
    unit = in_dest(dest, os.path.join(s['unitdir'], 'popsignd.service'))
    with open(unit) as f:
        text = f.read()
    m = re.search(r'^ExecStart=(\S+) -c (\S+)$', text, re.M)
    if not m:
        raise Failed('%s: no "ExecStart=PROGRAM -c CONFIG" line' % unit)
    daemon = os.path.join(o['sbindir'], 'popsignd')
    config = os.path.join(o['sysconfdir'], 'popsign', 'popsignd.conf')
    if (m.group(1), m.group(2)) != (daemon, config):
        raise Failed('%s: ExecStart runs %s -c %s; installed are %s and %s' % (
            unit, m.group(1), m.group(2), daemon, config))


def rewrite_config(text, tokdir):
    """The example config, its keys pointed at the throwaway token."""
    out, uris, certs = [], 0, 0
    for line in text.split('\n'):
        if re.match(r'uri\s*=', line):
            uris += 1
            for pat, rep in ((r'token=[^;?]*', 'token=popsign-test'),
                             (r'object=[^;?]*', 'object=ec256'),
                             (r'pin-source=[^&\s]*', 'pin-source=file:' + tokdir + '/user.pin')):
                line, n = re.subn(pat, rep, line)
                if n != 1:
                    raise Failed('the example uri has no single %s: %s' % (pat, line))
        elif re.match(r'certificate\s*=', line):
            certs += 1
            line = 'certificate = %s/ec256.pem' % tokdir
        out.append(line)
    if uris == 0:
        raise Failed('the example config sets no uri')
    return '\n'.join(out), uris, certs


def check_popsignd_test(dest, o, tmp):
    daemon = in_dest(dest, os.path.join(o['sbindir'], 'popsignd'))
    config = in_dest(dest, os.path.join(o['sysconfdir'], 'popsign', 'popsignd.conf'))
    tokdir = os.path.join(tmp, 'token')
    r = run([MAKE_TOKEN, tokdir, 'ec256'])
    if r.returncode != 0:
        raise Failed('make-token.sh failed:\n' + r.stdout)
    env = dict(os.environ, SOFTHSM2_CONF=os.path.join(tokdir, 'softhsm2.conf'))
    for prog in (daemon, in_dest(dest, os.path.join(o['bindir'], 'popsign'))):
        r = run([prog, '--version'], env=env)
        if r.returncode != 0 or not r.stdout.startswith(os.path.basename(prog) + ' '):
            raise Failed('%s --version: status %d, "%s"' % (prog, r.returncode, r.stdout.strip()))

    # As shipped, the key and PIN it names do not exist here: refused, exit 1.
    r = run([daemon, '-t', '-c', config], env=env)
    if r.returncode != 1:
        raise Failed('popsignd -t with the example config as shipped: status %d, expected 1 '
                     '(its PIN file and certificate do not exist here):\n%s' % (r.returncode, r.stdout))

    with open(config) as f:
        text, uris, certs = rewrite_config(f.read(), tokdir)
    checked = os.path.join(tmp, 'popsignd.conf')
    with open(checked, 'w') as f:
        f.write(text)
    r = run([daemon, '-t', '-c', checked], env=env)
    ok = '%s: configuration and %d key(s) OK' % (checked, uris)
    if r.returncode != 0 or ok not in r.stdout:
        raise Failed('installed popsignd -t -c (the example config, keys on a SoftHSM2 '
                     'token): status %d, expected 0 and "%s":\n%s' % (r.returncode, ok, r.stdout))


def main():
    tmp = tempfile.mkdtemp(prefix='popsign-install-')
    dest = os.path.join(tmp, 'dest')
    o = options()
    s = systemd_dirs(o['prefix'])
    checks = [
        ('meson install --destdir', lambda: check_install(dest)),
        ('every file present, modes sane', lambda: check_files(dest, o, s)),
        ('man pages are man pages', lambda: check_man_pages(dest, o)),
        ('unit runs the installed popsignd and config', lambda: check_unit(dest, o, s)),
        ('installed popsignd -t and the example config', lambda: check_popsignd_test(dest, o, tmp)),
    ]
    passed = failed = 0
    try:
        for name, check in checks:
            try:
                check()
                passed += 1
                print('ok   %s' % name)
            except (Failed, OSError, subprocess.TimeoutExpired) as e:
                failed += 1
                print('FAIL %s\n  %s' % (name, str(e).replace('\n', '\n  ')))
                if name.startswith('meson install'):
                    break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
