/*
 * spool_internal.h — test hooks of spool.c (tests/collector/test_spool.c links the module
 * instead of #including spool.c). The contract is spool.h; nothing but the test calls these.
 */
#ifndef SLUICE_SPOOL_INTERNAL_H
#define SLUICE_SPOOL_INTERNAL_H

#include <stdint.h>

/* Writes the cursor file of the spool directory `dir` (segment seq, byte offset off) the way a
 * running spool does after a delivered record (atomic replace; a failure is logged). */
void spool__cursor_save(const char *dir, uint64_t seq, uint64_t off);

#endif
