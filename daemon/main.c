/* popsignd: signs proof-of-possession verification certificates with CA keys
 * held in PKCS#11 tokens, for authorised callers on loopback. */
#include <errno.h>
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
#include "signer_main.h"

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
}

/* Signals are taken synchronously by main() with sigwait(); every other
 * thread inherits the mask and never sees them. */
static void block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void wait_for_stop(const sigset_t *set)
{
	for (;;) {
		int sig = 0;

		if (sigwait(set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_warning("SIGHUP: configuration reload is not supported yet; restart instead");
			continue;
		}
		log_info("%s: stopping", strsignal(sig));
		return;
	}
}

int main(int argc, char **argv)
{
	struct options opts = {0};
	char err[CONFIG_ERROR_MAX];
	struct config *cfg = NULL;
	struct signer *signer = NULL;
	struct http_server *http = NULL;
	sigset_t set;
	int r;

	log_init("popsignd");
	/* The signer process: "popsignd --signer FD -c CONFIG", started by
	 * signer_start() below, never by hand. */
	if (argc == 5 && strcmp(argv[1], "--signer") == 0 && strcmp(argv[3], "-c") == 0) {
		log_init("popsignd-signer");
		return signer_main(argv[4], atoi(argv[2]) == 3 ? 3 : -1);
	}
	r = parse_args(argc, argv, &opts);
	if (r != 0)
		return r > 0 ? 0 : 2;
	if (opts.verbose)
		log_set_level(LOG_LEVEL_DEBUG);
	harden_process();
	block_signals(&set);

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
	} else if (r == 0) {
		r = http_start(cfg, signer, &http);
		if (r == 0) {
			log_info("ready: %zu key(s), %u worker(s)", signer_key_count(signer),
				 cfg->workers);
			notify("READY=1\nSTATUS=serving %zu key(s)", signer_key_count(signer));
			wait_for_stop(&set);
			notify("STOPPING=1");
		}
	}
	http_stop(http);
	signer_free(signer);
	config_free(cfg);
	return r == 0 ? 0 : 1;
}
