#include "config.h"
/* STUB: to be written. */
