/* The Azure commands of popsign:
 *
 *   popsign dps    verify|upload|show|list|delete --dps-name NAME [options]
 *   popsign iothub verify|upload|show|list|delete --hub-name NAME [options]
 *
 * They take their options from main's command line (AZURE_LONG_OPTIONS,
 * azure_options_take()) and return an exit code of exit_code.h. */
#ifndef POPSIGN_AZURE_CMD_H
#define POPSIGN_AZURE_CMD_H

#include <getopt.h>
#include <stdbool.h>

#include "arm.h"

#define AZURE_ENV_SUBSCRIPTION "AZURE_SUBSCRIPTION_ID"
#define AZURE_ENV_ARM_ENDPOINT "POPSIGN_ARM_ENDPOINT"

enum azure_option_id {
	AZURE_OPT_FIRST = 0x200,
	AZURE_OPT_DPS_NAME = AZURE_OPT_FIRST,
	AZURE_OPT_HUB_NAME,
	AZURE_OPT_SUBSCRIPTION,
	AZURE_OPT_RESOURCE_GROUP,
	AZURE_OPT_CERTIFICATE_NAME,
	AZURE_OPT_KEY,
	AZURE_OPT_UPLOAD,
	AZURE_OPT_API_VERSION,
	AZURE_OPT_ARM_ENDPOINT,
	AZURE_OPT_ACCESS_TOKEN_FILE,
	AZURE_OPT_MANAGED_IDENTITY,
	AZURE_OPT_YES,
	AZURE_OPT_END,
};

/* Entries for main's struct option table. */
#define AZURE_LONG_OPTIONS                                                               \
	{"dps-name", required_argument, NULL, AZURE_OPT_DPS_NAME},                       \
	{"hub-name", required_argument, NULL, AZURE_OPT_HUB_NAME},                       \
	{"subscription", required_argument, NULL, AZURE_OPT_SUBSCRIPTION},               \
	{"resource-group", required_argument, NULL, AZURE_OPT_RESOURCE_GROUP},           \
	{"certificate-name", required_argument, NULL, AZURE_OPT_CERTIFICATE_NAME},       \
	{"key", required_argument, NULL, AZURE_OPT_KEY},                                 \
	{"upload", no_argument, NULL, AZURE_OPT_UPLOAD},                                 \
	{"api-version", required_argument, NULL, AZURE_OPT_API_VERSION},                 \
	{"arm-endpoint", required_argument, NULL, AZURE_OPT_ARM_ENDPOINT},               \
	{"access-token-file", required_argument, NULL, AZURE_OPT_ACCESS_TOKEN_FILE},     \
	{"managed-identity", optional_argument, NULL, AZURE_OPT_MANAGED_IDENTITY},       \
	{"yes", no_argument, NULL, AZURE_OPT_YES}

/* The Azure options as given (NULL, false: not given). */
struct azure_options {
	const char *dps_name;
	const char *hub_name;
	const char *subscription;
	const char *resource_group;
	const char *certificate_name;
	const char *key;
	const char *api_version;
	const char *arm_endpoint;
	const char *access_token_file;
	const char *managed_identity_client_id;
	bool upload, managed_identity, yes;
	unsigned given; /* bit (id - AZURE_OPT_FIRST) for each option given */
};

/* One Azure command, from main's command line. */
struct azure_command {
	enum arm_service service;
	const char *action;              /* "verify", "upload", "show", "list", "delete" */
	const struct azure_options *opt;
	const char *daemon_url;          /* --url, or NULL */
	const char *token_file;          /* --token-file, or NULL */
	bool json;                       /* --json */
};

/* The lines of --help about the Azure commands and their options. */
extern const char azure_usage_text[];

/* If c is one of the Azure options, records it (with arg) in o and returns
 * true; false for any other option. */
bool azure_options_take(struct azure_options *o, int c, char *arg);

/* The first Azure option given in o, as "--dps-name", or NULL if none was:
 * for refusing them with other commands. */
const char *azure_options_first_given(const struct azure_options *o);

/* Runs c: checks its options, then talks to popsignd and Azure.  Returns an
 * exit code; everything there is to say has been said on stderr (and the
 * result printed on stdout). */
int azure_command_run(const struct azure_command *c);

#endif
