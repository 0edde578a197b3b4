#include "uri.h"
/* STUB: to be written. */
