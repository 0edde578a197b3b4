#!/usr/bin/env python3
"""Where popsignd's CPU time goes per certificate, from a perf recording
made with call graphs (`perf record --call-graph dwarf -p PID...`).

    perf script -i perf.data -F tid,ip,sym --inline | profile.py TITLE

Each sample goes to the first category whose function is on its stack
(innermost concern first), so the shares add up to 100 %.  The function
names are popsignd's and its libraries'; a category whose functions are
gone from the code simply reads 0.  Prints a Markdown table.
"""
import sys

# (category, any of these functions on the stack), first match wins.
CATEGORIES = [
    ("token: C_SignInit (SoftHSM2 loads the key object)", ["C_SignInit"]),
    ("token: C_Sign", ["C_Sign"]),
    ("other token calls (sessions, find, attributes, health checks)",
     ["C_OpenSession", "C_FindObjectsInit", "C_FindObjects", "C_GetAttributeValue",
      "C_GetSessionInfo", "C_GetTokenInfo", "C_GetSlotList"]),
    ("subject key: random scalar, point multiplication",
     ["make_subject_point", "set_subject_key", "EVP_PKEY_Q_keygen", "EVP_EC_gen"]),
    ("TBS certificate: serial, times, names, extensions, DER",
     ["make_fields", "build_tbs", "put_tbs", "make_serial"]),
    ("hash for the signature, ECDSA DER, assembly, PEM, fingerprint", ["issue_certificate"]),
    ("audit: write + fdatasync of the record batch",
     ["commit", "sync_data", "fdatasync", "__GI_fdatasync"]),
    ("audit: formatting, waiting for the batch",
     ["audit_write", "audit_announce", "format_line", "lead", "gather"]),
    ("privilege separation: messages, waiting for a channel and the answer",
     ["signer_issue", "issue_on", "await_answer", "take_channel_locked", "give_back_locked",
      "signer_msg_send", "signer_msg_recv", "signer_encode_issued", "signer_decode_issued",
      "worker_main", "answer_issue", "issue_one", "supervise", "serve_answers"]),
    ("HTTP handler: auth, JSON in and out, response, log line",
     ["handle_sign", "handle_request", "on_request", "on_completed", "respond_issued"]),
]
REST = "libmicrohttpd, TCP sockets, kernel, idle thread switches"

# Leaf functions counted across categories as well.
LEAVES = [
    ("malloc/free (leaf)", ["malloc", "_int_malloc", "_int_free", "cfree@GLIBC_2.2.5", "free",
                            "malloc_consolidate", "unlink_chunk.constprop.0", "realloc",
                            "_int_realloc", "calloc"]),
    ("locks (leaf: pthread mutex/rwlock)", ["pthread_mutex_lock@@GLIBC_2.2.5",
                                            "pthread_mutex_unlock@@GLIBC_2.2.5",
                                            "pthread_rwlock_wrlock@@GLIBC_2.34",
                                            "pthread_rwlock_rdlock@GLIBC_2.2.5",
                                            "pthread_rwlock_unlock@@GLIBC_2.34",
                                            "__lll_lock_wait", "futex_wait"]),
]


def samples(stream):
    """Yields the list of symbols of each sample, innermost first.

    A sample starts with a line holding the thread id (perf 6.1 right-aligns
    it, so it may start with spaces) and goes on with one line per frame,
    "ADDRESS SYMBOL", indented; a blank line ends it."""
    stack = None
    for line in stream:
        fields = line.split(None, 1)
        if not fields:
            if stack is not None:
                yield stack
            stack = None
        elif len(fields) == 1 and fields[0].isdigit():
            if stack is not None:
                yield stack
            stack = []
        elif stack is not None and len(fields) == 2:
            stack.append(fields[1].strip().replace(" (inlined)", ""))
    if stack is not None:
        yield stack


def classify(stack):
    names = set(stack)
    for title, funcs in CATEGORIES:
        if names.intersection(funcs):
            return title
    return REST


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "popsignd"
    counts = {t: 0 for t, _ in CATEGORIES}
    counts[REST] = 0
    leaves = {t: 0 for t, _ in LEAVES}
    total = 0
    for stack in samples(sys.stdin):
        if not stack:
            continue
        total += 1
        counts[classify(stack)] += 1
        for t, funcs in LEAVES:
            if stack[0] in funcs:
                leaves[t] += 1
    if total == 0:
        print("no samples")
        return 1
    print("| %s: where popsignd's CPU goes | share |" % title)
    print("|---|---:|")
    for t in list(counts):
        print("| %s | %.1f %% |" % (t, 100.0 * counts[t] / total))
    for t in leaves:
        print("| (across all of the above) %s | %.1f %% |" % (t, 100.0 * leaves[t] / total))
    print("| samples | %d |" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
