/*
 * server_internal.h — test hooks of server.c (tests/collector/test_server.c links the module
 * instead of #including server.c). The contract is server.h; nothing but the test calls these.
 */
#ifndef SLUICE_SERVER_INTERNAL_H
#define SLUICE_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "server.h"

/* The open connections, all loops (the gauge sluice_connections reads the same counter). */
unsigned server__n_conns(server_t *s);
/* Whether finished requests wait in loop `loop`'s mailbox (pushed, not yet answered). loop <
 * the server's loop count. */
bool server__mailbox_pending(server_t *s, uint32_t loop);

#endif
