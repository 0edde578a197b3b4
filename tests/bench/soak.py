"""Soak test (issue 5): 100,000 certificates through a real popsignd on a
throwaway SoftHSM2 token, with the audit log on.  Resident memory of the
daemon's processes after 100,000 must be within 1 MiB of what it was after
10,000, and the open file descriptor count unchanged.

    python3 tests/bench/soak.py [TOTAL]        (POPSIGND, MAKE_TOKEN from the
                                               environment or a build in build/)
    meson test -C build --benchmark soak

Not part of the default suite: it takes a minute or two."""
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))
import harness as h  # noqa: E402

TOTAL = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
WARM = TOTAL // 10
THREADS = 4
RSS_SLACK_KIB = 1024


def processes(daemon):
    """The front end and its children (the signer)."""
    pids = [daemon.proc.pid]
    task_dir = '/proc/%d/task' % daemon.proc.pid
    for task in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, task, 'children')) as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS for %d' % pid)


def fds(pid):
    return len(os.listdir('/proc/%d/fd' % pid))


def snapshot(daemon):
    """Once the daemon has closed the connections the batch used: the
    descriptor count is read until it holds still."""
    last = None
    for _ in range(50):
        time.sleep(0.1)
        pids = processes(daemon)
        now = {'pids': pids, 'rss': sum(rss_kib(p) for p in pids),
               'fds': sum(fds(p) for p in pids)}
        if last and last['fds'] == now['fds'] and last['pids'] == now['pids']:
            return now
        last = now
    return last


def issue(daemon, token, count, failures):
    """count certificates over one keep-alive connection."""
    conn = h.connect(daemon.port)
    try:
        for _ in range(count):
            r = h.request(daemon.port, 'POST', h.sign_path('ec256'),
                          {'verification_code': h.new_code()}, token=token, conn=conn)
            if r.status != 201:
                failures.append((r.status, r.body[:200]))
                return
    finally:
        conn.close()


def run_batch(daemon, token, n):
    failures = []
    per = n // THREADS
    threads = [threading.Thread(target=issue, args=(daemon, token, per, failures))
               for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit('soak: a request failed: %r' % (failures[0],))
    return per * THREADS


def main():
    token = h.Token(['ec256'])
    caller = h.Caller('soak', '*')
    try:
        conf = h.write_config(token.dir, keys=[h.key_section('ec256', token.uri('ec256'),
                                                             token.cert('ec256'))],
                              callers=[caller],
                              daemon_extra=[('audit_log', token.path('audit.log'))])
        with h.Daemon(conf, token.env) as d:
            t0 = time.monotonic()
            done = run_batch(d, caller.token, WARM)
            after_warm = snapshot(d)
            done += run_batch(d, caller.token, TOTAL - done)
            after_all = snapshot(d)
            seconds = time.monotonic() - t0
        grew = after_all['rss'] - after_warm['rss']
        print('soak: %d certificates in %.1f s; RSS %d KiB after %d, %d KiB after %d '
              '(%+d KiB); descriptors %d then %d'
              % (done, seconds, after_warm['rss'], WARM, after_all['rss'], done, grew,
                 after_warm['fds'], after_all['fds']))
        ok = grew <= RSS_SLACK_KIB and after_all['fds'] == after_warm['fds'] and \
            after_all['pids'] == after_warm['pids']
        print('soak: %s' % ('PASS' if ok else 'FAIL'))
        return 0 if ok else 1
    finally:
        token.cleanup()


if __name__ == '__main__':
    sys.exit(main())
