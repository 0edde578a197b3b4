/* popsignd's configuration: an INI file read with inih.
 *
 *   [daemon]        listen, workers, validity, socket_mode, socket_group,
 *                   audit_log, rate, burst, auth_failures, max_connections,
 *                   connection_timeout, max_header_size, request_timeout
 *   [key NAME]      uri, certificate
 *   [client NAME]   token_sha256, uid, gid, keys, rate, burst
 *
 * Every error is reported as "FILE:LINE: message". */
#ifndef POPSIGN_CONFIG_H
#define POPSIGN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define CONFIG_DEFAULT_PATH "/etc/popsign/popsignd.conf"
#define CONFIG_NAME_MAX 64           /* key and client names: 1-64 of [A-Za-z0-9._-] */
#define CONFIG_LISTEN_MAX 16         /* listen addresses */
#define CONFIG_WORKERS_MAX 256
#define CONFIG_VALIDITY_MAX (30u * 86400u) /* seconds */
#define CONFIG_VALIDITY_DEFAULT 86400u
#define CONFIG_DEFAULT_LISTEN "127.0.0.1:7717"
#define CONFIG_ERROR_MAX 512         /* room for one "FILE:LINE: message" */
#define CONFIG_SOCKET_MODE_DEFAULT 0660
#define CONFIG_RATE_DEFAULT 10.0     /* signing requests per second, per client */
#define CONFIG_BURST_DEFAULT 20
#define CONFIG_BURST_MAX 100000
#define CONFIG_AUTH_FAILURES_DEFAULT 5
#define CONFIG_CONNECTIONS_DEFAULT 256
#define CONFIG_CONNECTIONS_MAX 10000
#define CONFIG_CONN_TIMEOUT_DEFAULT 10   /* seconds */
#define CONFIG_HEADER_SIZE_DEFAULT 16384 /* bytes of request line and headers */
#define CONFIG_HEADER_SIZE_MIN 1024
#define CONFIG_HEADER_SIZE_MAX 1048576
#define CONFIG_REQUEST_TIMEOUT_DEFAULT 5 /* seconds a request may wait for the token */

struct config_listen {
	char text[128];                  /* as written, e.g. "[::1]:7717", "unix:/run/p.sock" */
	bool is_unix;                    /* "unix:PATH": addr is a sockaddr_un */
	struct sockaddr_storage addr;    /* loopback only; port 0 picks a free port */
	socklen_t addr_len;
};

struct config_key {
	char *name;
	char *uri;                       /* RFC 7512 PKCS#11 URI, already checked by key_uri_parse() */
	char *certificate;               /* path, or NULL: the token holds the certificate */
	unsigned line;
};

struct config_client {
	char *name;
	uint8_t token_sha256[32];
	bool has_token;
	bool has_uid, has_gid;           /* Unix-socket callers, by SO_PEERCRED */
	uid_t uid;
	gid_t gid;
	double rate;                     /* requests per second; default: [daemon] rate */
	unsigned burst;                  /* default: [daemon] burst */
	bool all_keys;                   /* keys = * */
	char **keys;                     /* names of [key] sections, each checked to exist */
	size_t n_keys;
	unsigned line;
};

struct config {
	char *path;
	struct config_listen listen[CONFIG_LISTEN_MAX];
	size_t n_listen;                 /* default: one, CONFIG_DEFAULT_LISTEN */
	unsigned workers;                /* default: online CPUs */
	unsigned validity;               /* seconds, default CONFIG_VALIDITY_DEFAULT */
	mode_t socket_mode;              /* Unix listeners, default CONFIG_SOCKET_MODE_DEFAULT */
	bool has_socket_group;
	gid_t socket_group;
	char *audit_log;                 /* NULL: no audit trail */
	double rate;                     /* client default, CONFIG_RATE_DEFAULT */
	unsigned burst;                  /* client default, CONFIG_BURST_DEFAULT */
	unsigned auth_failures;          /* per peer per minute, CONFIG_AUTH_FAILURES_DEFAULT */
	unsigned max_connections;
	unsigned connection_timeout;     /* seconds */
	unsigned max_header_size;        /* bytes */
	unsigned request_timeout;        /* seconds */
	struct config_key *keys;
	size_t n_keys;
	struct config_client *clients;
	size_t n_clients;
};

/* Reads and checks the file at path.  On success *ret owns a config (free it
 * with config_free()).  On failure returns PS_E_CONFIG (or PS_E_NOMEM),
 * leaves *ret untouched and writes "FILE:LINE: message" (LINE 0 for
 * whole-file problems) into err. */
int config_load(const char *path, struct config **ret, char err[CONFIG_ERROR_MAX]);

/* Frees c.  Accepts NULL. */
void config_free(struct config *c);

/* "Nm", "Nh" or "Nd" (N a whole number >= 1) to seconds, at most
 * CONFIG_VALIDITY_MAX.  Returns 0, or PS_E_CONFIG with *ret untouched. */
int config_parse_duration(const char *text, unsigned *ret);

/* One "host:port" listen address, IPv6 as "[::1]:port", or "unix:PATH" (an
 * absolute path).  Only loopback addresses are accepted.  Returns 0, or PS_E_CONFIG with a reason in why. */
int config_parse_listen(const char *text, struct config_listen *ret, const char **why);

/* The key named name, or NULL. */
const struct config_key *config_find_key(const struct config *c, const char *name);

/* "N/s", "N/m" or "N/h" (N a whole number >= 1) to requests per second.
 * Returns 0, or PS_E_CONFIG with *ret untouched. */
int config_parse_rate(const char *text, double *ret);

/* 1-64 of [A-Za-z0-9._-]. */
bool config_name_valid(const char *name);

#endif
