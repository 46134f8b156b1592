/* mdb_get_batch: many point lookups in one read transaction, their B-tree descents interleaved.
 *
 * Part of mlserve, not of LMDB. This file is the translation unit of the vendored library: it
 * includes mdb.c unmodified (so the new function can use LMDB's page layout and its static
 * helpers) and adds one function. See README.md.
 *
 * Why: a point lookup in a store much larger than the CPU caches spends most of its time
 * waiting for memory. Each step of the binary search in a leaf page touches a different cache
 * line, so one mdb_get costs ~5-7 dependent DRAM misses (~1.2 us on the machines we measured).
 * A batch does not have to wait for them one by one: the keys of a group advance in rounds, and
 * each round first uses what the previous round prefetched (one node compare, or a page entry)
 * and then prefetches what the key needs next. The misses of a group overlap, so a batch costs
 * about one miss per search step instead of one per key and step (group prefetching, as in
 * Chen et al., "Improving Hash Join Performance through Prefetching", ICDE 2004).
 *
 * The result is exactly mdb_get's for every key: the same search (mdb_node_search's binary
 * search and mdb_page_search_root's child choice), the same page checks (mdb_page_get) and the
 * same value read (mdb_node_read, overflow pages included).
 */
#include "mdb.c"

#include "mdb_batch.h"

/* Keys in flight at once: enough to cover the memory latency with independent misses, few
 * enough that the lines they prefetch stay in L1 until their round uses them. */
#ifndef BATCH_GROUP
#define BATCH_GROUP 16
#endif

enum { BS_ENTER, BS_SEARCH, BS_DONE };

typedef struct {
	MDB_page *mp;	/* the page being searched (BS_SEARCH) */
	pgno_t pgno;	/* the page to enter next (BS_ENTER) */
	int low, high, i;	/* binary search state, as in mdb_node_search */
	int cmp;	/* result of the last compare */
	int state;
	unsigned depth;	/* pages entered so far */
} batch_state;

static void
batch_prefetch_page(MDB_env *env, pgno_t pgno)
{
	/* The header and the first node offsets: what BS_ENTER reads. 4 lines hold the offsets of
	 * up to ~120 nodes, more than a leaf of small records has. */
	const char *p = env->me_map + (size_t)env->me_psize * pgno;
	__builtin_prefetch(p);
	__builtin_prefetch(p + 64);
	__builtin_prefetch(p + 128);
	__builtin_prefetch(p + 192);
}

static void
batch_prefetch_node(MDB_node *node)
{
	/* The node header and the start of its key (a key may cross into the next line). */
	__builtin_prefetch(node);
	__builtin_prefetch((char *)node + NODESIZE + 15);
}

/* Ends a key's search with its mdb_get answer. */
static void
batch_finish(batch_state *s, int rc, int *rcs)
{
	s->state = BS_DONE;
	*rcs = rc;
}

/* One step of key s: enter a page or do one compare. Returns 0, or an error that ends the
 * whole batch (a corrupt page: the transaction is then in error, as mdb_get leaves it). */
static int
batch_step(MDB_cursor *mc, batch_state *s, MDB_val *key, MDB_val *data, int *rcs)
{
	MDB_env *env = mc->mc_txn->mt_env;
	MDB_page *mp;
	MDB_node *node;
	MDB_val nodekey;
	int rc;

	if (s->state == BS_ENTER) {
		if ((rc = mdb_page_get(mc, s->pgno, &mp, NULL)) != 0)
			return rc;
		if (++s->depth > CURSOR_STACK || !(IS_BRANCH(mp) || IS_LEAF(mp)) || IS_LEAF2(mp)) {
			mc->mc_txn->mt_flags |= MDB_TXN_ERROR;
			return MDB_CORRUPTED;
		}
		if (IS_BRANCH(mp) && NUMKEYS(mp) < 2) {
			/* mdb_page_search_root asserts this; a crafted file must not crash us */
			mc->mc_txn->mt_flags |= MDB_TXN_ERROR;
			return MDB_CORRUPTED;
		}
		s->mp = mp;
		s->low = IS_LEAF(mp) ? 0 : 1;
		s->high = (int)NUMKEYS(mp) - 1;
		s->cmp = 0;
		s->i = 0;
		s->state = BS_SEARCH;
		if (s->low <= s->high) {
			s->i = (s->low + s->high) >> 1;
			batch_prefetch_node(NODEPTR(mp, s->i));
			return 0;
		}
		/* an empty leaf (only a root can be): fall through to the end of the search */
	} else {
		mp = s->mp;
		node = NODEPTR(mp, s->i);
		nodekey.mv_size = NODEKSZ(node);
		nodekey.mv_data = NODEKEY(node);
		s->cmp = mc->mc_dbx->md_cmp(key, &nodekey);
		if (s->cmp != 0) {
			if (s->cmp > 0)
				s->low = s->i + 1;
			else
				s->high = s->i - 1;
			if (s->low <= s->high) {
				s->i = (s->low + s->high) >> 1;
				batch_prefetch_node(NODEPTR(mp, s->i));
				return 0;
			}
		}
	}

	/* The search of page mp is over: s->i is the last index probed, s->cmp its compare. */
	mp = s->mp;
	if (IS_BRANCH(mp)) {
		/* mdb_node_search's "smallest entry >= key", then mdb_page_search_root's child */
		unsigned i = (unsigned)s->i;
		if (s->cmp > 0)
			i++;
		if (i >= NUMKEYS(mp))
			i = NUMKEYS(mp) - 1;
		else if (s->cmp != 0)
			i--;	/* i > 0: branch searches start at index 1 */
		s->pgno = NODEPGNO(NODEPTR(mp, i));
		if (s->pgno >= mc->mc_txn->mt_next_pgno) {
			/* mdb_page_get's answer, given before touching a page past the map's end */
			mc->mc_txn->mt_flags |= MDB_TXN_ERROR;
			return MDB_PAGE_NOTFOUND;
		}
		batch_prefetch_page(env, s->pgno);
		s->state = BS_ENTER;
		return 0;
	}
	if (s->cmp != 0 || NUMKEYS(mp) == 0) {
		batch_finish(s, MDB_NOTFOUND, rcs);
		return 0;
	}
	mc->mc_pg[0] = mp;
	mc->mc_top = 0;
	mc->mc_snum = 1;
	if ((rc = mdb_node_read(mc, NODEPTR(mp, s->i), data)) != 0)
		return rc;
	batch_finish(s, MDB_SUCCESS, rcs);
	return 0;
}

int
mdb_get_batch(MDB_txn *txn, MDB_dbi dbi, size_t n, MDB_val *keys, MDB_val *data, int *rcs)
{
	MDB_cursor mc;
	batch_state st[BATCH_GROUP];
	MDB_page *root;
	pgno_t root_pgno;
	size_t lo, j;
	int rc;

	if ((n && (!keys || !data || !rcs)) || !TXN_DBI_EXIST(txn, dbi, DB_USRVALID))
		return EINVAL;
	if (txn->mt_flags & MDB_TXN_BLOCKED)
		return MDB_BAD_TXN;

	/* The interleaved search covers plain databases read in a read-only transaction. A write
	 * transaction's pages may be dirty copies, sorted-duplicate and integer-key databases search
	 * differently: those take mdb_get per key. */
	if (!(txn->mt_flags & MDB_TXN_RDONLY) ||
	    (txn->mt_dbs[dbi].md_flags & (MDB_DUPSORT|MDB_INTEGERKEY))) {
		for (j = 0; j < n; j++) {
			rcs[j] = mdb_get(txn, dbi, &keys[j], &data[j]);
			if (rcs[j] != MDB_SUCCESS && rcs[j] != MDB_NOTFOUND && rcs[j] != MDB_BAD_VALSIZE)
				return rcs[j];
		}
		return MDB_SUCCESS;
	}

	mdb_cursor_init(&mc, txn, dbi, NULL);	/* refreshes a stale named database's root */
	if (txn->mt_flags & MDB_TXN_BLOCKED)
		return MDB_BAD_TXN;
	if (txn->mt_dbs[dbi].md_root == P_INVALID) {
		for (j = 0; j < n; j++)
			rcs[j] = keys[j].mv_size ? MDB_NOTFOUND : MDB_BAD_VALSIZE;
		return MDB_SUCCESS;
	}
	root_pgno = txn->mt_dbs[dbi].md_root;
	if ((rc = mdb_page_get(&mc, root_pgno, &root, NULL)) != 0)
		return rc;
	(void)root;	/* checked once here; each key enters it through mdb_page_get again */

	for (lo = 0; lo < n; lo += BATCH_GROUP) {
		size_t g = n - lo < BATCH_GROUP ? n - lo : BATCH_GROUP;
		size_t active = 0;
		for (j = 0; j < g; j++) {
			batch_state *s = &st[j];
			s->depth = 0;
			if (keys[lo + j].mv_size == 0) {	/* as mdb_cursor_set answers */
				batch_finish(s, MDB_BAD_VALSIZE, &rcs[lo + j]);
				continue;
			}
			s->pgno = root_pgno;
			s->state = BS_ENTER;	/* the root is in cache after the first group */
			active++;
		}
		while (active) {
			for (j = 0; j < g; j++) {
				batch_state *s = &st[j];
				if (s->state == BS_DONE)
					continue;
				if ((rc = batch_step(&mc, s, &keys[lo + j], &data[lo + j], &rcs[lo + j])) != 0)
					return rc;
				if (s->state == BS_DONE)
					active--;
			}
		}
	}
	return MDB_SUCCESS;
}
