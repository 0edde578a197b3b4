#include "azure_error.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "output.h"
#include "util.h"

void azure_error_set(struct azure_error *err, enum azure_failure failure, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	*err = (struct azure_error){.failure = failure};
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

void azure_error_prefix(struct azure_error *err, const char *fmt, ...)
{
	char prefix[512], *old;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	old = strdup(err->message);
	if (!old)
		return;
	snprintf(err->message, sizeof(err->message), "%s: %s", prefix, old);
	free(old);
}

void azure_error_copy(char *buf, size_t n, const char *text)
{
	size_t len = strlen(text);

	if (len >= n) {
		len = n - 1;
		/* Back off continuation bytes, then the lead byte they follow. */
		while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
			len--;
	}
	memcpy(buf, text, len);
	buf[len] = '\0';
}

/* Prints the message one line at a time, each made printable. */
static void print_lines(FILE *f, const char *message)
{
	_cleanup_free_ char *copy = strdup(message);
	char *line, *next;

	if (!copy) {
		fputs("(out of memory)", f);
		return;
	}
	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ (copy, shown) */
	for (line = copy; line; line = next) {
		_cleanup_free_ char *shown = NULL;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (line[0] && line[strlen(line) - 1] == '\r')
			line[strlen(line) - 1] = '\0';
		shown = output_printable(line);
		fputs(shown ? shown : "(out of memory)", f);
		if (next && *next)
			fputs("\n  ", f);
	}
}

void azure_error_print(FILE *f, const struct azure_error *e)
{
	_cleanup_free_ char *code = output_printable(e->code);

	fputs("popsign: ", f);
	print_lines(f, e->message);
	if (code && code[0] && e->status)
		fprintf(f, " (%s, HTTP %ld)", code, e->status);
	else if (code && code[0])
		fprintf(f, " (%s)", code);
	else if (e->status)
		fprintf(f, " (HTTP %ld)", e->status);
	if (e->tries > 1)
		fprintf(f, ", after %u tries", e->tries);
	fputc('\n', f);
	fflush(f);
}
