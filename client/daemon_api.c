#include "daemon_api.h"
