#include "token.h"
/* STUB: to be written. */
