#include "output.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "util.h"

/* Length of the valid UTF-8 sequence at s (1 to 4), or 0 if it is not one.
 * Overlong forms, surrogates and values past U+10FFFF are not valid. */
static size_t utf8_sequence(const unsigned char *s, uint32_t *ret_cp)
{
	static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
	size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2;
	uint32_t cp;

	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	cp = s[0] & (0x3f >> (len - 1));
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0; /* the NUL terminator stops here too */
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*ret_cp = cp;
	return len;
}

char *output_printable(const char *text)
{
	const unsigned char *s = (const unsigned char *)text;
	char *out = malloc(strlen(text) + 1), *o = out;
	uint32_t cp = 0;
	size_t len;

	if (!out)
		return NULL;
	while (*s) {
		if (*s < 0x80) {
			*o++ = (char)(*s < 0x20 || *s == 0x7f ? '?' : *s);
			s++;
			continue;
		}
		len = utf8_sequence(s, &cp);
		if (len == 0 || (cp >= 0x80 && cp <= 0x9f)) {
			*o++ = '?';
			s += len ? len : 1;
			continue;
		}
		memcpy(o, s, len);
		o += len;
		s += len;
	}
	*o = '\0';
	return out;
}

void output_errorf(const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* One call per line: no interleaving with other output on stderr. */
	fprintf(stderr, "popsign: %s\n", line);
}

void output_daemon_error(FILE *f, const struct daemon_error *e)
{
	_cleanup_free_ char *message = output_printable(e->message);
	_cleanup_free_ char *code = output_printable(e->code);
	const char *m = message ? message : "(out of memory)";

	if (e->failure == DAEMON_FAILURE_STATUS && code && code[0])
		fprintf(f, "popsign: %s (%s, HTTP %ld)\n", m, code, e->status);
	else if (e->failure == DAEMON_FAILURE_STATUS)
		fprintf(f, "popsign: %s (HTTP %ld)\n", m, e->status);
	else
		fprintf(f, "popsign: %s\n", m);
}

#define KEYS_COLUMNS 5

/* Characters, not bytes: cells are valid UTF-8 once made printable. */
static size_t text_width(const char *s)
{
	size_t n = 0;

	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): every cell is set by now */
	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

static void cells_free(char **cells, size_t n)
{
	if (!cells)
		return;
	for (size_t i = 0; i < n; i++)
		free(cells[i]);
	free(cells);
}

static void table_print(FILE *f, char **cells, size_t rows, size_t cols)
{
	size_t *width = calloc(cols, sizeof(*width));

	for (size_t i = 0; width && i < rows * cols; i++) {
		size_t w = text_width(cells[i]);

		if (w > width[i % cols])
			width[i % cols] = w;
	}
	for (size_t row = 0; width && row < rows; row++)
		for (size_t c = 0; c < cols; c++) {
			const char *cell = cells[row * cols + c];

			fputs(cell, f);
			if (c + 1 == cols)
				fputc('\n', f);
			else
				fprintf(f, "%*s", (int)(width[c] - text_width(cell) + 2), "");
		}
	free(width);
}

int output_table(FILE *f, const char *const *text, size_t rows, size_t cols)
{
	char **cells = calloc(rows * cols, sizeof(*cells));
	int r = cells ? 0 : PS_E_NOMEM;

	for (size_t i = 0; r == 0 && i < rows * cols; i++)
		if (!(cells[i] = output_printable(text[i])))
			r = PS_E_NOMEM;
	if (r == 0) {
		table_print(f, cells, rows, cols);
		r = fflush(f) == 0 && !ferror(f) ? 0 : PS_E_IO;
	}
	cells_free(cells, rows * cols);
	return r;
}

int output_keys_table(FILE *f, json_t *keys)
{
	static const char *const header[KEYS_COLUMNS] = {"NAME", "ALGORITHM", "SUBJECT",
							  "SHA1-THUMBPRINT", "EXPIRES"};
	struct daemon_key_info k = {0};
	const char **text;
	json_t *entry;
	size_t i, rows;
	int r = 0;

	if (!json_is_array(keys))
		return PS_E_INVALID_REQUEST;
	rows = json_array_size(keys) + 1;
	text = calloc(rows * KEYS_COLUMNS, sizeof(*text));
	if (!text)
		return PS_E_NOMEM;
	memcpy(text, header, sizeof(header));
	json_array_foreach(keys, i, entry) {
		r = daemon_key_info_parse(entry, &k);
		if (r < 0)
			break;
		memcpy(text + (i + 1) * KEYS_COLUMNS,
		       (const char *[KEYS_COLUMNS]){k.name, k.algorithm, k.subject, k.sha1_thumbprint,
						    k.not_after},
		       sizeof(header));
	}
	if (r == 0)
		r = output_table(f, text, rows, KEYS_COLUMNS);
	free(text);
	return r;
}

int output_json_text(const json_t *doc, char **ret)
{
	_cleanup_free_ char *text = json_dumps(doc, JSON_INDENT(2));
	char *out;

	if (!text || asprintf(&out, "%s\n", text) < 0)
		return PS_E_NOMEM;
	*ret = out;
	return 0;
}

int output_write_stdout(const void *data, size_t len)
{
	if (len > 0 && fwrite(data, 1, len, stdout) != len)
		return PS_E_IO;
	if (fflush(stdout) != 0)
		return PS_E_IO;
	return 0;
}

mode_t output_default_mode(void)
{
	mode_t mask = umask(0);

	umask(mask);
	return 0666 & ~mask;
}

static int write_all(int fd, const unsigned char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return PS_E_IO;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* "DIR/.BASE.XXXXXX" for mkstemp() beside path; refuses a path that names
 * no file (empty, ending in '/', "." or ".."). */
static int temp_template(const char *path, char **ret)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	int dirlen = slash ? (int)(slash - path) : 1;

	if (!base[0] || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		errno = EISDIR;
		return PS_E_IO;
	}
	if (slash == path)
		dirlen = 0; /* "/BASE": the directory is the root */
	if (asprintf(ret, "%.*s/.%s.XXXXXX", dirlen, slash ? path : ".", base) < 0)
		return PS_E_NOMEM;
	return 0;
}

/* Puts the finished temporary file at path, replacing or not. */
static int install(const char *tmp, const char *path, unsigned flags)
{
	if (flags & OUTPUT_REPLACE)
		return rename(tmp, path) == 0 ? 0 : PS_E_IO;
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return PS_E_IO;
	/* File systems without RENAME_NOREPLACE: link() refuses to replace too. */
	if (link(tmp, path) < 0)
		return PS_E_IO;
	(void)unlink(tmp);
	return 0;
}

int output_write_file(const char *path, const void *data, size_t len, mode_t mode,
		      unsigned flags)
{
	_cleanup_free_ char *tmp = NULL;
	int fd, r;

	r = temp_template(path, &tmp);
	if (r < 0)
		return r;
	/* mkostemp creates with O_EXCL and mode 0600: nobody else can open it
	 * before fchmod sets the mode asked for. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return PS_E_IO;
	r = fchmod(fd, mode) == 0 ? 0 : PS_E_IO;
	if (r == 0)
		r = write_all(fd, data, len);
	if (r == 0 && fsync(fd) < 0)
		r = PS_E_IO;
	if (close(fd) < 0 && r == 0)
		r = PS_E_IO;
	if (r == 0)
		r = install(tmp, path, flags);
	if (r < 0) {
		int saved = errno;

		(void)unlink(tmp);
		errno = saved;
	}
	return r;
}
