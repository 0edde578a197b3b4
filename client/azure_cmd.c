#include "azure_cmd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "aad.h"
#include "cli.h"
#include "daemon_api.h"
#include "error.h"
#include "exit_code.h"
#include "httpdate.h"
#include "output.h"
#include "text.h"
#include "util.h"

#define STEPS 8
#define GIVEN(id) (1u << ((id) - AZURE_OPT_FIRST))

const char azure_usage_text[] =
	"Azure commands (DPS and IoT Hub proof of possession):\n"
	"  dps ACTION --dps-name NAME, iothub ACTION --hub-name NAME, where ACTION is\n"
	"  verify                 take the certificate from unverified to verified:\n"
	"                         Azure's verification code, signed by popsignd\n"
	"  upload                 upload the CA certificate of --key as\n"
	"                         --certificate-name (never as verified)\n"
	"  show                   one certificate: name, subject, thumbprint, expiry,\n"
	"                         verified\n"
	"  list                   every certificate of the DPS or hub\n"
	"  delete                 delete a certificate (needs --yes)\n"
	"\n"
	"Azure options:\n"
	"  --subscription ID      the subscription (default: $" AZURE_ENV_SUBSCRIPTION ")\n"
	"  --resource-group RG    the resource group of the DPS or hub\n"
	"  --certificate-name C   the certificate's name in Azure (not for list)\n"
	"  --key KEY              verify, upload: the popsignd key whose CA certificate\n"
	"                         it is\n"
	"  --upload               verify: upload the CA certificate first if missing\n"
	"  --yes                  delete: yes, delete it\n"
	"  --api-version V        default: " ARM_DPS_API_VERSION " (DPS), " ARM_IOTHUB_API_VERSION
	" (IoT Hub)\n"
	"  --arm-endpoint URL     default: $" AZURE_ENV_ARM_ENDPOINT ", else\n"
	"                         " ARM_DEFAULT_ENDPOINT "; http:// only to loopback\n"
	"  --json                 print Azure's certificate description as JSON\n"
	"Azure credentials, the first that applies:\n"
	"  --access-token-file FILE  a bearer token for ARM (chmod 600)\n"
	"  $AZURE_TENANT_ID, $AZURE_CLIENT_ID and $AZURE_CLIENT_SECRET, or\n"
	"    $AZURE_CLIENT_CERTIFICATE_PATH (PEM: certificate and RSA key); Azure AD\n"
	"    at $AZURE_AUTHORITY_HOST, default " AAD_DEFAULT_AUTHORITY "\n"
	"  --managed-identity[=CLIENT_ID]  the instance metadata endpoint\n"
	"                         ($AZURE_POD_IDENTITY_AUTHORITY_HOST, default\n"
	"                         " AAD_DEFAULT_IMDS ")\n"
	"  az account get-access-token, if the Azure CLI is on PATH\n"
	"Requests to Azure are tried up to 3 times (429, 5xx, no connection) within\n"
	"60 s, honouring Retry-After; https:// requests use $https_proxy if set.\n";

static const char *const option_names[] = {
	"--dps-name",	   "--hub-name",    "--subscription",	   "--resource-group",
	"--certificate-name", "--key",	    "--upload",		   "--api-version",
	"--arm-endpoint",  "--access-token-file", "--managed-identity", "--yes",
};

/* NOLINTNEXTLINE(readability-non-const-parameter): interface kept: getopt's optarg */
bool azure_options_take(struct azure_options *o, int c, char *arg)
{
	const char **slot[] = {
		&o->dps_name,	  &o->hub_name,	       &o->subscription, &o->resource_group,
		&o->certificate_name, &o->key,	       NULL,		 &o->api_version,
		&o->arm_endpoint, &o->access_token_file, NULL,		 NULL,
	};

	if (c < AZURE_OPT_FIRST || c >= AZURE_OPT_END)
		return false;
	o->given |= GIVEN(c);
	if (slot[c - AZURE_OPT_FIRST])
		*slot[c - AZURE_OPT_FIRST] = arg;
	else if (c == AZURE_OPT_UPLOAD)
		o->upload = true;
	else if (c == AZURE_OPT_YES)
		o->yes = true;
	else {
		o->managed_identity = true;
		o->managed_identity_client_id = arg;
	}
	return true;
}

const char *azure_options_first_given(const struct azure_options *o)
{
	for (int id = AZURE_OPT_FIRST; id < AZURE_OPT_END; id++)
		if (o->given & GIVEN(id))
			return option_names[id - AZURE_OPT_FIRST];
	return NULL;
}

/* ---- one command's state ---- */

struct ctx {
	const struct azure_command *cmd;
	const struct azure_options *opt;
	struct arm_target target;
	const char *cert;        /* --certificate-name */
	const char *key;         /* --key */
	const char *daemon_url;  /* verify, upload */
	char *origin, *resource; /* the ARM endpoint */
	char *resource_id;       /* the certificate's ARM resource id */
	struct aad *aad;
	struct arm *arm;
	struct cli_session daemon;
};

/* The CA certificate of the key, from popsignd (step 1). */
struct ca {
	struct daemon_key_info *info;
	char *pem;
};

static void step(unsigned n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reports progress on stderr as it happens: "[n/8] ...". */
static void step(unsigned n, const char *fmt, ...)
{
	_cleanup_free_ char *shown = NULL;
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	shown = output_printable(line);
	fprintf(stderr, "[%u/%d] %s\n", n, STEPS, shown ? shown : line);
	fflush(stderr);
}

static const char *service(const struct ctx *x)
{
	return arm_service_name(x->target.service);
}

static int azure_failed(const struct azure_error *e)
{
	azure_error_print(stderr, e);
	return exit_code_for_azure_error(e);
}

static void ca_clear(struct ca *ca)
{
	daemon_key_info_free(ca->info);
	free(ca->pem);
	*ca = (struct ca){0};
}

/* ---- printing certificates ---- */

#define CERT_COLUMNS 5

static int print_table(const struct arm_certificate *items, size_t n)
{
	static const char *const header[CERT_COLUMNS] = {"NAME", "SUBJECT", "THUMBPRINT",
							  "EXPIRES", "VERIFIED"};
	char (*expiry)[HTTPDATE_RFC3339_LEN] = calloc(n + 1, sizeof(*expiry));
	const char **cells = calloc((n + 1) * CERT_COLUMNS, sizeof(*cells));
	int r = PS_E_NOMEM;

	if (cells && expiry) {
		memcpy(cells, header, sizeof(header));
		for (size_t i = 0; i < n; i++) {
			const char **row = cells + (i + 1) * CERT_COLUMNS;

			httpdate_format_rfc3339(items[i].expiry, expiry[i]);
			row[0] = items[i].name;
			row[1] = items[i].subject;
			row[2] = items[i].thumbprint;
			row[3] = expiry[i];
			row[4] = items[i].is_verified ? "yes" : "no";
		}
		r = output_table(stdout, cells, n + 1, CERT_COLUMNS);
	}
	free(cells);
	free(expiry);
	return r < 0 ? cli_output_failed(r, "to standard output") : PS_EXIT_OK;
}

static int print_json(json_t *doc)
{
	_cleanup_free_ char *text = NULL;
	int r = output_json_text(doc, &text);

	if (r == 0)
		r = output_write_stdout(text, strlen(text));
	return r < 0 ? cli_output_failed(r, "to standard output") : PS_EXIT_OK;
}

static int print_certificate(const struct ctx *x, const struct arm_certificate *c)
{
	return x->cmd->json ? print_json(c->doc) : print_table(c, 1);
}

/* ---- popsignd ---- */

/* SHA-1 of the PEM's DER, uppercase hex, as Azure shows thumbprints. */
static int pem_thumbprint(const char *pem, char out[41])
{
	unsigned char *der = NULL, md[20];
	unsigned int len = 0;
	size_t der_len = 0;
	int r = daemon_cert_pem_to_der(pem, &der, &der_len);

	if (r < 0)
		return r;
	if (EVP_Digest(der, der_len, md, &len, EVP_sha1(), NULL) != 1)
		r = PS_E_CRYPTO;
	else
		hex_encode(md, sizeof(md), true, out);
	OPENSSL_free(der);
	return r;
}

/* Step 1: the key's CA certificate and its thumbprint, from popsignd. */
static int daemon_ca(struct ctx *x, struct ca *ret)
{
	struct daemon_error err = {0};
	struct ca ca = {0};
	char local[41];
	int r;

	r = cli_session_open(x->daemon_url, x->cmd->token_file, &x->daemon);
	if (r != PS_EXIT_OK)
		return r;
	if (daemon_api_key_info(x->daemon.api, x->key, &ca.info, &err) < 0 ||
	    daemon_api_ca_cert(x->daemon.api, x->key, &ca.pem, &err) < 0) {
		ca_clear(&ca);
		return cli_daemon_failed(&x->daemon, &err);
	}
	if (pem_thumbprint(ca.pem, local) < 0 || strcasecmp(local, ca.info->sha1_thumbprint) != 0) {
		output_errorf("popsignd's CA certificate of key %s does not have the SHA-1 "
			      "thumbprint popsignd gives for it",
			      x->key);
		ca_clear(&ca);
		return PS_EXIT_DAEMON;
	}
	step(1, "key %s: CA certificate %s, SHA-1 thumbprint %s", x->key, ca.info->subject,
	     ca.info->sha1_thumbprint);
	*ret = ca;
	return PS_EXIT_OK;
}

/* ---- Azure ---- */

/* Uploads the key's CA certificate as x->cert. */
static int upload(struct ctx *x, const struct ca *ca, struct arm_certificate **ret)
{
	struct azure_error err = {0};

	if (arm_put(x->arm, &x->target, x->cert, ca->pem, ret, &err) < 0)
		return azure_failed(&err);
	return PS_EXIT_OK;
}

/* Step 2: the certificate as Azure has it, uploaded first if missing and
 * upload is allowed. */
static int fetch(struct ctx *x, const struct ca *ca, bool may_upload,
		 struct arm_certificate **ret)
{
	struct azure_error err = {0};
	int r;

	if (arm_get(x->arm, &x->target, x->cert, ret, &err) == 0) {
		step(2, "certificate %s is in %s %s (%s)", x->cert, service(x), x->target.name,
		     (*ret)->is_verified ? "verified" : "not verified");
		return PS_EXIT_OK;
	}
	if (!arm_error_certificate_missing(&err))
		return azure_failed(&err);
	if (!may_upload) {
		azure_error_print(stderr, &err);
		output_errorf("certificate %s is not in %s %s: add --upload to upload the CA "
			      "certificate of key %s first",
			      x->cert, service(x), x->target.name, x->key);
		return PS_EXIT_AZURE_REFUSED;
	}
	step(2, "certificate %s is not in %s %s: uploading the CA certificate of key %s",
	     x->cert, service(x), x->target.name, x->key);
	r = upload(x, ca, ret);
	if (r == PS_EXIT_OK)
		step(2, "uploaded certificate %s (thumbprint %s, not verified)", x->cert,
		     (*ret)->thumbprint);
	return r;
}

/* Step 3: whether c is the key's CA certificate. */
static int check_thumbprint(const struct ctx *x, const struct ca *ca,
			    const struct arm_certificate *c)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): daemon_ca() set ca->info */
	if (strcasecmp(c->thumbprint, ca->info->sha1_thumbprint) == 0) {
		step(3, "its thumbprint %s is that of key %s", c->thumbprint, x->key);
		return PS_EXIT_OK;
	}
	output_errorf("certificate %s in %s is not the CA certificate of key %s (thumbprint in "
		      "%s: %s; key %s: %s): nothing was signed",
		      x->cert, x->target.name, x->key, service(x), c->thumbprint, x->key,
		      ca->info->sha1_thumbprint);
	return PS_EXIT_THUMBPRINT_MISMATCH;
}

/* Reads the certificate again after a 412, or reports why that failed. */
static int reread(struct ctx *x, const struct azure_error *why, struct arm_certificate **cur)
{
	struct azure_error err = {0};
	struct arm_certificate *c = NULL;

	step(5, "the certificate changed meanwhile (HTTP %ld, stale etag): reading it again and "
		"starting over",
	     why->status);
	if (arm_get(x->arm, &x->target, x->cert, &c, &err) < 0)
		return azure_failed(&err);
	arm_certificate_free(*cur);
	*cur = c;
	return PS_EXIT_OK;
}

/* Step 6: popsignd signs the verification certificate for code. */
static int sign(struct ctx *x, const char *code, struct daemon_verification **ret)
{
	struct daemon_error err = {0};

	if (daemon_api_sign(x->daemon.api, x->key, code, x->resource_id, ret, &err) < 0)
		return cli_daemon_failed(&x->daemon, &err);
	step(6, "popsignd signed a verification certificate for CN=%s (serial %s)", code,
	     (*ret)->serial);
	return PS_EXIT_OK;
}

/* Steps 5 to 7 once.  Returns PS_EXIT_OK with the verify answer in *ret;
 * or -1 with *stale filled for a 412 the caller may act on; or an exit
 * code after reporting. */
static int prove(struct ctx *x, const struct arm_certificate *cur, struct azure_error *stale,
		 struct arm_certificate **ret)
{
	struct arm_certificate *gen = NULL;
	struct daemon_verification *v = NULL;
	struct azure_error err = {0};
	int r = PS_EXIT_OK;

	if (arm_generate_code(x->arm, &x->target, x->cert, cur->etag, &gen, &err) < 0)
		goto failed;
	step(5, "%s handed out verification code %s", service(x), gen->verification_code);
	r = sign(x, gen->verification_code, &v);
	if (r != PS_EXIT_OK)
		goto out;
	if (arm_verify(x->arm, &x->target, x->cert, gen->etag, v->certificate, ret, &err) < 0)
		goto failed;
	step(7, "sent the verification certificate to %s", service(x));
	goto out;
failed:
	if (err.status == 412) {
		*stale = err;
		r = -1;
	} else
		r = azure_failed(&err);
out:
	daemon_verification_free(v);
	arm_certificate_free(gen);
	return r;
}

/* Step 8: Azure says it is verified now. */
static int confirm(const struct ctx *x, const struct arm_certificate *done)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): prove() set done */
	if (!done->is_verified) {
		output_errorf("%s took the verification certificate but does not say certificate %s "
			      "is verified",
			      service(x), x->cert);
		return PS_EXIT_AZURE_REFUSED;
	}
	step(8, "certificate %s in %s %s is verified: subject %s, thumbprint %s, expires %s",
	     x->cert, service(x), x->target.name, done->subject, done->thumbprint,
	     done->expiry_text);
	return print_certificate(x, done);
}

/* Steps 3 to 8, starting over from a fresh read once after a 412. */
static int verify_from(struct ctx *x, const struct ca *ca, struct arm_certificate **cur)
{
	struct arm_certificate *done = NULL;
	struct azure_error stale = {0};
	int r;

	for (unsigned attempt = 0;; attempt++) {
		r = check_thumbprint(x, ca, *cur);
		if (r != PS_EXIT_OK)
			return r;
		if ((*cur)->is_verified) {
			step(4, "certificate %s in %s %s is already verified: nothing to do", x->cert,
			     service(x), x->target.name);
			return print_certificate(x, *cur);
		}
		step(4, "not verified yet: proving possession of key %s", x->key);
		r = prove(x, *cur, &stale, &done);
		if (r != -1)
			break;
		if (attempt == 1) {
			output_errorf("the certificate kept changing (stale etag twice): giving up");
			return azure_failed(&stale);
		}
		r = reread(x, &stale, cur);
		if (r != PS_EXIT_OK)
			return r;
	}
	if (r == PS_EXIT_OK)
		r = confirm(x, done);
	arm_certificate_free(done);
	return r;
}

/* ---- the actions ---- */

static int run_verify(struct ctx *x)
{
	struct arm_certificate *cur = NULL;
	struct ca ca = {0};
	int r;

	r = daemon_ca(x, &ca);
	if (r == PS_EXIT_OK)
		r = fetch(x, &ca, x->opt->upload, &cur);
	if (r == PS_EXIT_OK)
		r = verify_from(x, &ca, &cur);
	arm_certificate_free(cur);
	ca_clear(&ca);
	return r;
}

/* An existing certificate of the same name: fine if it is the key's. */
static int upload_exists(const struct ctx *x, const struct ca *ca,
			 const struct arm_certificate *c)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): daemon_ca() set ca->info */
	if (strcasecmp(c->thumbprint, ca->info->sha1_thumbprint) != 0) {
		output_errorf("certificate %s in %s is not the CA certificate of key %s (thumbprint "
			      "in %s: %s): delete it first with 'popsign %s delete'",
			      x->cert, x->target.name, x->key, service(x), c->thumbprint,
			      arm_service_command(x->target.service));
		return PS_EXIT_THUMBPRINT_MISMATCH;
	}
	fprintf(stderr, "certificate %s is already in %s %s (%s)\n", x->cert, service(x),
		x->target.name, c->is_verified ? "verified" : "not verified");
	return print_certificate(x, c);
}

static int run_upload(struct ctx *x)
{
	struct arm_certificate *c = NULL;
	struct azure_error err = {0};
	struct ca ca = {0};
	int r;

	r = daemon_ca(x, &ca);
	if (r != PS_EXIT_OK)
		return r;
	if (arm_get(x->arm, &x->target, x->cert, &c, &err) == 0)
		r = upload_exists(x, &ca, c);
	else if (!arm_error_certificate_missing(&err))
		r = azure_failed(&err);
	else {
		r = upload(x, &ca, &c);
		if (r == PS_EXIT_OK) {
			fprintf(stderr, "uploaded the CA certificate of key %s to %s %s as %s\n",
				x->key, service(x), x->target.name, x->cert);
			r = print_certificate(x, c);
		}
	}
	arm_certificate_free(c);
	ca_clear(&ca);
	return r;
}

static int run_show(struct ctx *x)
{
	struct arm_certificate *c = NULL;
	struct azure_error err = {0};
	int r;

	if (arm_get(x->arm, &x->target, x->cert, &c, &err) < 0)
		return azure_failed(&err);
	r = print_certificate(x, c);
	arm_certificate_free(c);
	return r;
}

static int run_list(struct ctx *x)
{
	struct arm_certificate_list *l = NULL;
	struct azure_error err = {0};
	int r;

	if (arm_list(x->arm, &x->target, &l, &err) < 0)
		return azure_failed(&err);
	r = x->cmd->json ? print_json(l->doc) : print_table(l->items, l->n);
	arm_certificate_list_free(l);
	return r;
}

static int run_delete(struct ctx *x)
{
	struct arm_certificate *c = NULL;
	struct azure_error err = {0};

	if (arm_get(x->arm, &x->target, x->cert, &c, &err) < 0)
		return azure_failed(&err);
	if (arm_delete(x->arm, &x->target, x->cert, c->etag, &err) < 0) {
		arm_certificate_free(c);
		return azure_failed(&err);
	}
	fprintf(stderr, "deleted certificate %s (thumbprint %s) from %s %s\n", x->cert,
		c->thumbprint, service(x), x->target.name);
	arm_certificate_free(c);
	return PS_EXIT_OK;
}

/* ---- checking the command line ---- */

enum {
	NEEDS_CERT = 1 << 0,
	NEEDS_KEY = 1 << 1,
	NEEDS_DAEMON = 1 << 2,
};

struct action {
	const char *name;
	int (*run)(struct ctx *x);
	unsigned needs;
	unsigned allows; /* GIVEN() bits of the options only some actions take */
};

static const struct action actions[] = {
	{"verify", run_verify, NEEDS_CERT | NEEDS_KEY | NEEDS_DAEMON,
	 GIVEN(AZURE_OPT_CERTIFICATE_NAME) | GIVEN(AZURE_OPT_KEY) | GIVEN(AZURE_OPT_UPLOAD)},
	{"upload", run_upload, NEEDS_CERT | NEEDS_KEY | NEEDS_DAEMON,
	 GIVEN(AZURE_OPT_CERTIFICATE_NAME) | GIVEN(AZURE_OPT_KEY)},
	{"show", run_show, NEEDS_CERT, GIVEN(AZURE_OPT_CERTIFICATE_NAME)},
	{"list", run_list, 0, 0},
	{"delete", run_delete, NEEDS_CERT, GIVEN(AZURE_OPT_CERTIFICATE_NAME) | GIVEN(AZURE_OPT_YES)},
};

/* The options that only some actions take. */
#define SOME_ACTIONS                                                                         \
	(GIVEN(AZURE_OPT_CERTIFICATE_NAME) | GIVEN(AZURE_OPT_KEY) | GIVEN(AZURE_OPT_UPLOAD) |  \
	 GIVEN(AZURE_OPT_YES))

static int check_applies(const struct azure_command *c, const struct action *a)
{
	const struct azure_options *o = c->opt;
	unsigned wrong_name = c->service == ARM_SERVICE_DPS ? GIVEN(AZURE_OPT_HUB_NAME)
							    : GIVEN(AZURE_OPT_DPS_NAME);
	unsigned bad = (o->given & SOME_ACTIONS & ~a->allows) | (o->given & wrong_name);

	for (int id = AZURE_OPT_FIRST; id < AZURE_OPT_END; id++)
		if (bad & GIVEN(id))
			return cli_usage_error("%s does not apply to '%s %s'",
					       option_names[id - AZURE_OPT_FIRST],
					       arm_service_command(c->service), a->name);
	if (!(a->needs & NEEDS_DAEMON) && (c->daemon_url || c->token_file))
		return cli_usage_error("--url and --token-file do not apply to '%s %s': it does "
				       "not use popsignd",
				       arm_service_command(c->service), a->name);
	return PS_EXIT_OK;
}

static int check_present(const struct azure_command *c, const struct action *a,
			 const struct ctx *x)
{
	const char *cmd = arm_service_command(c->service);

	if (!x->target.name)
		return cli_usage_error("'%s %s' needs %s", cmd, a->name,
				       c->service == ARM_SERVICE_DPS ? "--dps-name" : "--hub-name");
	if (!x->target.subscription)
		return cli_usage_error("'%s %s' needs --subscription (or $" AZURE_ENV_SUBSCRIPTION ")",
				       cmd, a->name);
	if (!x->target.resource_group)
		return cli_usage_error("'%s %s' needs --resource-group", cmd, a->name);
	if ((a->needs & NEEDS_CERT) && !x->cert)
		return cli_usage_error("'%s %s' needs --certificate-name", cmd, a->name);
	if ((a->needs & NEEDS_KEY) && !x->key)
		return cli_usage_error("'%s %s' needs --key", cmd, a->name);
	if (strcmp(a->name, "delete") == 0 && !c->opt->yes)
		return cli_usage_error("deleting certificate %s from %s %s needs --yes", x->cert,
				       arm_service_name(c->service), x->target.name);
	return PS_EXIT_OK;
}

static const char *env_or(const char *value, const char *var)
{
	const char *e = getenv(var);

	return value ? value : e && e[0] ? e : NULL;
}

/* Fills x from c and checks it, before anything is sent. */
static int ctx_init(struct ctx *x, const struct azure_command *c, const struct action *a)
{
	const struct azure_options *o = c->opt;
	struct daemon_error derr = {0};
	const char *why = NULL;
	int r;

	x->cmd = c;
	x->opt = o;
	x->target = (struct arm_target){
		.service = c->service,
		.subscription = env_or(o->subscription, AZURE_ENV_SUBSCRIPTION),
		.resource_group = o->resource_group,
		.name = c->service == ARM_SERVICE_DPS ? o->dps_name : o->hub_name,
		.api_version = o->api_version,
	};
	x->cert = o->certificate_name;
	x->key = o->key;
	r = check_applies(c, a);
	if (r == PS_EXIT_OK)
		r = check_present(c, a, x);
	if (r != PS_EXIT_OK)
		return r;
	if (arm_target_check(&x->target, x->cert, &why) < 0)
		return cli_usage_error("invalid %s", why);
	if (x->key && daemon_check_key(x->key, &derr) < 0)
		return cli_usage_error("invalid --key: %s", derr.message);
	if (a->needs & NEEDS_DAEMON)
		return cli_resolve_url(c->daemon_url, &x->daemon_url);
	return PS_EXIT_OK;
}

/* The ARM endpoint, the resource id, the credentials and the client. */
static int ctx_connect(struct ctx *x)
{
	const char *url = env_or(x->opt->arm_endpoint, AZURE_ENV_ARM_ENDPOINT), *why = NULL;
	struct aad_options ao = {
		.access_token_file = x->opt->access_token_file,
		.managed_identity = x->opt->managed_identity,
		.managed_identity_client_id = x->opt->managed_identity_client_id,
	};
	struct azure_error err = {0};
	int r;

	r = arm_endpoint_resolve(url ? url : ARM_DEFAULT_ENDPOINT, &x->origin, &x->resource, &why);
	if (r == PS_E_INVALID_REQUEST)
		return cli_usage_error("invalid %s: %s",
				       x->opt->arm_endpoint ? "--arm-endpoint" : "$" AZURE_ENV_ARM_ENDPOINT,
				       why);
	if (r < 0 || (x->cert && arm_certificate_path(&x->target, x->cert, &x->resource_id) < 0)) {
		output_errorf("out of memory");
		return PS_EXIT_INTERNAL;
	}
	ao.resource = x->resource;
	if (aad_new(&ao, &x->aad, &err) < 0 || arm_new(x->origin, x->aad, &x->arm, &err) < 0)
		return azure_failed(&err);
	fprintf(stderr, "Azure credentials: %s\n", aad_describe(x->aad));
	return PS_EXIT_OK;
}

static void ctx_done(struct ctx *x)
{
	arm_free(x->arm);
	aad_free(x->aad);
	cli_session_close(&x->daemon);
	free(x->resource_id);
	free(x->origin);
	free(x->resource);
}

int azure_command_run(const struct azure_command *c)
{
	const struct action *a = NULL;
	struct ctx x = {0};
	int r;

	for (size_t i = 0; i < ELEMENTSOF(actions); i++)
		if (strcmp(actions[i].name, c->action) == 0)
			a = &actions[i];
	if (!a)
		return cli_usage_error("unknown action '%s' for '%s': verify, upload, show, list or "
				       "delete",
				       c->action, arm_service_command(c->service));
	r = ctx_init(&x, c, a);
	if (r == PS_EXIT_OK && x.resource_id && strlen(x.resource_id) > DAEMON_CONTEXT_MAX)
		r = cli_usage_error("the certificate's resource id is longer than %d characters",
				    DAEMON_CONTEXT_MAX);
	if (r == PS_EXIT_OK)
		r = ctx_connect(&x);
	if (r == PS_EXIT_OK)
		r = a->run(&x);
	ctx_done(&x);
	return r;
}
