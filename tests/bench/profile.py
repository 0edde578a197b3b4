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
    ("ephemeral key: P-256 group set-up (EC_GROUP_new_by_curve_name)",
     ["EC_GROUP_new_by_curve_name_ex", "EC_GROUP_new_from_params"]),
    ("ephemeral key: the rest (scalar multiplication, RNG, fetch)",
     ["set_subject_key", "EVP_PKEY_Q_keygen", "EVP_EC_gen"]),
    ("TBS certificate: names, serial, extensions, DER", ["build_tbs"]),
    ("hash for the signature, ECDSA DER, assembly, PEM, fingerprint", ["issue_certificate"]),
    ("audit: write + fdatasync of the record batch", ["commit", "fdatasync", "__GI_fdatasync"]),
    ("audit: formatting, hand-off to the writer, waiting",
     ["audit_write", "audit_record", "writer_main", "format_line"]),
    ("privilege separation: socketpair messages and hand-offs",
     ["signer_issue", "signer_msg_send", "signer_msg_recv", "serve", "serve_answers", "deliver",
      "do_job", "worker", "supervise", "signer_encode_issued", "signer_decode_issued",
      "parse_issue", "enqueue", "signer_main"]),
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
    """Yields the list of symbols of each sample, innermost first."""
    stack = None
    for line in stream:
        if not line.strip():
            if stack is not None:
                yield stack
            stack = None
            continue
        if not line[0].isspace():
            stack = []
            continue
        parts = line.split(None, 1)
        if stack is not None and len(parts) == 2:
            stack.append(parts[1].strip().replace(" (inlined)", ""))
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
