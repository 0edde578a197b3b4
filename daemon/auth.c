#include "auth.h"
/* STUB: to be written. */
