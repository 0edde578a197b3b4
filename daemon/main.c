/* popsignd: signs proof-of-possession verification certificates with CA keys
 * held in PKCS#11 tokens, for authorised callers on loopback. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "config.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "signer.h"
#include "text.h"
#include "util.h"
#include "audit.h"

#include "build-config.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#define notify(...) sd_notifyf(0, __VA_ARGS__)
#else
#define notify(...) ((void)0)
#endif

struct options {
	const char *config_path;
	bool test_only;
	bool verbose;
};

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: popsignd [-c FILE] [-t] [-v]\n"
		"Signs proof-of-possession verification certificates with CA keys in PKCS#11 tokens.\n"
		"\n"
		"  -c, --config FILE  configuration file (default " CONFIG_DEFAULT_PATH ")\n"
		"  -t, --test         check the configuration and the tokens, then exit\n"
		"  -v, --verbose      log debug messages\n"
		"  -h, --help         show this help\n"
		"  -V, --version      show the version\n"
		"\n"
		"Exit status: 0 success, 1 configuration, token or start-up error, 2 usage error.\n");
}

/* 0 to go on, 1 to exit 0 (help, version), -1 to exit 2. */
static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
		{"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
	};
	int c;

	o->config_path = CONFIG_DEFAULT_PATH;
	while ((c = getopt_long(argc, argv, "c:tvhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config_path = optarg;
			break;
		case 't':
			o->test_only = true;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 1;
		case 'V':
			printf("popsignd %s\n", POPSIGN_VERSION);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "popsignd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

/* This process holds PINs and token sessions: no core dumps, no ptrace by
 * other processes of the same user. */
static void harden_process(void)
{
	const struct rlimit none = {0, 0};

	(void)setrlimit(RLIMIT_CORE, &none);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	/* Nothing popsignd runs, the signer included, may gain privileges. */
	(void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/* Signals are taken synchronously by main() with sigtimedwait(); every
 * other thread inherits the mask and never sees them. */
static void block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A full audit file must fail a write, not kill the daemon. */
	signal(SIGXFSZ, SIG_IGN);
}

/* Sockets handed over by systemd (LISTEN_PID, LISTEN_FDS from fd 3 on).
 * They are made close-on-exec so that the signer never inherits them. */
static size_t listen_fds_from_systemd(int fds[CONFIG_LISTEN_MAX])
{
	const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
	unsigned long long want_pid = 0, count = 0;

	if (!pid || !n || parse_uint(pid, 1, INT32_MAX, &want_pid) < 0 ||
	    (pid_t)want_pid != getpid() || parse_uint(n, 1, CONFIG_LISTEN_MAX, &count) < 0)
		return 0;
	for (size_t i = 0; i < count; i++) {
		fds[i] = 3 + (int)i;
		(void)fcntl(fds[i], F_SETFD, FD_CLOEXEC);
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return (size_t)count;
}

/* Watchdog interval in milliseconds (half of WATCHDOG_USEC), 0 if none. */
static long watchdog_interval_ms(void)
{
	const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	unsigned long long v = 0, p = 0;

	if (!usec || parse_uint(usec, 1, UINT64_MAX / 2, &v) < 0)
		return 0;
	if (pid && (parse_uint(pid, 1, INT32_MAX, &p) < 0 || (pid_t)p != getpid()))
		return 0;
	return (long)(v / 2000 ? v / 2000 : 1);
}

/* SIGHUP part one: a new config and signer, or NULL and the old ones stay. */
static int reload_config(const char *path, const struct audit *audit, struct config **ret_cfg,
			 struct signer **ret_signer)
{
	char err[CONFIG_ERROR_MAX];
	struct config *cfg = NULL;

	if (config_load(path, &cfg, err) < 0) {
		log_error("SIGHUP: %s; keeping the old configuration", err);
		return PS_E_CONFIG;
	}
	if (!cfg->audit_log != !audit) {
		log_error("SIGHUP: %s: turning audit_log on or off needs a restart; keeping the "
			  "old configuration", path);
		config_free(cfg);
		return PS_E_CONFIG;
	}
	if (signer_start(cfg, ret_signer) < 0) {
		log_error("SIGHUP: the keys of %s could not be opened; keeping the old "
			  "configuration", path);
		config_free(cfg);
		return PS_E_TOKEN;
	}
	*ret_cfg = cfg;
	return 0;
}

/* SIGHUP: the audit file is reopened (rotation, or the new audit_log path),
 * and a new config and signer replace the old ones if they are good. */
static void reload(struct http_server *http, struct audit *audit, const char *path)
{
	struct config *cfg = NULL;
	struct signer *signer = NULL;
	int r;

	notify("RELOADING=1\nSTATUS=reloading %s", path);
	r = reload_config(path, audit, &cfg, &signer);
	if (r == 0 && audit && audit_reopen(audit, cfg->audit_log) < 0) {
		log_error("SIGHUP: cannot open the audit log %s; keeping the old configuration",
			  cfg->audit_log);
		signer_free(signer);
		config_free(cfg);
		r = PS_E_IO;
	}
	if (r < 0 && audit && audit_reopen(audit, NULL) < 0)
		log_error("SIGHUP: cannot reopen the audit log; still writing the old file");
	if (r == 0) {
		log_info("SIGHUP: reloaded %s: %zu key(s)", path, signer_key_count(signer));
		http_reload(http, cfg, signer);
	}
	notify("READY=1\nSTATUS=serving");
}

static void serve_until_stopped(struct http_server *http, struct audit *audit,
				const char *path, const sigset_t *set)
{
	long wd = watchdog_interval_ms();

	for (;;) {
		struct timespec ts = {wd ? wd / 1000 : 3600, wd ? (wd % 1000) * 1000000L : 0};
		int sig = sigtimedwait(set, NULL, &ts);

		if (sig < 0) {
			/* Pings only while the signer answers: systemd restarts us if not. */
			if (wd && http_signer_alive(http))
				notify("WATCHDOG=1");
			continue;
		}
		if (sig == SIGHUP) {
			reload(http, audit, path);
			continue;
		}
		log_info("%s: stopping", strsignal(sig));
		notify("STOPPING=1\nSTATUS=stopping");
		return;
	}
}

static int open_audit(const struct config *cfg, struct audit **ret)
{
	int r;

	if (!cfg->audit_log) {
		log_warning("%s: no audit_log: issued certificates are only logged", cfg->path);
		return 0;
	}
	r = audit_open(cfg->audit_log, ret);
	if (r < 0)
		log_error("cannot open the audit log %s: %s", cfg->audit_log, ps_strerror(r));
	return r;
}

int main(int argc, char **argv)
{
	struct options opts = {0};
	char err[CONFIG_ERROR_MAX];
	struct config *cfg = NULL;
	struct signer *signer = NULL;
	struct http_server *http = NULL;
	struct audit *audit = NULL;
	int fds[CONFIG_LISTEN_MAX];
	size_t n_fds;
	sigset_t set;
	int r;

	log_init("popsignd");
	r = parse_args(argc, argv, &opts);
	if (r != 0)
		return r > 0 ? 0 : 2;
	if (opts.verbose)
		log_set_level(LOG_LEVEL_DEBUG);
	harden_process();
	block_signals(&set);
	n_fds = listen_fds_from_systemd(fds);

	if (config_load(opts.config_path, &cfg, err) < 0) {
		log_error("%s", err);
		return 1;
	}
	if (cfg->n_clients == 0)
		log_warning("%s: no [client] section: nobody can call the signing routes",
			    cfg->path);
	r = signer_start(cfg, &signer);
	if (r == 0 && opts.test_only) {
		printf("%s: configuration and %zu key(s) OK\n", cfg->path, signer_key_count(signer));
		signer_free(signer);
		config_free(cfg);
		return 0;
	}
	if (r == 0)
		r = open_audit(cfg, &audit);
	if (r < 0) {
		signer_free(signer);
		config_free(cfg);
		return 1;
	}
	log_info("%zu key(s), %u worker(s)", signer_key_count(signer), cfg->workers);
	/* http owns cfg and signer from here on, freed or not. */
	r = http_start(cfg, signer, audit, fds, n_fds, &http);
	if (r == 0) {
		log_info("ready");
		notify("READY=1\nSTATUS=serving");
		serve_until_stopped(http, audit, opts.config_path, &set);
	}
	http_stop(http);
	audit_close(audit);
	return r == 0 ? 0 : 1;
}
