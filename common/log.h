/* Logging to stderr.  Under systemd (JOURNAL_STREAM set) each line carries a
 * "<N>" priority prefix that journald understands; otherwise it reads
 * "ident: level: message".  Helpers do not log: the code that decides what to
 * do logs once, with context. */
#ifndef POPSIGN_LOG_H
#define POPSIGN_LOG_H

#include <stdbool.h>

enum log_level { LOG_LEVEL_ERROR = 3, LOG_LEVEL_WARNING = 4, LOG_LEVEL_INFO = 6, LOG_LEVEL_DEBUG = 7 };

/* Sets the program name shown in front of every line (not copied). */
void log_init(const char *ident);

/* Messages above level are dropped.  Default: LOG_LEVEL_INFO. */
void log_set_level(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
