/* mdb_get_batch (mdb_batch.c): part of mlserve, not of LMDB. */
#ifndef MLSERVE_MDB_BATCH_H
#define MLSERVE_MDB_BATCH_H

#include <stddef.h>

#include "lmdb.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Looks up n keys in database dbi, as n calls of mdb_get would, with the B-tree descents of up
 * to 16 keys interleaved and their cache misses overlapped (see mdb_batch.c).
 * @param[in] keys the n keys (any order; duplicates allowed).
 * @param[out] data data[j] is key j's value when rcs[j] is 0 (valid as mdb_get's are: until
 *   the transaction ends or, in a write transaction, the next change); else untouched.
 * @param[out] rcs rcs[j] is mdb_get's answer for key j: 0, MDB_NOTFOUND or MDB_BAD_VALSIZE
 *   (an empty key).
 * @return 0 when every rcs[j] was set, else the error that stopped the batch (EINVAL,
 *   MDB_BAD_TXN, MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...), as mdb_get returns it.
 */
int mdb_get_batch(MDB_txn *txn, MDB_dbi dbi, size_t n, MDB_val *keys, MDB_val *data, int *rcs);

#ifdef __cplusplus
}
#endif

#endif
