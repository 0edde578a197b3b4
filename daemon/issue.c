#include "issue.h"
/* STUB: to be written. */
