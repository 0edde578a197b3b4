#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "error.h"
#include "text.h"
#include "uri.h"
#include "util.h"

/* The configuration is small; anything bigger is a mistake, not a config. */
#define CONFIG_FILE_MAX (1024 * 1024)

enum section {
	SECTION_NONE,
	SECTION_DAEMON,
	SECTION_KEY,
	SECTION_CLIENT,
};

/* State shared by the line reader and the inih handler.  The reader, not
 * inih, tracks sections: inih cuts section names at 49 bytes and says
 * nothing about sections without settings. */
struct parser {
	const char *path;
	const char *buf;
	size_t len, pos;
	unsigned line;               /* the line inih is working on */
	enum section section;
	char section_text[CONFIG_NAME_MAX + 16]; /* "key root-ca", for messages */
	unsigned section_line;
	unsigned daemon_line;        /* 0 until [daemon] is seen */
	unsigned seen;               /* bit i: settings[i] given in this section */
	unsigned *keys_lines;        /* per client: the line of its keys= entry */
	struct config *cfg;
	int r;                       /* first error, or 0 */
	unsigned err_line;
	char *err;
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Records the first error as "FILE:LINE: message" and returns r. */
__attribute__((format(printf, 4, 5)))
static int fail(struct parser *p, unsigned line, int r, const char *fmt, ...)
{
	int n;

	if (p->r)
		return r;
	n = snprintf(p->err, CONFIG_ERROR_MAX, "%s:%u: ", p->path, line);
	if (n >= 0 && n < CONFIG_ERROR_MAX) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(p->err + n, CONFIG_ERROR_MAX - (size_t)n, fmt, ap);
		va_end(ap);
	}
	p->r = r;
	p->err_line = line;
	return r;
}

static int fail_nomem(struct parser *p)
{
	return fail(p, p->line, PS_E_NOMEM, "out of memory");
}

bool config_name_valid(const char *name)
{
	size_t len;

	if (!name)
		return false;
	len = strlen(name);
	if (len < 1 || len > CONFIG_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		/* Spelled out rather than isalnum(): no locale may widen the set. */
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

const struct config_key *config_find_key(const struct config *c, const char *name)
{
	if (!c || !name)
		return NULL;
	for (size_t i = 0; i < c->n_keys; i++)
		if (strcmp(c->keys[i].name, name) == 0)
			return &c->keys[i];
	return NULL;
}

static const struct config_client *find_client(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_clients; i++)
		if (strcmp(c->clients[i].name, name) == 0)
			return &c->clients[i];
	return NULL;
}

int config_parse_duration(const char *text, unsigned *ret)
{
	static const struct {
		char unit;
		unsigned seconds;
	} units[] = { { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 } };
	char digits[16];
	unsigned long long n;
	size_t len;

	if (!text)
		return PS_E_CONFIG;
	len = strlen(text);
	/* Longer than any number below the cap: refused before strtoull sees it. */
	if (len < 2 || len - 1 >= sizeof(digits))
		return PS_E_CONFIG;
	memcpy(digits, text, len - 1);
	digits[len - 1] = '\0';
	for (size_t i = 0; i < ELEMENTSOF(units); i++) {
		if (text[len - 1] != units[i].unit)
			continue;
		/* The cap divided by the unit: the product cannot overflow. */
		if (parse_uint(digits, 1, CONFIG_VALIDITY_MAX / units[i].seconds, &n) < 0)
			return PS_E_CONFIG;
		*ret = (unsigned)n * units[i].seconds;
		return 0;
	}
	return PS_E_CONFIG;
}

static int listen_ipv4(const char *host, struct config_listen *l, const char **why)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&l->addr;

	if (strcasecmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
		*why = "not an IPv4 address, [IPv6] address or localhost";
		return PS_E_CONFIG;
	}
	if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127) {
		*why = "not a loopback address; popsignd only listens on loopback "
		       "(127.0.0.0/8 or [::1])";
		return PS_E_CONFIG;
	}
	sin->sin_family = AF_INET;
	l->addr_len = sizeof(*sin);
	return 0;
}

static int listen_ipv6(const char *host, struct config_listen *l, const char **why)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&l->addr;

	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
		*why = "not an IPv6 address";
		return PS_E_CONFIG;
	}
	if (!IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr)) {
		*why = "not a loopback address; popsignd only listens on loopback "
		       "(127.0.0.0/8 or [::1])";
		return PS_E_CONFIG;
	}
	sin6->sin6_family = AF_INET6;
	l->addr_len = sizeof(*sin6);
	return 0;
}

/* Splits "host:port" or "[host]:port" into host (a copy) and port. */
static int listen_split(const char *text, char *host, size_t host_size, const char **port,
			bool *ipv6, const char **why)
{
	const char *end;

	*ipv6 = text[0] == '[';
	if (*ipv6) {
		end = strchr(text, ']');
		if (!end || end[1] != ':') {
			*why = "an IPv6 address is written [::1]:PORT";
			return PS_E_CONFIG;
		}
		text++;
	} else {
		end = strrchr(text, ':');
		if (!end) {
			*why = "missing :PORT";
			return PS_E_CONFIG;
		}
		if (memchr(text, ':', (size_t)(end - text))) {
			*why = "an IPv6 address needs brackets: [::1]:PORT";
			return PS_E_CONFIG;
		}
	}
	if (end == text || (size_t)(end - text) >= host_size) {
		*why = end == text ? "missing host" : "host too long";
		return PS_E_CONFIG;
	}
	memcpy(host, text, (size_t)(end - text));
	host[end - text] = '\0';
	*port = end + (*ipv6 ? 2 : 1);
	return 0;
}

static int listen_unix(const char *path, struct config_listen *l, const char **why)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&l->addr;

	if (path[0] != '/') {
		*why = "a Unix socket path must be absolute: unix:/run/popsign/popsignd.sock";
		return PS_E_CONFIG;
	}
	if (strlen(path) >= sizeof(sun->sun_path)) {
		*why = "the Unix socket path is too long";
		return PS_E_CONFIG;
	}
	sun->sun_family = AF_UNIX;
	strcpy(sun->sun_path, path);
	l->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
	l->is_unix = true;
	return 0;
}

int config_parse_listen(const char *text, struct config_listen *ret, const char **why)
{
	struct config_listen l = { 0 };
	char host[sizeof(l.text)];
	unsigned long long port;
	const char *port_text;
	bool ipv6;
	int r;

	if (!text || strlen(text) >= sizeof(l.text)) {
		*why = "too long";
		return PS_E_CONFIG;
	}
	if (strncmp(text, "unix:", 5) == 0) {
		r = listen_unix(text + 5, &l, why);
		if (r == 0) {
			strcpy(l.text, text);
			*ret = l;
		}
		return r;
	}
	r = listen_split(text, host, sizeof(host), &port_text, &ipv6, why);
	if (r < 0)
		return r;
	if (parse_uint(port_text, 0, 65535, &port) < 0) {
		*why = port_text[0] ? "the port must be a number from 0 to 65535" : "missing port";
		return PS_E_CONFIG;
	}
	r = ipv6 ? listen_ipv6(host, &l, why) : listen_ipv4(host, &l, why);
	if (r < 0)
		return r;
	/* sin_port and sin6_port sit at the same offset. */
	((struct sockaddr_in *)&l.addr)->sin_port = htons((uint16_t)port);
	strcpy(l.text, text);
	*ret = l;
	return 0;
}

/* Whether a and b would bind the same socket; port 0 never clashes. */
static bool listen_same(const struct config_listen *a, const struct config_listen *b)
{
	if (a->is_unix || b->is_unix)
		return a->is_unix && b->is_unix && strcmp(a->text, b->text) == 0;
	return ((const struct sockaddr_in *)&a->addr)->sin_port != 0 &&
	       a->addr_len == b->addr_len && memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

/* Calls item() for each comma-separated entry of value, blanks trimmed;
 * stops at the first error. */
static int list_each(struct parser *p, const char *value,
		     int (*item)(struct parser *p, const char *text, size_t len))
{
	for (;;) {
		const char *comma = strchr(value, ',');
		size_t len = comma ? (size_t)(comma - value) : strlen(value);
		int r;

		while (len > 0 && is_space(value[0])) {
			value++;
			len--;
		}
		while (len > 0 && is_space(value[len - 1]))
			len--;
		r = item(p, value, len);
		if (r < 0 || !comma)
			return r;
		value = comma + 1;
	}
}

static int listen_item(struct parser *p, const char *text, size_t len)
{
	struct config *c = p->cfg;
	struct config_listen *l = &c->listen[c->n_listen];
	char buf[sizeof(l->text)];
	const char *why = NULL;

	if (len == 0)
		return fail(p, p->line, PS_E_CONFIG, "empty address in listen");
	if (c->n_listen == CONFIG_LISTEN_MAX)
		return fail(p, p->line, PS_E_CONFIG, "more than %d listen addresses",
			    CONFIG_LISTEN_MAX);
	if (len >= sizeof(buf))
		return fail(p, p->line, PS_E_CONFIG, "bad listen address '%.*s': too long",
			    (int)len, text);
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (config_parse_listen(buf, l, &why) < 0)
		return fail(p, p->line, PS_E_CONFIG, "bad listen address '%s': %s", buf, why);
	for (size_t i = 0; i < c->n_listen; i++)
		if (listen_same(&c->listen[i], l))
			return fail(p, p->line, PS_E_CONFIG, "listen address '%s' given twice", buf);
	c->n_listen++;
	return 0;
}

static int set_listen(struct parser *p, const char *value)
{
	return list_each(p, value, listen_item);
}

static int set_workers(struct parser *p, const char *value)
{
	unsigned long long n;

	if (parse_uint(value, 1, CONFIG_WORKERS_MAX, &n) < 0)
		return fail(p, p->line, PS_E_CONFIG,
			    "workers must be a whole number from 1 to %d, not '%s'",
			    CONFIG_WORKERS_MAX, value);
	p->cfg->workers = (unsigned)n;
	return 0;
}

static int set_validity(struct parser *p, const char *value)
{
	if (config_parse_duration(value, &p->cfg->validity) < 0)
		return fail(p, p->line, PS_E_CONFIG,
			    "validity must be Nm, Nh or Nd (N a whole number >= 1), "
			    "at most 30d, not '%s'", value);
	return 0;
}

static struct config_key *key_current(struct parser *p)
{
	return &p->cfg->keys[p->cfg->n_keys - 1];
}

static struct config_client *client_current(struct parser *p)
{
	return &p->cfg->clients[p->cfg->n_clients - 1];
}

static int set_uri(struct parser *p, const char *value)
{
	struct config_key *k = key_current(p);
	struct key_uri *u = NULL;
	const char *why = "invalid";
	int r;

	r = key_uri_parse(value, &u, &why);
	if (r == PS_E_NOMEM)
		return fail_nomem(p);
	if (r < 0)
		return fail(p, p->line, PS_E_CONFIG, "key '%s': bad uri: %s", k->name, why);
	key_uri_free(u);
	k->uri = strdup(value);
	return k->uri ? 0 : fail_nomem(p);
}

static int set_certificate(struct parser *p, const char *value)
{
	struct config_key *k = key_current(p);

	if (!value[0])
		return fail(p, p->line, PS_E_CONFIG,
			    "key '%s': certificate is empty (leave it out if the token "
			    "holds the certificate)", k->name);
	k->certificate = strdup(value);
	return k->certificate ? 0 : fail_nomem(p);
}

static int set_token_sha256(struct parser *p, const char *value)
{
	struct config_client *c = client_current(p);
	uint8_t hash[sizeof(c->token_sha256)];

	if (hex_decode(value, hash, sizeof(hash)) < 0)
		return fail(p, p->line, PS_E_CONFIG,
			    "client '%s': token_sha256 must be 64 hex digits (the SHA-256 "
			    "of the bearer token, as printed by popsign token-new)", c->name);
	/* Two clients with one token: the caller's identity would be a guess. */
	for (size_t i = 0; i + 1 < p->cfg->n_clients; i++)
		if (p->cfg->clients[i].has_token &&
		    memcmp(p->cfg->clients[i].token_sha256, hash, sizeof(hash)) == 0)
			return fail(p, p->line, PS_E_CONFIG,
				    "client '%s': same token_sha256 as client '%s'", c->name,
				    p->cfg->clients[i].name);
	memcpy(c->token_sha256, hash, sizeof(hash));
	c->has_token = true;
	return 0;
}

static int keys_item(struct parser *p, const char *text, size_t len)
{
	struct config_client *c = client_current(p);
	_cleanup_free_ char *name = NULL;
	char **keys;

	if (len == 0)
		return fail(p, p->line, PS_E_CONFIG, "client '%s': empty name in keys", c->name);
	if (len == 1 && text[0] == '*')
		return fail(p, p->line, PS_E_CONFIG, "client '%s': '*' must stand alone in keys",
			    c->name);
	name = strndup(text, len);
	if (!name)
		return fail_nomem(p);
	if (!config_name_valid(name))
		return fail(p, p->line, PS_E_CONFIG, "client '%s': invalid key name '%s' in keys",
			    c->name, name);
	for (size_t i = 0; i < c->n_keys; i++)
		if (strcmp(c->keys[i], name) == 0)
			return fail(p, p->line, PS_E_CONFIG,
				    "client '%s': key '%s' listed twice in keys", c->name, name);
	keys = reallocarray(c->keys, c->n_keys + 1, sizeof(*keys));
	if (!keys)
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
		return fail_nomem(p);
	c->keys = keys;
	c->keys[c->n_keys++] = TAKE_PTR(name);
	return 0;
}

static int set_keys(struct parser *p, const char *value)
{
	struct config_client *c = client_current(p);

	p->keys_lines[p->cfg->n_clients - 1] = p->line;
	if (strcmp(value, "*") == 0) {
		c->all_keys = true;
		return 0;
	}
	return list_each(p, value, keys_item);
}

/* A whole number in [min, max] for a [daemon] setting. */
static int set_number(struct parser *p, const char *name, const char *value,
		      unsigned long long min, unsigned long long max, unsigned *ret)
{
	unsigned long long n;

	if (parse_uint(value, min, max, &n) < 0)
		return fail(p, p->line, PS_E_CONFIG,
			    "%s must be a whole number from %llu to %llu, not '%s'", name, min, max,
			    value);
	*ret = (unsigned)n;
	return 0;
}

static int set_max_connections(struct parser *p, const char *value)
{
	return set_number(p, "max_connections", value, 1, CONFIG_CONNECTIONS_MAX,
			  &p->cfg->max_connections);
}

static int set_connection_timeout(struct parser *p, const char *value)
{
	return set_number(p, "connection_timeout (seconds)", value, 1, 3600,
			  &p->cfg->connection_timeout);
}

static int set_max_header_size(struct parser *p, const char *value)
{
	return set_number(p, "max_header_size (bytes)", value, CONFIG_HEADER_SIZE_MIN,
			  CONFIG_HEADER_SIZE_MAX, &p->cfg->max_header_size);
}

static int set_request_timeout(struct parser *p, const char *value)
{
	return set_number(p, "request_timeout (seconds)", value, 1, 300,
			  &p->cfg->request_timeout);
}

static int set_socket_mode(struct parser *p, const char *value)
{
	char *end = NULL;
	unsigned long mode;

	errno = 0;
	mode = strtoul(value, &end, 8);
	if (!value[0] || value[0] == '-' || value[0] == '+' || errno || *end || mode > 0777)
		return fail(p, p->line, PS_E_CONFIG,
			    "socket_mode must be an octal mode such as 0660, not '%s'", value);
	p->cfg->socket_mode = (mode_t)mode;
	return 0;
}

/* A user or group given by name or number. */
static int lookup_id(const char *value, bool group, unsigned *ret)
{
	unsigned long long n;
	char buf[4096];
	bool found = false;

	if (parse_uint(value, 0, UINT32_MAX - 1, &n) == 0) {
		*ret = (unsigned)n;
		return 0;
	}
	if (group) {
		struct group gr, *res = NULL;

		found = getgrnam_r(value, &gr, buf, sizeof(buf), &res) == 0 && res;
		if (found)
			*ret = res->gr_gid;
	} else {
		struct passwd pw, *res = NULL;

		found = getpwnam_r(value, &pw, buf, sizeof(buf), &res) == 0 && res;
		if (found)
			*ret = res->pw_uid;
	}
	return found ? 0 : PS_E_NOT_FOUND;
}

static int set_socket_group(struct parser *p, const char *value)
{
	unsigned gid = 0;

	if (!value[0] || lookup_id(value, true, &gid) < 0)
		return fail(p, p->line, PS_E_CONFIG, "socket_group: no such group '%s'", value);
	p->cfg->socket_group = (gid_t)gid;
	p->cfg->has_socket_group = true;
	return 0;
}

static int set_audit_log(struct parser *p, const char *value)
{
	if (value[0] != '/')
		return fail(p, p->line, PS_E_CONFIG, "audit_log must be an absolute path, not '%s'",
			    value);
	p->cfg->audit_log = strdup(value);
	return p->cfg->audit_log ? 0 : fail_nomem(p);
}

int config_parse_rate(const char *text, double *ret)
{
	static const struct { char unit; double seconds; } units[] = {
		{ 's', 1 }, { 'm', 60 }, { 'h', 3600 },
	};
	const char *slash = strchr(text, '/');
	char digits[16];
	unsigned long long n;
	size_t len = slash ? (size_t)(slash - text) : 0;

	if (!slash || len == 0 || len >= sizeof(digits) || strlen(slash) != 2)
		return PS_E_CONFIG;
	memcpy(digits, text, len);
	digits[len] = '\0';
	if (parse_uint(digits, 1, 1000000, &n) < 0)
		return PS_E_CONFIG;
	for (size_t i = 0; i < ELEMENTSOF(units); i++)
		if (slash[1] == units[i].unit) {
			*ret = (double)n / units[i].seconds;
			return 0;
		}
	return PS_E_CONFIG;
}

static int parse_rate_setting(struct parser *p, const char *value, double *ret)
{
	if (config_parse_rate(value, ret) < 0)
		return fail(p, p->line, PS_E_CONFIG,
			    "rate must be N/s, N/m or N/h (N a whole number from 1 to 1000000), "
			    "not '%s'", value);
	return 0;
}

static int set_daemon_rate(struct parser *p, const char *value)
{
	return parse_rate_setting(p, value, &p->cfg->rate);
}

static int set_daemon_burst(struct parser *p, const char *value)
{
	return set_number(p, "burst", value, 1, CONFIG_BURST_MAX, &p->cfg->burst);
}

static int set_auth_failures(struct parser *p, const char *value)
{
	return set_number(p, "auth_failures", value, 1, 1000000, &p->cfg->auth_failures);
}

static int set_client_rate(struct parser *p, const char *value)
{
	return parse_rate_setting(p, value, &client_current(p)->rate);
}

static int set_client_burst(struct parser *p, const char *value)
{
	return set_number(p, "burst", value, 1, CONFIG_BURST_MAX, &client_current(p)->burst);
}

static int set_uid(struct parser *p, const char *value)
{
	struct config_client *c = client_current(p);
	unsigned uid = 0;

	if (!value[0] || lookup_id(value, false, &uid) < 0)
		return fail(p, p->line, PS_E_CONFIG, "client '%s': uid: no such user '%s'", c->name,
			    value);
	c->uid = (uid_t)uid;
	c->has_uid = true;
	return 0;
}

static int set_gid(struct parser *p, const char *value)
{
	struct config_client *c = client_current(p);
	unsigned gid = 0;

	if (!value[0] || lookup_id(value, true, &gid) < 0)
		return fail(p, p->line, PS_E_CONFIG, "client '%s': gid: no such group '%s'",
			    c->name, value);
	c->gid = (gid_t)gid;
	c->has_gid = true;
	return 0;
}

static const struct setting {
	enum section section;
	const char *name;
	bool required;
	int (*set)(struct parser *p, const char *value);
} settings[] = {
	{ SECTION_DAEMON, "listen", false, set_listen },
	{ SECTION_DAEMON, "workers", false, set_workers },
	{ SECTION_DAEMON, "validity", false, set_validity },
	{ SECTION_DAEMON, "socket_mode", false, set_socket_mode },
	{ SECTION_DAEMON, "socket_group", false, set_socket_group },
	{ SECTION_DAEMON, "audit_log", false, set_audit_log },
	{ SECTION_DAEMON, "rate", false, set_daemon_rate },
	{ SECTION_DAEMON, "burst", false, set_daemon_burst },
	{ SECTION_DAEMON, "auth_failures", false, set_auth_failures },
	{ SECTION_DAEMON, "max_connections", false, set_max_connections },
	{ SECTION_DAEMON, "connection_timeout", false, set_connection_timeout },
	{ SECTION_DAEMON, "max_header_size", false, set_max_header_size },
	{ SECTION_DAEMON, "request_timeout", false, set_request_timeout },
	{ SECTION_KEY, "uri", true, set_uri },
	{ SECTION_KEY, "certificate", false, set_certificate },
	{ SECTION_CLIENT, "token_sha256", false, set_token_sha256 },
	{ SECTION_CLIENT, "uid", false, set_uid },
	{ SECTION_CLIENT, "gid", false, set_gid },
	{ SECTION_CLIENT, "keys", true, set_keys },
	{ SECTION_CLIENT, "rate", false, set_client_rate },
	{ SECTION_CLIENT, "burst", false, set_client_burst },
};

/* The inih handler: one "name = value" line of the current section. */
static int handle_setting(void *user, const char *section, const char *name, const char *value)
{
	struct parser *p = user;
	size_t i;

	(void)section; /* cut at 49 bytes by inih: the reader's own record is used */
	if (p->r)
		return 0;
	if (p->section == SECTION_NONE)
		return fail(p, p->line, PS_E_CONFIG,
			    "'%s' outside any section ([daemon], [key NAME] or [client NAME])",
			    name), 0;
	for (i = 0; i < ELEMENTSOF(settings); i++)
		if (settings[i].section == p->section && strcmp(settings[i].name, name) == 0)
			break;
	if (i == ELEMENTSOF(settings))
		return fail(p, p->line, PS_E_CONFIG, "unknown key '%s' in [%s]", name,
			    p->section_text), 0;
	if (p->seen & (1u << i))
		return fail(p, p->line, PS_E_CONFIG, "duplicate key '%s' in [%s]", name,
			    p->section_text), 0;
	p->seen |= 1u << i;
	return settings[i].set(p, value) == 0;
}

/* Checks that the section just finished has its required settings. */
static int section_end(struct parser *p)
{
	for (size_t i = 0; i < ELEMENTSOF(settings); i++)
		if (settings[i].section == p->section && settings[i].required &&
		    !(p->seen & (1u << i)))
			return fail(p, p->section_line, PS_E_CONFIG, "missing %s in [%s]",
				    settings[i].name, p->section_text);
	if (p->section == SECTION_CLIENT && !client_current(p)->has_token &&
	    !client_current(p)->has_uid && !client_current(p)->has_gid)
		return fail(p, p->section_line, PS_E_CONFIG,
			    "[%s] needs token_sha256, uid or gid: how else would a caller be "
			    "recognised?", p->section_text);
	return 0;
}

static int key_add(struct parser *p, char *name)
{
	struct config *c = p->cfg;
	const struct config_key *old = config_find_key(c, name);
	struct config_key *keys;

	if (old)
		return fail(p, p->line, PS_E_CONFIG, "duplicate section [key %s] (first at line %u)",
			    name, old->line);
	keys = reallocarray(c->keys, c->n_keys + 1, sizeof(*keys));
	if (!keys)
		return fail_nomem(p);
	c->keys = keys;
	keys[c->n_keys] = (struct config_key){ .name = name, .line = p->line };
	c->n_keys++;
	return 0;
}

static int client_add(struct parser *p, char *name)
{
	struct config *c = p->cfg;
	const struct config_client *old = find_client(c, name);
	struct config_client *clients;
	unsigned *lines;

	if (old)
		return fail(p, p->line, PS_E_CONFIG,
			    "duplicate section [client %s] (first at line %u)", name, old->line);
	lines = reallocarray(p->keys_lines, c->n_clients + 1, sizeof(*lines));
	if (!lines)
		return fail_nomem(p);
	p->keys_lines = lines;
	clients = reallocarray(c->clients, c->n_clients + 1, sizeof(*clients));
	if (!clients)
		return fail_nomem(p);
	c->clients = clients;
	clients[c->n_clients] = (struct config_client){ .name = name, .line = p->line };
	lines[c->n_clients] = 0;
	c->n_clients++;
	return 0;
}

/* Starts [key NAME] or [client NAME]; takes name on success. */
static int named_section_begin(struct parser *p, enum section kind, const char *type,
			       const char *name, size_t len)
{
	_cleanup_free_ char *copy = NULL;
	int r;

	if (len == 0)
		return fail(p, p->line, PS_E_CONFIG, "section [%s] needs a name: [%s NAME]", type,
			    type);
	copy = strndup(name, len);
	if (!copy)
		return fail_nomem(p);
	if (!config_name_valid(copy))
		return fail(p, p->line, PS_E_CONFIG,
			    "invalid %s name '%s': use 1 to %d of A-Z, a-z, 0-9, '.', '_', '-'",
			    type, copy, CONFIG_NAME_MAX);
	r = kind == SECTION_KEY ? key_add(p, copy) : client_add(p, copy);
	if (r < 0)
		return r; /* NOLINT(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	snprintf(p->section_text, sizeof(p->section_text), "%s %s", type, copy);
	copy = NULL;
	p->section = kind;
	return 0;
}

static int daemon_section_begin(struct parser *p, size_t name_len)
{
	if (name_len > 0)
		return fail(p, p->line, PS_E_CONFIG, "section [daemon] takes no name");
	if (p->daemon_line)
		return fail(p, p->line, PS_E_CONFIG, "duplicate section [daemon] (first at line %u)",
			    p->daemon_line);
	p->daemon_line = p->line;
	p->section = SECTION_DAEMON;
	snprintf(p->section_text, sizeof(p->section_text), "daemon");
	return 0;
}

/* Finds TYPE and NAME in "[ TYPE NAME ] ; comment". */
static int header_split(struct parser *p, const char *text, const char **type, size_t *type_len,
			const char **name, size_t *name_len)
{
	const char *close = strchr(text, ']');
	const char *s = text + 1, *rest;

	if (!close)
		return fail(p, p->line, PS_E_CONFIG, "section header without ']'");
	for (rest = close + 1; is_space(*rest); rest++)
		;
	if (*rest && *rest != ';' && *rest != '#')
		return fail(p, p->line, PS_E_CONFIG, "unexpected text after ']'");
	while (s < close && is_space(*s))
		s++;
	*type = s;
	while (s < close && !is_space(*s))
		s++;
	*type_len = (size_t)(s - *type);
	while (s < close && is_space(*s))
		s++;
	*name = s;
	s = close;
	while (s > *name && is_space(s[-1]))
		s--;
	*name_len = (size_t)(s - *name);
	return 0;
}

/* A "[...]" line: ends the current section and starts the next. */
static int section_begin(struct parser *p, const char *text)
{
	const char *type = NULL, *name = NULL;
	size_t type_len = 0, name_len = 0;
	int r;

	r = section_end(p);
	if (r < 0)
		return r;
	r = header_split(p, text, &type, &type_len, &name, &name_len);
	if (r < 0)
		return r;
	p->section = SECTION_NONE;
	p->section_line = p->line;
	p->seen = 0;
	if (type_len == 6 && memcmp(type, "daemon", 6) == 0)
		return daemon_section_begin(p, name_len);
	if (type_len == 3 && memcmp(type, "key", 3) == 0)
		return named_section_begin(p, SECTION_KEY, "key", name, name_len);
	if (type_len == 6 && memcmp(type, "client", 6) == 0)
		return named_section_begin(p, SECTION_CLIENT, "client", name, name_len);
	return fail(p, p->line, PS_E_CONFIG,
		    "unknown section [%.*s] (expected [daemon], [key NAME] or [client NAME])",
		    (int)(strchr(text, ']') - text - 1), text + 1);
}

/* inih's reader: hands over one whole line at a time, so that the line
 * count here is the line inih works on.  Lines inih would split (longer
 * than its buffer) and NUL bytes are refused rather than misread. */
static char *read_line(char *str, int num, void *stream)
{
	struct parser *p = stream;
	const char *line, *nl;
	size_t len;

	if (p->r || p->pos >= p->len)
		return NULL;
	line = p->buf + p->pos;
	nl = memchr(line, '\n', p->len - p->pos);
	len = nl ? (size_t)(nl - line) : p->len - p->pos;
	p->pos += len + (nl ? 1 : 0);
	p->line++;
	/* cppcheck-suppress knownConditionTrueFalse ; an empty line has len 0 */
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len))
		return fail(p, p->line, PS_E_CONFIG, "NUL byte in the line"), NULL;
	if (num < 2 || len > (size_t)num - 1)
		return fail(p, p->line, PS_E_CONFIG, "line too long (at most %d characters)",
			    num - 1), NULL;
	if (p->line == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
		line += 3; /* a UTF-8 byte order mark */
		len -= 3;
	}
	/* Leading blanks dropped: inih would take an indented line for the
	 * continuation of the previous value. */
	while (len > 0 && is_space(*line)) {
		line++;
		len--;
	}
	memcpy(str, line, len);
	str[len] = '\0';
	if (str[0] == '[' && section_begin(p, str) < 0)
		return NULL;
	return str;
}

static int file_read(const char *path, char **ret_buf, size_t *ret_len, char *err)
{
	_cleanup_close_ int fd = -1;
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	size_t len = 0;

	/* O_NONBLOCK: a FIFO must not hang start-up before fstat refuses it. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, CONFIG_ERROR_MAX, "%s:0: cannot open: %s", path, strerror(errno));
		return PS_E_CONFIG;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, CONFIG_ERROR_MAX, "%s:0: not a regular file", path);
		return PS_E_CONFIG;
	}
	buf = malloc(CONFIG_FILE_MAX + 1);
	if (!buf) {
		snprintf(err, CONFIG_ERROR_MAX, "%s:0: out of memory", path);
		return PS_E_NOMEM;
	}
	while (len <= CONFIG_FILE_MAX) {
		ssize_t n = read(fd, buf + len, CONFIG_FILE_MAX + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(err, CONFIG_ERROR_MAX, "%s:0: cannot read: %s", path,
				 strerror(errno));
			return PS_E_CONFIG;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > CONFIG_FILE_MAX) {
		snprintf(err, CONFIG_ERROR_MAX, "%s:0: larger than 1 MiB", path);
		return PS_E_CONFIG;
	}
	*ret_buf = TAKE_PTR(buf);
	*ret_len = len;
	return 0;
}

/* Every client's keys name a [key] section: known only once all are read. */
static int clients_resolve(struct parser *p)
{
	const struct config *c = p->cfg;

	for (size_t i = 0; i < c->n_clients; i++)
		for (size_t j = 0; j < c->clients[i].n_keys; j++)
			if (!config_find_key(c, c->clients[i].keys[j]))
				return fail(p, p->keys_lines[i], PS_E_CONFIG,
					    "client '%s': unknown key '%s' (there is no "
					    "[key %s] section)", c->clients[i].name,
					    c->clients[i].keys[j], c->clients[i].keys[j]);
	return 0;
}

static int defaults_apply(struct parser *p)
{
	struct config *c = p->cfg;
	const char *why = NULL;

	if (c->n_listen == 0) {
		if (config_parse_listen(CONFIG_DEFAULT_LISTEN, &c->listen[0], &why) < 0)
			return fail(p, 0, PS_E_INTERNAL, "default listen address: %s", why);
		c->n_listen = 1;
	}
	if (c->workers == 0) {
		/* Twice the CPUs: while a worker hands its certificate back and
		 * waits for the next request, another keeps the CPU signing, and
		 * more certificates in flight share each audit commit. */
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		c->workers = cpus < 1 ? 2 : cpus > CONFIG_WORKERS_MAX / 2 ? CONFIG_WORKERS_MAX
									 : 2 * (unsigned)cpus;
	}
	if (c->validity == 0)
		c->validity = CONFIG_VALIDITY_DEFAULT;
	if (c->socket_mode == 0)
		c->socket_mode = CONFIG_SOCKET_MODE_DEFAULT;
	if (c->rate == 0)
		c->rate = CONFIG_RATE_DEFAULT;
	if (c->burst == 0)
		c->burst = CONFIG_BURST_DEFAULT;
	if (c->auth_failures == 0)
		c->auth_failures = CONFIG_AUTH_FAILURES_DEFAULT;
	if (c->max_connections == 0)
		c->max_connections = CONFIG_CONNECTIONS_DEFAULT;
	if (c->connection_timeout == 0)
		c->connection_timeout = CONFIG_CONN_TIMEOUT_DEFAULT;
	if (c->max_header_size == 0)
		c->max_header_size = CONFIG_HEADER_SIZE_DEFAULT;
	if (c->request_timeout == 0)
		c->request_timeout = CONFIG_REQUEST_TIMEOUT_DEFAULT;
	for (size_t i = 0; i < c->n_clients; i++) {
		if (c->clients[i].rate == 0)
			c->clients[i].rate = c->rate;
		if (c->clients[i].burst == 0)
			c->clients[i].burst = c->burst;
	}
	return 0;
}

/* Runs inih over the file's text and the checks that need all of it. */
static int parse(struct parser *p)
{
	int r = ini_parse_stream(read_line, p, handle_setting, p);

	/* inih's own complaint (a line that is neither comment, section nor
	 * setting) counts if it came before ours: the reader stops at ours. */
	if (r > 0 && (!p->r || (unsigned)r < p->err_line)) {
		p->r = 0;
		return fail(p, (unsigned)r, PS_E_CONFIG,
			    "expected 'name = value', '[section]' or a comment");
	}
	if (r < 0)
		return fail(p, 0, PS_E_NOMEM, "out of memory");
	if (p->r)
		return p->r;
	if (section_end(p) < 0)
		return p->r;
	if (p->cfg->n_keys == 0)
		return fail(p, 0, PS_E_CONFIG,
			    "no [key NAME] section: popsignd needs at least one key");
	if (clients_resolve(p) < 0)
		return p->r;
	return defaults_apply(p);
}

int config_load(const char *path, struct config **ret, char err[CONFIG_ERROR_MAX])
{
	struct parser p = { .path = path, .err = err };
	_cleanup_free_ char *buf = NULL;
	int r;

	err[0] = '\0';
	r = file_read(path, &buf, &p.len, err);
	if (r < 0)
		return r;
	p.buf = buf;
	p.cfg = calloc(1, sizeof(*p.cfg));
	if (!p.cfg || !(p.cfg->path = strdup(path))) {
		r = fail(&p, 0, PS_E_NOMEM, "out of memory");
		goto out;
	}
	r = parse(&p);
	if (r < 0)
		goto out;
	*ret = TAKE_PTR(p.cfg);
out:
	config_free(p.cfg);
	free(p.keys_lines);
	return r;
}

void config_free(struct config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_keys; i++) {
		free(c->keys[i].name);
		free(c->keys[i].uri);
		free(c->keys[i].certificate);
	}
	for (size_t i = 0; i < c->n_clients; i++) {
		for (size_t j = 0; j < c->clients[i].n_keys; j++)
			free(c->clients[i].keys[j]);
		free(c->clients[i].keys);
		free(c->clients[i].name);
	}
	free(c->keys);
	free(c->clients);
	free(c->audit_log);
	free(c->path);
	free(c);
}
