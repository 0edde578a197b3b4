#include "cacert.h"
/* STUB: to be written. */
