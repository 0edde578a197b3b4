/* popsign: the command-line client of popsignd, and of the DPS and IoT Hub
 * certificate APIs for proof of possession.
 *
 *   popsign [--url URL] [--token-file FILE] [--json] COMMAND [ARGUMENTS]
 *
 * Options go before or after the command.  Each command says which of the
 * command options it takes; the exit codes are the one table in
 * exit_code.h, printed by --help.  The Azure commands (dps, iothub) live
 * in azure_cmd.c. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "azure_cmd.h"
#include "bearer.h"
#include "cli.h"
#include "code.h"
#include "daemon_api.h"
#include "error.h"
#include "exit_code.h"
#include "output.h"
#include "secret.h"
#include "transport.h"
#include "util.h"
#include "wipe.h"

#define POSITIONAL_MAX 8

enum option_id {
	OPT_HELP = 'h',
	OPT_OUTPUT = 'o',
	OPT_VERSION = 'V',
	OPT_URL = 0x100,
	OPT_TOKEN_FILE,
	OPT_JSON,
	OPT_DER,
	OPT_FORCE,
};

/* Bits of struct options.given, one per option that is not global. */
enum {
	GIVEN_OUTPUT = 1 << 0,
	GIVEN_DER = 1 << 1,
	GIVEN_FORCE = 1 << 2,
};

struct options {
	const char *url;        /* --url, or NULL */
	const char *token_file; /* --token-file, or NULL */
	const char *output;     /* -o, or NULL: standard output */
	bool json, der, force, help, version;
	unsigned given;         /* GIVEN_* */
	char *args[POSITIONAL_MAX]; /* the command and its arguments */
	size_t n_args;
	struct azure_options az;    /* dps, iothub */
};

struct command {
	const char *name;
	int (*run)(const struct options *o);
	size_t min_args, max_args; /* after the command's name */
	unsigned options;          /* GIVEN_* it accepts */
	bool needs_daemon;
	bool azure;                /* takes the Azure options */
};

static const char usage_text[] =
	"Usage: popsign [OPTIONS] COMMAND [ARGUMENTS]\n"
	"\n"
	"Gets CA and verification certificates from popsignd, which keeps the CA\n"
	"keys in a PKCS#11 token and never lets them out.\n"
	"\n"
	"Commands:\n"
	"  keys                   list the keys this client may use\n"
	"  ca-cert KEY            the CA certificate of KEY (PEM)\n"
	"  sign KEY CODE          a verification certificate with subject CN=CODE,\n"
	"                         signed by KEY: the file to upload to DPS or IoT Hub\n"
	"  token-new              make a new bearer token, write it to the token file\n"
	"                         (mode 0600) and print the token_sha256 line for\n"
	"                         popsignd.conf\n"
	"  dps ACTION, iothub ACTION  DPS and IoT Hub certificates: see below\n"
	"  help                   show this help\n"
	"\n"
	"Options, before or after the command:\n"
	"  --url URL              popsignd's address (default: $" CLI_ENV_URL ", else\n"
	"                         " DAEMON_API_DEFAULT_URL "), or unix:/PATH\n"
	"  --token-file FILE      the bearer token (default: $" BEARER_ENV_FILE ", else\n"
	"                         $XDG_CONFIG_HOME/popsign/token or\n"
	"                         ~/.config/popsign/token); group and others must\n"
	"                         have no access to it (chmod 600)\n"
	"  --json                 print popsignd's JSON answer (keys, sign)\n"
	"  -o, --output FILE      ca-cert, sign, token-new: write FILE (whole or not\n"
	"                         at all) instead of standard output (token-new:\n"
	"                         instead of the token file); '-' is standard output\n"
	"  --der                  sign: write the certificate as DER, not PEM\n"
	"  --force                token-new: replace an existing file\n"
	"  -h, --help             show this help\n"
	"  -V, --version          show the version\n"
	"\n";

static void print_usage(FILE *f)
{
	fputs(usage_text, f);
	fputs(azure_usage_text, f);
	fputs("\nExit status:\n", f);
#define PS_EXIT_LINE(name, value, text) fprintf(f, "  %2d  %s\n", value, text);
	EXIT_CODE_TABLE(PS_EXIT_LINE)
#undef PS_EXIT_LINE
}

/* Writes data to o->output, or to standard output without one. */
static int emit(const struct options *o, const void *data, size_t len)
{
	int r;

	if (!o->output || strcmp(o->output, "-") == 0) {
		r = output_write_stdout(data, len);
		return r < 0 ? cli_output_failed(r, "to standard output") : PS_EXIT_OK;
	}
	r = output_write_file(o->output, data, len, output_default_mode(), OUTPUT_REPLACE);
	return r < 0 ? cli_output_failed(r, o->output) : PS_EXIT_OK;
}

static bool writes_file(const struct options *o)
{
	return o->output && strcmp(o->output, "-") != 0;
}

static int keys_print(const struct options *o, json_t *doc)
{
	_cleanup_free_ char *text = NULL;
	int r;

	if (!o->json) {
		r = output_keys_table(stdout, json_object_get(doc, "keys"));
		return r < 0 ? cli_output_failed(r, "to standard output") : PS_EXIT_OK;
	}
	r = output_json_text(doc, &text);
	if (r < 0)
		return cli_output_failed(r, "JSON");
	return emit(o, text, strlen(text));
}

static int run_keys(const struct options *o)
{
	struct daemon_error err = {0};
	struct cli_session s = {0};
	json_t *doc = NULL;
	int r;

	r = cli_session_open(o->url, o->token_file, &s);
	if (r != PS_EXIT_OK)
		return r;
	if (daemon_api_keys(s.api, &doc, &err) < 0)
		r = cli_daemon_failed(&s, &err);
	else
		r = keys_print(o, doc);
	json_decref(doc);
	cli_session_close(&s);
	return r;
}

static int run_ca_cert(const struct options *o)
{
	const char *key = o->args[1];
	struct daemon_error err = {0};
	struct cli_session s = {0};
	char *pem = NULL;
	int r;

	if (daemon_check_key(key, &err) < 0)
		return cli_daemon_failed(NULL, &err);
	r = cli_session_open(o->url, o->token_file, &s);
	if (r != PS_EXIT_OK)
		return r;
	if (daemon_api_ca_cert(s.api, key, &pem, &err) < 0)
		r = cli_daemon_failed(&s, &err);
	else
		r = emit(o, pem, strlen(pem));
	if (r == PS_EXIT_OK && writes_file(o))
		fprintf(stderr, "wrote the CA certificate of %s to %s\n", key, o->output);
	free(pem);
	cli_session_close(&s);
	return r;
}

/* The verification certificate in the form asked for. */
static int sign_emit(const struct options *o, const struct daemon_verification *v)
{
	_cleanup_free_ char *json = NULL;
	unsigned char *der = NULL;
	size_t der_len = 0;
	int r;

	if (o->json) {
		r = output_json_text(v->doc, &json);
		return r < 0 ? cli_output_failed(r, "JSON") : emit(o, json, strlen(json));
	}
	if (!o->der)
		return emit(o, v->certificate, strlen(v->certificate));
	/* daemon_api_sign() checked the PEM: only memory can fail here. */
	if (daemon_cert_pem_to_der(v->certificate, &der, &der_len) < 0) {
		output_errorf("cannot convert the certificate to DER");
		return PS_EXIT_INTERNAL;
	}
	r = emit(o, der, der_len);
	OPENSSL_free(der);
	return r;
}

static int run_sign(const struct options *o)
{
	const char *key = o->args[1], *code = o->args[2];
	struct daemon_verification *v = NULL;
	struct daemon_error err = {0};
	struct cli_session s = {0};
	int r;

	if (o->der && o->json)
		return cli_usage_error("--der and --json exclude each other");
	if (o->der && !writes_file(o) && isatty(STDOUT_FILENO))
		return cli_usage_error("not writing DER to a terminal: use -o FILE");
	if (daemon_check_sign_input(key, code, NULL, &err) < 0)
		return cli_daemon_failed(NULL, &err);
	r = cli_session_open(o->url, o->token_file, &s);
	if (r != PS_EXIT_OK)
		return r;
	if (daemon_api_sign(s.api, key, code, NULL, &v, &err) < 0)
		r = cli_daemon_failed(&s, &err);
	else
		r = sign_emit(o, v);
	if (r == PS_EXIT_OK && writes_file(o))
		fprintf(stderr, "wrote verification certificate for CN=%s to %s\n", code, o->output);
	daemon_verification_free(v);
	cli_session_close(&s);
	return r;
}

/* Writes token (with a newline) to path, mode 0600. */
static int token_write(const struct options *o, const char *path, bool is_default,
		       const char *token)
{
	char line[BEARER_TOKEN_HEX_LEN + 2];
	int r;

	if (is_default && bearer_make_parent_dirs(path) < 0)
		return cli_output_failed(PS_E_IO, path);
	snprintf(line, sizeof(line), "%s\n", token);
	r = output_write_file(path, line, strlen(line), 0600, o->force ? OUTPUT_REPLACE : 0);
	OPENSSL_cleanse(line, sizeof(line));
	if (r < 0 && errno == EEXIST) {
		output_errorf("%s exists: use --force to replace it (popsignd then needs the "
			      "new token_sha256)",
			      path);
		return PS_EXIT_OUTPUT;
	}
	return r < 0 ? cli_output_failed(r, path) : PS_EXIT_OK;
}

static int run_token_new(const struct options *o)
{
	char token[BEARER_TOKEN_HEX_LEN + 1], hash[BEARER_SHA256_HEX_LEN + 1];
	_cleanup_free_ char *path = NULL;
	bool is_default = false;
	int r;

	if (o->output && strcmp(o->output, "-") == 0)
		return cli_usage_error("the token is never written to standard output");
	r = o->output ? ((path = strdup(o->output)) ? 0 : PS_E_NOMEM)
		      : bearer_resolve_path(o->token_file, &path, &is_default);
	if (r < 0) {
		output_errorf("no home directory for the default token file: use -o FILE");
		return r == PS_E_NOMEM ? PS_EXIT_INTERNAL : PS_EXIT_USAGE;
	}
	if (bearer_generate(token) < 0 || bearer_sha256_hex(token, strlen(token), hash) < 0) {
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
		output_errorf("cannot make random bytes or a SHA-256 hash");
		return PS_EXIT_INTERNAL;
	}
	r = token_write(o, path, is_default, token);
	OPENSSL_cleanse(token, sizeof(token));
	if (r != PS_EXIT_OK)
		return r;
	fprintf(stderr, "wrote a new token to %s\n", path);
	if (printf("token_sha256 = %s\n", hash) < 0 || fflush(stdout) != 0)
		return cli_output_failed(PS_E_IO, "to standard output");
	return PS_EXIT_OK;
}

static int run_azure(const struct options *o, enum arm_service service)
{
	struct azure_command c = {
		.service = service,
		.action = o->args[1],
		.opt = &o->az,
		.daemon_url = o->url,
		.token_file = o->token_file,
		.json = o->json,
	};

	return azure_command_run(&c);
}

static int run_dps(const struct options *o)
{
	return run_azure(o, ARM_SERVICE_DPS);
}

static int run_iothub(const struct options *o)
{
	return run_azure(o, ARM_SERVICE_IOTHUB);
}

static const struct command commands[] = {
	{"keys", run_keys, 0, 0, 0, true, false},
	{"ca-cert", run_ca_cert, 1, 1, GIVEN_OUTPUT, true, false},
	{"sign", run_sign, 2, 2, GIVEN_OUTPUT | GIVEN_DER, true, false},
	{"token-new", run_token_new, 0, 0, GIVEN_OUTPUT | GIVEN_FORCE, false, false},
	/* These settle popsignd's URL themselves, and only when they need it. */
	{"dps", run_dps, 1, 1, 0, false, true},
	{"iothub", run_iothub, 1, 1, 0, false, true},
};

static const struct option long_options[] = {
	{"url", required_argument, NULL, OPT_URL},
	{"token-file", required_argument, NULL, OPT_TOKEN_FILE},
	{"json", no_argument, NULL, OPT_JSON},
	{"output", required_argument, NULL, OPT_OUTPUT},
	{"der", no_argument, NULL, OPT_DER},
	{"force", no_argument, NULL, OPT_FORCE},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	AZURE_LONG_OPTIONS,
	{NULL, 0, NULL, 0},
};

/* Sets what option c (with argument arg) asks for; 1 is an argument. */
static int take_option(struct options *o, int c, char *arg)
{
	switch (c) {
	case 1:
		if (o->n_args == POSITIONAL_MAX)
			return cli_usage_error("too many arguments");
		o->args[o->n_args++] = arg;
		return PS_EXIT_OK;
	case OPT_URL:
		o->url = arg;
		return PS_EXIT_OK;
	case OPT_TOKEN_FILE:
		o->token_file = arg;
		return PS_EXIT_OK;
	case OPT_OUTPUT:
		o->output = arg;
		o->given |= GIVEN_OUTPUT;
		return PS_EXIT_OK;
	case OPT_JSON:
		o->json = true;
		return PS_EXIT_OK;
	case OPT_DER:
		o->der = true;
		o->given |= GIVEN_DER;
		return PS_EXIT_OK;
	case OPT_FORCE:
		o->force = true;
		o->given |= GIVEN_FORCE;
		return PS_EXIT_OK;
	case OPT_HELP:
		o->help = true;
		return PS_EXIT_OK;
	case OPT_VERSION:
		o->version = true;
		return PS_EXIT_OK;
	}
	return azure_options_take(&o->az, c, arg) ? PS_EXIT_OK : PS_EXIT_USAGE;
}

/* Options anywhere: a leading '-' in the option string hands each argument
 * that is not an option back in order, as option 1, whatever
 * POSIXLY_CORRECT says; ':' reports a missing value apart. */
static int parse_options(int argc, char **argv, struct options *o)
{
	int c, r;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "-:ho:V", long_options, NULL)) != -1) {
		if (c == '?' && optopt)
			return cli_usage_error("unknown option '-%c'", optopt);
		if (c == '?')
			return cli_usage_error("unknown option '%s'", argv[optind - 1]);
		if (c == ':')
			return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
		r = take_option(o, c, optarg);
		if (r != PS_EXIT_OK)
			return r;
	}
	/* After "--" the rest are arguments, even those starting with '-'. */
	for (; optind < argc; optind++) {
		r = take_option(o, 1, argv[optind]);
		if (r != PS_EXIT_OK)
			return r;
	}
	return PS_EXIT_OK;
}

static const struct command *command_find(const char *name)
{
	for (size_t i = 0; i < ELEMENTSOF(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* Checks the arguments and options given fit cmd. */
static int command_check(const struct command *cmd, const struct options *o)
{
	static const char *const names[] = {"-o/--output", "--der", "--force"};
	const char *azure_option = azure_options_first_given(&o->az);
	size_t n = o->n_args - 1;

	for (size_t i = 0; i < ELEMENTSOF(names); i++)
		if ((o->given & ~cmd->options) & (1u << i))
			return cli_usage_error("%s does not apply to '%s'", names[i], cmd->name);
	if (azure_option && !cmd->azure)
		return cli_usage_error("%s does not apply to '%s'", azure_option, cmd->name);
	if (n < cmd->min_args && cmd->azure)
		return cli_usage_error("'%s' needs an action: verify, upload, show, list or delete",
				       cmd->name);
	if (n < cmd->min_args)
		return cli_usage_error("'%s' needs more arguments", cmd->name);
	if (n > cmd->max_args)
		return cli_usage_error("too many arguments for '%s'", cmd->name);
	return PS_EXIT_OK;
}

static int dispatch(struct options *o)
{
	const struct command *cmd;
	int r;

	if (o->help || (o->n_args > 0 && strcmp(o->args[0], "help") == 0)) {
		print_usage(stdout);
		return fflush(stdout) == 0 ? PS_EXIT_OK : PS_EXIT_OUTPUT;
	}
	if (o->version) {
		printf("popsign %s\n", POPSIGN_VERSION);
		return fflush(stdout) == 0 ? PS_EXIT_OK : PS_EXIT_OUTPUT;
	}
	if (o->n_args == 0) {
		print_usage(stderr);
		return PS_EXIT_USAGE;
	}
	cmd = command_find(o->args[0]);
	if (!cmd)
		return cli_usage_error("unknown command '%s'", o->args[0]);
	r = command_check(cmd, o);
	if (r == PS_EXIT_OK && cmd->needs_daemon)
		r = cli_resolve_url(o->url, &o->url);
	if (r != PS_EXIT_OK)
		return r;
	return cmd->run(o);
}

int main(int argc, char **argv)
{
	struct options o = {0};
	int r;

	/* The process holds a bearer token: no core dumps, no ptrace by peers. */
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	r = parse_options(argc, argv, &o);
	if (r != PS_EXIT_OK)
		return r;
	/* Before any JSON exists: access tokens pass through jansson. */
	wipe_setup_json();
	if (transport_global_init() < 0) {
		output_errorf("cannot initialise libcurl");
		return PS_EXIT_INTERNAL;
	}
	r = dispatch(&o);
	transport_global_cleanup();
	return r;
}
