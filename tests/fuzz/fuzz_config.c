/* libFuzzer target: popsignd's configuration file (config_load).
 *
 * config_load() takes a path, so each input is written to one memfd that
 * is read back through /proc/self/fd/N.  Checks config.h's promises: a
 * refusal is "FILE:LINE: message", an accepted config holds only what the
 * parser is documented to let through. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "fuzz.h"
#include "uri.h"

static char path[64];
static int memfd = -1;

static void setup(void)
{
	memfd = memfd_create("popsignd.conf", MFD_CLOEXEC);
	if (memfd < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
}

static void put(const uint8_t *data, size_t size)
{
	if (ftruncate(memfd, 0) < 0)
		abort();
	for (size_t done = 0; done < size;) {
		ssize_t n = pwrite(memfd, data + done, size - done, (off_t)done);

		if (n <= 0)
			abort();
		done += (size_t)n;
	}
}

static void check_key(const struct config_key *k)
{
	struct key_uri *u = NULL;
	const char *why = NULL;

	if (!config_name_valid(k->name) || !k->uri)
		abort();
	/* "already checked by key_uri_parse()" */
	if (key_uri_parse(k->uri, &u, &why) != 0)
		abort();
	key_uri_free(u);
}

static void check_accepted(const struct config *c)
{
	if (c->n_keys < 1 || c->n_listen < 1 || c->n_listen > CONFIG_LISTEN_MAX)
		abort();
	if (c->workers < 1 || c->workers > CONFIG_WORKERS_MAX)
		abort();
	if (c->validity < 1 || c->validity > CONFIG_VALIDITY_MAX)
		abort();
	for (size_t i = 0; i < c->n_keys; i++)
		check_key(&c->keys[i]);
	for (size_t i = 0; i < c->n_clients; i++) {
		if (!config_name_valid(c->clients[i].name))
			abort();
		for (size_t j = 0; j < c->clients[i].n_keys; j++)
			if (!config_find_key(c, c->clients[i].keys[j]))
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[CONFIG_ERROR_MAX];
	struct config *c = NULL;
	size_t n;
	int r;

	if (memfd < 0)
		setup();
	n = strlen(path);
	put(data, size);
	memset(err, 'x', sizeof(err));
	r = config_load(path, &c, err);
	if (!memchr(err, '\0', sizeof(err)))
		abort();
	if (r == 0) {
		if (!c)
			abort();
		check_accepted(c);
		config_free(c);
	} else if ((r != PS_E_CONFIG && r != PS_E_NOMEM) || c || strncmp(err, path, n) != 0 ||
		   err[n] != ':') {
		abort();
	}
	return 0;
}
