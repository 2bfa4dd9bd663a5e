//! [`Store`] in PostgreSQL: documents, the feed and the record index,
//! shared by every node of one database. Tables (schema version 3):
//! `docs` (latest position, heads, chunk count, compaction point),
//! `doc_chunks` (doc, position → chunk or folded save), `feed` (position
//! → doc), `doc_log` (doc, position → heads and the writing node),
//! `change_received`,
//! `record_clock`, `record_index` (index, access and list row summary in
//! one row), `erased`, `quarantine`, `doc_snapshots`, and `store_meta`
//! (the store id).
//!
//! **Feed order across nodes.** Every commit takes one transaction-scoped
//! advisory lock ([`FEED_LOCK`]) before it draws its positions, and holds
//! it until it has committed. Positions are therefore assigned in commit
//! order across every node, as sled assigns them under its one lock:
//! when a reader sees position `n` committed, every position below `n`
//! is committed too, or was never drawn. So the watermark is simply the
//! highest committed position, and no reader can pass a write still to
//! appear. What it costs: commits of all nodes take turns (each node
//! still groups its writers' writes into one commit), while admission,
//! reads and everything else run on every node at once.
//!
//! **Overtaken copies.** A write judged on a node's copy of a record
//! carries the position that copy was loaded at; under the same lock, a
//! write to a record another node has written since (or erased) is left
//! out of the commit and answered as overtaken, to be judged again
//! ([`Store::commit_unless_stale`]). Each commit tells the other nodes
//! what it wrote (see `notify.rs`), so they rarely hold such a copy.
//!
//! **Store id.** It is the database's, drawn once when the schema is
//! made: a node that dies uncleanly loses nothing the database committed,
//! so tablets have no reason to re-offer what they hold.

use std::sync::Arc;

use baraza_protocol::{DocId, Head, Seq, StoreId};
use baraza_records::{Kind, ReviewState};
use tokio_postgres::Row;

use crate::storage::catch_up::CatchUpBatch;
use crate::storage::postgres::{int, notify, uint, Pg};
use crate::storage::store::{
    heads_bytes, heads_from_bytes, ClockSkew, DocChunks, DocWrite, IndexEntry, ReadScope,
    RecordAccess, RecordFilter, RecordRow, RecordSummary, Store, StoreError, StoredDoc,
    WriteChecks,
};

/// The advisory lock every commit holds from drawing its positions to
/// committing ("feed" in ASCII, beside the migration lock).
const FEED_LOCK: i64 = 0x6261_7261_6665_6564;

/// Documents and the feed in PostgreSQL.
pub struct PgStore {
    pg: Arc<Pg>,
    id: StoreId,
}

impl PgStore {
    /// The documents of the database `pg`; draws the store id if the
    /// database has none yet.
    pub fn open(pg: Arc<Pg>) -> Result<PgStore, StoreError> {
        let drawn = rand::random::<[u8; 16]>().to_vec();
        let id: Vec<u8> = pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached("INSERT INTO store_meta (one, store_id) VALUES (true, $1) ON CONFLICT DO NOTHING").await?,
                &[&drawn],
            )
            .await?;
            Ok(c.query_one(&c.prepare_cached("SELECT store_id FROM store_meta").await?, &[])
                .await?
                .get(0))
        })?;
        let id: [u8; 16] = id.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            tree: "store_meta",
            reason: format!("a store id of {} bytes", id.len()),
        })?;
        Ok(PgStore {
            pg,
            id: StoreId::from_bytes(id),
        })
    }

    /// For a migration: makes the database's store id `id` (the old
    /// store's), so tablets that synced with the old server keep their
    /// cursors and re-send nothing they were acknowledged.
    pub fn adopt_store_id(&mut self, id: StoreId) -> Result<(), StoreError> {
        let bytes = id.as_bytes().to_vec();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached("UPDATE store_meta SET store_id = $1")
                    .await?,
                &[&bytes],
            )
            .await?;
            Ok(())
        })?;
        self.id = id;
        Ok(())
    }

    /// For a migration into an empty database: one feed entry of the old
    /// store, kept at exactly its position `seq` (so devices' cursors keep
    /// their meaning): `w` as a write, or, for the entry that erased a
    /// record, the tombstone with who could read it; with every change's
    /// first receipt as the old store kept it.
    pub fn import(
        &self,
        seq: Seq,
        w: &DocWrite,
        received: &[(Head, i64)],
        erased: Option<&RecordAccess>,
    ) -> Result<(), StoreError> {
        let (w, seq, node) = (w.clone(), int(seq), self.pg.node().to_string());
        let received: Vec<(Vec<u8>, i64)> = received
            .iter()
            .map(|(h, at)| (h.as_bytes().to_vec(), *at))
            .collect();
        let erased = erased.cloned();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            match &erased {
                Some(access) => {
                    let doc = key(w.doc);
                    for table in ["doc_chunks", "doc_log", "change_received", "record_clock", "docs", "record_index", "doc_snapshots"] {
                        tx.execute(
                            &tx.prepare_cached(&format!("DELETE FROM {table} WHERE doc = $1")).await?,
                            &[&doc],
                        )
                        .await?;
                    }
                    tx.execute(
                        &tx.prepare_cached("INSERT INTO erased (doc, kind, area, created_by) VALUES ($1, $2, $3, $4) ON CONFLICT (doc) DO NOTHING").await?,
                        &[&doc, &access.kind, &access.area, &access.created_by],
                    )
                    .await?;
                    tx.execute(&tx.prepare_cached(INSERT_FEED).await?, &[&seq, &doc])
                        .await?;
                }
                None => {
                    write_one(&tx, &w, seq, &node).await?;
                }
            }
            if !received.is_empty() {
                let (changes, times): (Vec<Vec<u8>>, Vec<i64>) = received.into_iter().unzip();
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO change_received (doc, change, at_ms) \
                         SELECT $1, c, t FROM unnest($2::bytea[], $3::bigint[]) AS r(c, t) \
                         ON CONFLICT DO NOTHING",
                    )
                    .await?,
                    &[&key(w.doc), &changes, &times],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The row `sql` (with the document as `$1`) finds, read by `read`.
    fn by_doc<T: Send + 'static>(
        &self,
        sql: &'static str,
        doc: DocId,
        read: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let k = key(doc);
        self.pg.run(move |c| async move {
            c.query_opt(&c.prepare_cached(sql).await?, &[&k])
                .await?
                .as_ref()
                .map(read)
                .transpose()
        })
    }
}

fn doc_of(bytes: &[u8], table: &'static str) -> Result<DocId, StoreError> {
    let id: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree: table,
        reason: format!("a document id of {} bytes", bytes.len()),
    })?;
    Ok(DocId::from_bytes(id))
}

fn head_of(bytes: &[u8], table: &'static str) -> Result<Head, StoreError> {
    let hash: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree: table,
        reason: format!("a change hash of {} bytes", bytes.len()),
    })?;
    Ok(Head::from(automerge::ChangeHash(hash)))
}

fn key(doc: DocId) -> Vec<u8> {
    doc.as_bytes().to_vec()
}

fn access_row(r: &Row) -> Result<RecordAccess, StoreError> {
    Ok(RecordAccess {
        kind: r.get(0),
        area: r.get(1),
        created_by: r.get(2),
    })
}

/// Kind, area and creator in columns `at..at + 3` of a left join: None
/// where the joined row is absent (its kind is NULL).
fn access_at(r: &Row, at: usize) -> Option<RecordAccess> {
    r.get::<_, Option<String>>(at).map(|kind| RecordAccess {
        kind,
        area: r.get(at + 1),
        created_by: r.get(at + 2),
    })
}

/// The columns [`row_of`] reads, in its order (`record_row` spells them
/// out too, as its query must be a constant).
const ROW_COLUMNS: &str =
    "doc, kind, area, state, created_at, created_by, title, submitted_at, conflicts, comments";

fn row_of(r: &Row) -> Result<RecordRow, StoreError> {
    let doc = doc_of(r.get(0), "record_index")?;
    let state: &str = r.get(3);
    let state = ReviewState::parse(state).ok_or_else(|| StoreError::Corrupt {
        tree: "record_index",
        reason: format!("record {doc} has review state {state:?}"),
    })?;
    let comments: i32 = r.get(9);
    Ok(RecordRow {
        id: doc.to_string(),
        entry: IndexEntry {
            kind: r.get(1),
            area: r.get(2),
            state,
            created_at: r.get(4),
            created_by: r.get(5),
            summary: RecordSummary {
                title: r.get(6),
                submitted_at: r.get(7),
                conflicts: r.get(8),
                comments: u32::try_from(comments).unwrap_or(0),
            },
        },
    })
}

/// The records among `writes` whose write was judged on a copy (its base
/// is given) that another node has written after, or that was erased.
async fn stale_among(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[DocWrite],
    bases: &[Option<Seq>],
    node: &str,
) -> Result<std::collections::HashSet<DocId>, StoreError> {
    let (docs, bases): (Vec<Vec<u8>>, Vec<i64>) = writes
        .iter()
        .zip(bases)
        .filter_map(|(w, b)| b.map(|b| (key(w.doc), int(b))))
        .unzip();
    if docs.is_empty() {
        return Ok(Default::default());
    }
    tx.query(
        &tx.prepare_cached(
            "SELECT d.doc FROM unnest($1::bytea[], $2::bigint[]) AS d(doc, base) \
             WHERE EXISTS (SELECT 1 FROM doc_log l WHERE l.doc = d.doc AND l.seq > d.base \
                           AND l.node IS DISTINCT FROM $3) \
                OR EXISTS (SELECT 1 FROM erased e WHERE e.doc = d.doc)",
        )
        .await?,
        &[&docs, &bases, &node],
    )
    .await?
    .iter()
    .map(|r| doc_of(r.get(0), "doc_log"))
    .collect()
}

// The statements of a write ([`plain_write_ops`]).
const UPSERT_DOC: &str =
    "INSERT INTO docs (doc, seq, heads, chunks, compacted) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (doc) DO UPDATE SET seq = EXCLUDED.seq, heads = EXCLUDED.heads, \
         chunks = EXCLUDED.chunks, compacted = EXCLUDED.compacted";
const INSERT_LOG: &str = "INSERT INTO doc_log (doc, seq, heads, node) VALUES ($1, $2, $3, $4)";
const INSERT_RECEIVED: &str = "INSERT INTO change_received (doc, change, at_ms) \
             SELECT $1, c, $3 FROM unnest($2::bytea[]) AS c ON CONFLICT DO NOTHING";
const UPSERT_CLOCK: &str = "INSERT INTO record_clock (doc, times, ahead_ms_max, claimed_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (doc) DO UPDATE SET \
                 times = record_clock.times + EXCLUDED.times, \
                 claimed_ms = CASE WHEN EXCLUDED.ahead_ms_max > record_clock.ahead_ms_max \
                     THEN EXCLUDED.claimed_ms ELSE record_clock.claimed_ms END, \
                 ahead_ms_max = greatest(record_clock.ahead_ms_max, EXCLUDED.ahead_ms_max)";
const UPSERT_INDEX: &str =
    "INSERT INTO record_index (doc, kind, area, state, created_at, created_by, \
             summarised, title, submitted_at, conflicts, comments) \
             VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8, $9, $10) \
             ON CONFLICT (doc) DO UPDATE SET kind = EXCLUDED.kind, area = EXCLUDED.area, \
             state = EXCLUDED.state, created_at = EXCLUDED.created_at, \
             created_by = EXCLUDED.created_by, summarised = true, title = EXCLUDED.title, \
             submitted_at = coalesce(EXCLUDED.submitted_at, record_index.submitted_at), \
             conflicts = EXCLUDED.conflicts, comments = EXCLUDED.comments";
const INSERT_FEED: &str = "INSERT INTO feed (seq, doc) VALUES ($1, $2)";

/// A statement parameter a pipelined statement owns.
type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// One statement of a commit, sent with the others in one pipeline.
struct Op {
    sql: &'static str,
    params: Vec<Param>,
}

impl Op {
    fn new(sql: &'static str, params: Vec<Param>) -> Op {
        Op { sql, params }
    }
}

/// Sends `ops` at once and waits for every answer: tokio-postgres
/// pipelines requests polled together, and the server runs them in the
/// order sent, so a commit of many writes costs one round trip instead of
/// one per statement. The first error fails the transaction.
async fn run_pipelined(
    tx: &deadpool_postgres::Transaction<'_>,
    ops: Vec<Op>,
) -> Result<(), StoreError> {
    let mut statements = Vec::with_capacity(ops.len());
    for op in &ops {
        // Prepared once per connection, then from its cache.
        statements.push(tx.prepare_cached(op.sql).await?);
    }
    let sent = ops.iter().zip(&statements).map(|(op, statement)| {
        tx.execute_raw(
            statement,
            op.params
                .iter()
                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)),
        )
    });
    futures_util::future::try_join_all(sent).await?;
    Ok(())
}

/// The statements that store a write's chunk, heads, feed entry,
/// receipts and index row (all of a write but an erasure's, after a
/// rebuild's deletions); `count` is the record's chunk count and
/// compaction point before it, and after it on return.
fn plain_write_ops(ops: &mut Vec<Op>, w: &DocWrite, seq: i64, node: &str, count: &mut (i32, i64)) {
    let doc = key(w.doc);
    if !w.chunk.is_empty() {
        ops.push(Op::new(
            "INSERT INTO doc_chunks (doc, seq, bytes) VALUES ($1, $2, $3)",
            vec![
                Box::new(doc.clone()),
                Box::new(seq),
                Box::new(w.chunk.clone()),
            ],
        ));
        count.0 += 1;
    }
    let heads = heads_bytes(&w.heads);
    ops.push(Op::new(
        UPSERT_DOC,
        vec![
            Box::new(doc.clone()),
            Box::new(seq),
            Box::new(heads.clone()),
            Box::new(count.0),
            Box::new(count.1),
        ],
    ));
    ops.push(Op::new(
        INSERT_FEED,
        vec![Box::new(seq), Box::new(doc.clone())],
    ));
    ops.push(Op::new(
        INSERT_LOG,
        vec![
            Box::new(doc.clone()),
            Box::new(seq),
            Box::new(heads),
            Box::new(node.to_string()),
        ],
    ));
    if let Some(receipt) = &w.receipt {
        // The first receipt of a change stands: a change offered again
        // (after a store reset) arrived first back then.
        let changes: Vec<Vec<u8>> = receipt
            .changes
            .iter()
            .map(|h| h.as_bytes().to_vec())
            .collect();
        ops.push(Op::new(
            INSERT_RECEIVED,
            vec![
                Box::new(doc.clone()),
                Box::new(changes),
                Box::new(receipt.at_ms),
            ],
        ));
        if let Some(skew) = receipt.skew {
            // As ClockSkew::merge: counts add up, the furthest ahead stays.
            ops.push(Op::new(
                UPSERT_CLOCK,
                vec![
                    Box::new(doc.clone()),
                    Box::new(i64::from(skew.times)),
                    Box::new(skew.ahead_ms_max),
                    Box::new(skew.claimed_ms),
                ],
            ));
        }
    }
    if let Some(e) = &w.index {
        let s = &e.summary;
        // Commits are in order per record, so a submitted time an earlier
        // write noted is there to keep.
        ops.push(Op::new(
            UPSERT_INDEX,
            vec![
                Box::new(doc),
                Box::new(e.kind.clone()),
                Box::new(e.area.clone()),
                Box::new(e.state.name()),
                Box::new(e.created_at),
                Box::new(e.created_by.clone()),
                Box::new(s.title.clone()),
                Box::new(s.submitted_at),
                Box::new(s.conflicts),
                Box::new(i32::try_from(s.comments).unwrap_or(i32::MAX)),
            ],
        ));
    }
}

/// The statements of one write, inside the commit's transaction, one
/// after another (an erasure's or a rebuild's deletions come first);
/// returns the record's chunk count and compaction point after it.
async fn write_one(
    tx: &deadpool_postgres::Transaction<'_>,
    w: &DocWrite,
    seq: i64,
    node: &str,
) -> Result<(i32, i64), StoreError> {
    let doc = key(w.doc);
    if w.rebuild || w.erase {
        tx.execute(
            &tx.prepare_cached("DELETE FROM doc_snapshots WHERE doc = $1")
                .await?,
            &[&doc],
        )
        .await?;
    }
    if w.erase {
        for table in [
            "doc_chunks",
            "doc_log",
            "change_received",
            "record_clock",
            "docs",
        ] {
            tx.execute(
                &tx.prepare_cached(&format!("DELETE FROM {table} WHERE doc = $1"))
                    .await?,
                &[&doc],
            )
            .await?;
        }
        // The tombstone keeps who could read the record, so a refused
        // read of it still looks like absence to the others.
        let access = tx
            .query_opt(
                &tx.prepare_cached(
                    "DELETE FROM record_index WHERE doc = $1 RETURNING kind, area, created_by",
                )
                .await?,
                &[&doc],
            )
            .await?;
        let (kind, area, by): (String, String, String) = match &access {
            Some(r) => (r.get(0), r.get(1), r.get(2)),
            None => Default::default(),
        };
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO erased (doc, kind, area, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (doc) DO NOTHING",
            )
            .await?,
            &[&doc, &kind, &area, &by],
        )
        .await?;
        tx.execute(&tx.prepare_cached(INSERT_FEED).await?, &[&seq, &doc])
            .await?;
        return Ok((0, 0));
    }
    let count = if w.rebuild {
        tx.execute(
            &tx.prepare_cached("DELETE FROM doc_chunks WHERE doc = $1")
                .await?,
            &[&doc],
        )
        .await?;
        (0, seq)
    } else {
        let meta = tx
            .query_opt(
                &tx.prepare_cached("SELECT chunks, compacted FROM docs WHERE doc = $1")
                    .await?,
                &[&doc],
            )
            .await?;
        meta.map_or((0, 0), |r| (r.get(0), r.get(1)))
    };
    let mut count = count;
    let mut ops = Vec::new();
    plain_write_ops(&mut ops, w, seq, node, &mut count);
    run_pipelined(tx, ops).await?;
    Ok(count)
}

impl Store for PgStore {
    fn store_id(&self) -> StoreId {
        self.id
    }

    fn feed_watermark(&self) -> Result<Seq, StoreError> {
        // Positions are drawn and committed under FEED_LOCK, so the
        // highest committed one has every lower one committed below it.
        self.pg.run(|c| async move {
            let top: Option<i64> = c
                .query_one(&c.prepare_cached("SELECT max(seq) FROM feed").await?, &[])
                .await?
                .get(0);
            Ok(top.map(uint).unwrap_or(0))
        })
    }

    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError> {
        Ok(self.load_many(&[doc])?.pop().flatten())
    }

    fn load_many(&self, docs: &[DocId]) -> Result<Vec<Option<StoredDoc>>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = docs.iter().map(|d| key(*d)).collect();
        let docs = docs.to_vec();
        self.pg.run(move |c| async move {
            // One statement, so one snapshot for each record's count and
            // the chunks it counts, in one round trip: a record's row on
            // every chunk row (or once, with no chunk, if it has none).
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT w.n, d.seq, d.heads, d.chunks, k.seq, k.bytes \
                         FROM unnest($1::bytea[]) WITH ORDINALITY AS w(doc, n) \
                         JOIN docs d ON d.doc = w.doc \
                         LEFT JOIN doc_chunks k ON k.doc = d.doc \
                         ORDER BY w.n, k.seq",
                    )
                    .await?,
                    &[&keys],
                )
                .await?;
            let mut out: Vec<Option<StoredDoc>> = vec![None; docs.len()];
            let mut counted = vec![0i32; docs.len()];
            for r in &rows {
                let n = usize::try_from(r.get::<_, i64>(0) - 1)
                    .ok()
                    .filter(|n| *n < docs.len())
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: "docs",
                        reason: "a batch load answered a record it was not asked".into(),
                    })?;
                let stored = match &mut out[n] {
                    Some(stored) => stored,
                    slot => {
                        counted[n] = r.get(3);
                        slot.insert(StoredDoc {
                            bytes: Vec::new(),
                            positions: Vec::new(),
                            seq: uint(r.get(1)),
                            heads: heads_from_bytes(r.get(2), "docs")?,
                        })
                    }
                };
                if let Some(at) = r.get::<_, Option<i64>>(4) {
                    stored.positions.push(uint(at));
                    stored.bytes.extend_from_slice(r.get::<_, &[u8]>(5));
                }
            }
            for (n, stored) in out.iter().enumerate() {
                let Some(stored) = stored else { continue };
                if usize::try_from(counted[n]).ok() != Some(stored.positions.len()) {
                    // A chunk lost (or left over) says the database lost writes.
                    return Err(StoreError::Corrupt {
                        tree: "doc_chunks",
                        reason: format!(
                            "record {} has {} stored chunks but {} were committed",
                            docs[n],
                            stored.positions.len(),
                            counted[n]
                        ),
                    });
                }
            }
            Ok(out)
        })
    }

    fn commit(&self, writes: &[DocWrite]) -> Result<Vec<Seq>, StoreError> {
        let outcomes = self.commit_unless_stale(writes, &vec![None; writes.len()])?;
        Ok(outcomes.into_iter().flatten().collect())
    }

    fn commit_unless_stale(
        &self,
        writes: &[DocWrite],
        bases: &[Option<Seq>],
    ) -> Result<Vec<Option<Seq>>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let writes = writes.to_vec();
        let bases = bases.to_vec();
        let node = self.pg.node().to_string();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let lock = tx
                .prepare_cached("SELECT pg_advisory_xact_lock($1)")
                .await?;
            let top = tx.prepare_cached("SELECT max(seq) FROM feed").await?;
            let meta = tx
                .prepare_cached("SELECT doc, chunks, compacted FROM docs WHERE doc = ANY($1)")
                .await?;
            let docs: Vec<Vec<u8>> = writes.iter().map(|w| key(w.doc)).collect();
            // Sent together, one round trip. `try_join4` polls its futures
            // in order, so the lock's request is sent first, and the server
            // runs requests in the order sent: the lock is held before the
            // others read, and under it no other node commits, so what they
            // find stays true until this commits.
            let (_, stale, top, meta) = futures_util::future::try_join4(
                async { Ok::<_, StoreError>(tx.execute(&lock, &[&FEED_LOCK]).await?) },
                stale_among(&tx, &writes, &bases, &node),
                async { Ok::<_, StoreError>(tx.query_one(&top, &[]).await?) },
                async { Ok::<_, StoreError>(tx.query(&meta, &[&docs]).await?) },
            )
            .await?;
            let top: Option<i64> = top.get(0);
            let mut counts = std::collections::HashMap::with_capacity(meta.len());
            for r in &meta {
                counts.insert(
                    doc_of(r.get(0), "docs")?,
                    (r.get::<_, i32>(1), r.get::<_, i64>(2)),
                );
            }
            let first = top.unwrap_or(0) + 1;
            let mut next = first;
            let mut outcomes = Vec::with_capacity(writes.len());
            let mut ops = Vec::new();
            for w in &writes {
                if stale.contains(&w.doc) {
                    outcomes.push(None);
                    continue;
                }
                if w.erase || w.rebuild {
                    // Rare: the statements before it go first, then this
                    // one's, each reading what the last left.
                    run_pipelined(&tx, std::mem::take(&mut ops)).await?;
                    let after = write_one(&tx, w, next, &node).await?;
                    notify::say(&tx, &notify::rewritten(&node, w.doc)).await?;
                    counts.insert(w.doc, after);
                } else {
                    let count = counts.entry(w.doc).or_insert((0, 0));
                    plain_write_ops(&mut ops, w, next, &node, count);
                }
                outcomes.push(Some(uint(next)));
                next += 1;
            }
            if next > first {
                ops.push(Op::new(
                    "SELECT pg_notify($1, $2)",
                    vec![
                        Box::new(notify::CHANNEL),
                        Box::new(notify::committed(&node, first, next - 1)),
                    ],
                ));
            }
            run_pipelined(&tx, ops).await?;
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    fn fold(&self, doc: DocId, chunks: &[Seq], saved: &[u8]) -> Result<bool, StoreError> {
        let Some(&upto) = chunks.iter().max() else {
            return Ok(false);
        };
        let mut wanted: Vec<i64> = chunks.iter().map(|&s| int(s)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let (k, saved, upto) = (key(doc), saved.to_vec(), int(upto));
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            // The record's row, locked: a commit to it, another fold or an
            // erasure waits for this one, or this one for it.
            let Some(meta) = tx
                .query_opt(
                    &tx.prepare_cached("SELECT chunks FROM docs WHERE doc = $1 FOR UPDATE").await?,
                    &[&k],
                )
                .await?
            else {
                return Ok(false);
            };
            let present: Vec<i64> = tx
                .query(
                    &tx.prepare_cached("SELECT seq FROM doc_chunks WHERE doc = $1 AND seq <= $2 ORDER BY seq").await?,
                    &[&k, &upto],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if present != wanted {
                return Ok(false);
            }
            let counted: i32 = meta.get(0);
            let folded = i32::try_from(present.len()).unwrap_or(i32::MAX);
            if counted < folded {
                return Err(StoreError::Corrupt {
                    tree: "docs",
                    reason: format!(
                        "record {doc} counts {counted} chunks but {folded} are stored at or below {upto}"
                    ),
                });
            }
            tx.execute(
                &tx.prepare_cached("DELETE FROM doc_chunks WHERE doc = $1 AND seq <= $2").await?,
                &[&k, &upto],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("INSERT INTO doc_chunks (doc, seq, bytes) VALUES ($1, $2, $3)").await?,
                &[&k, &upto, &saved],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("UPDATE docs SET chunks = $2, compacted = greatest(compacted, $3) WHERE doc = $1").await?,
                &[&k, &(counted - folded + 1), &upto],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn keep_snapshot(&self, doc: DocId, seq: Seq, saved: &[u8]) -> Result<bool, StoreError> {
        let (k, seq, saved) = (key(doc), int(seq), saved.to_vec());
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            // Locked, so no erasure or rebuild lands between the checks
            // and the insert. An erased record has no row.
            let Some(meta) = tx
                .query_opt(
                    &tx.prepare_cached("SELECT seq, compacted FROM docs WHERE doc = $1 FOR UPDATE")
                        .await?,
                    &[&k],
                )
                .await?
            else {
                return Ok(false);
            };
            let (at, compacted): (i64, i64) = (meta.get(0), meta.get(1));
            if seq > at || seq < compacted {
                return Ok(false);
            }
            // Not waited for: a snapshot lost in a crash is taken again.
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .await?;
            let kept = tx
                .execute(
                    &tx.prepare_cached(
                        "INSERT INTO doc_snapshots (doc, seq, bytes) VALUES ($1, $2, $3) \
                     ON CONFLICT (doc) DO UPDATE SET seq = EXCLUDED.seq, bytes = EXCLUDED.bytes \
                     WHERE doc_snapshots.seq < EXCLUDED.seq",
                    )
                    .await?,
                    &[&k, &seq, &saved],
                )
                .await?;
            tx.commit().await?;
            Ok(kept == 1)
        })
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        self.by_doc(
            "SELECT seq, bytes FROM doc_snapshots WHERE doc = $1",
            doc,
            |r| Ok((uint(r.get(0)), r.get(1))),
        )
    }

    fn entries_after(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, StoreError> {
        let (after, upto, limit) = (int(after), int(upto), int(limit as u64));
        self.pg.run(move |c| async move {
            c.query(
                &c.prepare_cached(
                    "SELECT seq, doc FROM feed WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                )
                .await?,
                &[&after, &upto, &limit],
            )
            .await?
            .iter()
            .map(|r| Ok((uint(r.get(0)), doc_of(r.get(1), "feed")?)))
            .collect()
        })
    }

    fn doc_seq(&self, doc: DocId) -> Result<Option<Seq>, StoreError> {
        self.by_doc("SELECT seq FROM docs WHERE doc = $1", doc, |r| {
            Ok(uint(r.get(0)))
        })
    }

    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError> {
        let (k, after) = (key(doc), int(after));
        self.pg.run(move |c| async move {
            // One statement (one snapshot, one round trip): the record's
            // row, whether a chunk sits at or below `after`, and on every
            // row a chunk after it, if any.
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT d.seq, d.heads, d.compacted, \
                         EXISTS (SELECT 1 FROM doc_chunks b WHERE b.doc = d.doc AND b.seq <= $2), \
                         k.seq, k.bytes FROM docs d \
                         LEFT JOIN doc_chunks k ON k.doc = d.doc AND k.seq > $2 \
                         WHERE d.doc = $1 ORDER BY k.seq",
                    )
                    .await?,
                    &[&k, &after],
                )
                .await?;
            let Some(meta) = rows.first() else {
                return Ok(None);
            };
            let compacted: i64 = meta.get(2);
            if after < compacted {
                return Ok(None);
            }
            // Positions start at 1; a fold leaves its save at a position,
            // so a compacted record is never whole after it.
            let whole = after == 0 || !meta.get::<_, bool>(3);
            let mut bytes = Vec::new();
            let mut ends = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Some(at) = r.get::<_, Option<i64>>(4) {
                    bytes.extend_from_slice(r.get::<_, &[u8]>(5));
                    ends.push((uint(at), bytes.len()));
                }
            }
            Ok(Some(DocChunks {
                bytes,
                ends,
                seq: uint(meta.get(0)),
                heads: heads_from_bytes(meta.get(1), "docs")?,
                whole,
            }))
        })
    }

    fn list_records(
        &self,
        filter: &RecordFilter,
        scope: &ReadScope,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let kind = filter.kind.clone();
        let area = filter.area.clone();
        let state = filter.state.map(|s| s.name().to_string());
        let since = filter.since;
        let own = scope.own.clone();
        let kinds: Vec<String> = scope.kinds.iter().map(|k| k.name().to_string()).collect();
        let areas = scope.areas.clone();
        // A kind this server does not know is in nobody's scope.
        let known: Vec<String> = Kind::ALL.iter().map(|k| k.name().to_string()).collect();
        let limit = int(limit as u64);
        self.pg.run(move |c| async move {
            let sql = format!(
                "SELECT {ROW_COLUMNS} FROM record_index \
                 WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR area = $2) \
                 AND ($3::text IS NULL OR state = $3) AND ($4::bigint IS NULL OR created_at >= $4) \
                 AND kind = ANY($5) \
                 AND (created_by = $6 OR (kind = ANY($7) AND area = ANY($8))) \
                 ORDER BY kind COLLATE \"C\", area COLLATE \"C\", state COLLATE \"C\", created_at, doc \
                 LIMIT $9"
            );
            c.query(
                &c.prepare_cached(&sql).await?,
                &[
                    &kind, &area, &state, &since, &known, &own, &kinds, &areas, &limit,
                ],
            )
            .await?
            .iter()
            .map(row_of)
            .collect()
        })
    }

    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError> {
        let (k, seq) = (key(doc), int(seq));
        self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT heads FROM doc_log WHERE doc = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1").await?,
                    &[&k, &seq],
                )
                .await?;
            row.map(|r| heads_from_bytes(r.get(0), "doc_log"))
                .transpose()
        })
    }

    fn access_of(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError> {
        self.by_doc(
            "SELECT kind, area, created_by FROM record_index WHERE doc = $1",
            doc,
            access_row,
        )
    }

    fn erased(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError> {
        self.by_doc(
            "SELECT kind, area, created_by FROM erased WHERE doc = $1",
            doc,
            access_row,
        )
    }

    fn quarantine(&self, doc: DocId, reason: &str) -> Result<(), StoreError> {
        let (k, reason) = (key(doc), reason.to_string());
        let said = notify::rewritten(self.pg.node(), doc);
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO quarantine (doc, reason) VALUES ($1, $2) \
                 ON CONFLICT (doc) DO UPDATE SET reason = EXCLUDED.reason",
                )
                .await?,
                &[&k, &reason],
            )
            .await?;
            notify::say(&tx, &said).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn release_quarantine(&self, doc: DocId) -> Result<bool, StoreError> {
        let k = key(doc);
        let said = notify::rewritten(self.pg.node(), doc);
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let released = tx
                .execute(
                    &tx.prepare_cached("DELETE FROM quarantine WHERE doc = $1")
                        .await?,
                    &[&k],
                )
                .await?
                == 1;
            notify::say(&tx, &said).await?;
            tx.commit().await?;
            Ok(released)
        })
    }

    fn quarantined(&self, doc: DocId) -> Result<Option<String>, StoreError> {
        self.by_doc("SELECT reason FROM quarantine WHERE doc = $1", doc, |r| {
            Ok(r.get(0))
        })
    }

    fn watermark_after(&self, committed: &[Seq]) -> Result<Seq, StoreError> {
        // Positions are drawn under the feed lock and it is held to the
        // commit, so every position below this commit's was committed
        // before it: its last is a watermark. Other nodes' later commits
        // are heard of and move it on (`SyncHub::follow_other_nodes`).
        match committed.iter().max() {
            Some(last) => Ok(*last),
            None => self.feed_watermark(),
        }
    }

    fn entries_after_checked(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<(Vec<(Seq, DocId)>, CatchUpBatch), StoreError> {
        let (after, upto, limit) = (int(after), int(upto), int(limit as u64));
        self.pg.run(move |c| async move {
            // The entries and their records' checks in one statement.
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT f.seq, f.doc, q.reason, i.kind, i.area, i.created_by \
                         FROM (SELECT seq, doc FROM feed WHERE seq > $1 AND seq <= $2 \
                               ORDER BY seq LIMIT $3) f \
                         LEFT JOIN quarantine q ON q.doc = f.doc \
                         LEFT JOIN record_index i ON i.doc = f.doc \
                         ORDER BY f.seq",
                    )
                    .await?,
                    &[&after, &upto, &limit],
                )
                .await?;
            let mut entries = Vec::with_capacity(rows.len());
            let mut batch = CatchUpBatch::default();
            for r in &rows {
                let doc = doc_of(r.get(1), "feed")?;
                entries.push((uint(r.get(0)), doc));
                let record = batch.records.entry(doc).or_default();
                record.quarantined = r.get(2);
                record.access = access_at(r, 3);
            }
            Ok((entries, batch))
        })
    }

    fn write_checks(&self, docs: &[DocId]) -> Result<Vec<WriteChecks>, StoreError> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = docs.iter().map(|d| key(*d)).collect();
        self.pg.run(move |c| async move {
            // One statement, one round trip, one snapshot for the batch.
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT e.kind, e.area, e.created_by, i.kind, i.area, i.created_by, \
                         EXISTS (SELECT 1 FROM docs d WHERE d.doc = w.doc), q.reason \
                         FROM unnest($1::bytea[]) WITH ORDINALITY AS w(doc, n) \
                         LEFT JOIN erased e ON e.doc = w.doc \
                         LEFT JOIN record_index i ON i.doc = w.doc \
                         LEFT JOIN quarantine q ON q.doc = w.doc \
                         ORDER BY w.n",
                    )
                    .await?,
                    &[&keys],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| WriteChecks {
                    erased: access_at(r, 0),
                    access: access_at(r, 3),
                    stored: r.get(6),
                    quarantined: r.get(7),
                })
                .collect())
        })
    }

    fn catch_up_batch(&self, wants: &[(DocId, Option<Seq>)]) -> Result<CatchUpBatch, StoreError> {
        let mut seen = std::collections::HashSet::new();
        // -1 for checks only: no snapshot, no docs row, no chunks.
        let (docs, bases): (Vec<Vec<u8>>, Vec<i64>) = wants
            .iter()
            .filter(|w| seen.insert(**w))
            .map(|(d, b)| (key(*d), b.map_or(-1, int)))
            .unzip();
        if docs.is_empty() {
            return Ok(CatchUpBatch::default());
        }
        self.pg.run(move |c| async move {
            // One statement (one snapshot, one round trip) for the batch:
            // per record and reader position, what the single-record reads
            // would find, with one row per chunk after the position read
            // from (the snapshot's, for a reader with nothing).
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT w.doc, w.base, q.reason, i.kind, i.area, i.created_by, \
                         s.seq, s.bytes, d.seq, d.heads, d.chunks, d.compacted, f.from_seq, \
                         EXISTS (SELECT 1 FROM doc_chunks b WHERE b.doc = w.doc AND b.seq <= f.from_seq), \
                         k.seq, k.bytes \
                         FROM unnest($1::bytea[], $2::bigint[]) AS w(doc, base) \
                         LEFT JOIN quarantine q ON q.doc = w.doc \
                         LEFT JOIN record_index i ON i.doc = w.doc \
                         LEFT JOIN doc_snapshots s ON s.doc = w.doc AND w.base = 0 \
                         LEFT JOIN docs d ON d.doc = w.doc AND w.base >= 0 \
                         CROSS JOIN LATERAL (SELECT CASE WHEN w.base > 0 THEN w.base \
                             ELSE coalesce(s.seq, 0) END AS from_seq) f \
                         LEFT JOIN doc_chunks k ON k.doc = w.doc AND k.seq > f.from_seq \
                             AND w.base >= 0 \
                         ORDER BY w.doc, w.base, k.seq",
                    )
                    .await?,
                    &[&docs, &bases],
                )
                .await?;
            let mut batch = CatchUpBatch::default();
            let mut i = 0;
            while i < rows.len() {
                let first = &rows[i];
                let (doc_key, base): (&[u8], i64) = (first.get(0), first.get(1));
                let mut end = i + 1;
                while end < rows.len()
                    && rows[end].get::<_, &[u8]>(0) == doc_key
                    && rows[end].get::<_, i64>(1) == base
                {
                    end += 1;
                }
                let group = &rows[i..end];
                i = end;
                let doc = doc_of(doc_key, "docs")?;
                let record = batch.records.entry(doc).or_default();
                record.quarantined = first.get(2);
                record.access = access_at(first, 3);
                let snapshot: Option<i64> = first.get(6);
                if base == 0 {
                    record.snapshot = Some(snapshot.map(|at| (uint(at), first.get(7))));
                }
                let Some(latest) = first.get::<_, Option<i64>>(8) else {
                    // No such record (any more): the store says so itself.
                    continue;
                };
                let heads = heads_from_bytes(first.get(9), "docs")?;
                record.latest = Some((uint(latest), heads.clone()));
                let (counted, compacted, from): (i32, i64, i64) =
                    (first.get(10), first.get(11), first.get(12));
                let mut bytes = Vec::new();
                let mut ends = Vec::with_capacity(group.len());
                for r in group {
                    if let Some(at) = r.get::<_, Option<i64>>(14) {
                        bytes.extend_from_slice(r.get::<_, &[u8]>(15));
                        ends.push((uint(at), bytes.len()));
                    }
                }
                if from == 0 && usize::try_from(counted).ok() == Some(ends.len()) {
                    record.load = Some(StoredDoc {
                        bytes: bytes.clone(),
                        positions: ends.iter().map(|(at, _)| *at).collect(),
                        seq: uint(latest),
                        heads: heads.clone(),
                    });
                }
                // As `chunks_after`: nothing after a position a fold passed.
                let chunks = (from >= compacted).then(|| DocChunks {
                    bytes,
                    ends,
                    seq: uint(latest),
                    heads,
                    whole: from == 0 || !first.get::<_, bool>(13),
                });
                record.chunks.push((uint(from), chunks));
            }
            Ok(batch)
        })
    }

    fn quarantines(&self) -> Result<Vec<(DocId, String)>, StoreError> {
        self.pg.run(|c| async move {
            c.query(
                &c.prepare_cached("SELECT doc, reason FROM quarantine ORDER BY doc")
                    .await?,
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((doc_of(r.get(0), "quarantine")?, r.get(1))))
            .collect()
        })
    }

    fn close_cleanly(&self) -> Result<(), StoreError> {
        // Every commit is durable when it returns, and the store id does
        // not depend on how a node stopped.
        Ok(())
    }

    fn doc_count(&self) -> Result<usize, StoreError> {
        self.pg.run(|c| async move {
            let n: i64 = c
                .query_one(&c.prepare_cached("SELECT count(*) FROM docs").await?, &[])
                .await?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn received(&self, doc: DocId) -> Result<Vec<(Head, i64)>, StoreError> {
        let k = key(doc);
        self.pg.run(move |c| async move {
            c.query(
                &c.prepare_cached(
                    "SELECT change, at_ms FROM change_received WHERE doc = $1 ORDER BY change",
                )
                .await?,
                &[&k],
            )
            .await?
            .iter()
            .map(|r| Ok((head_of(r.get(0), "change_received")?, r.get(1))))
            .collect()
        })
    }

    fn clock_skew(&self, doc: DocId) -> Result<Option<ClockSkew>, StoreError> {
        self.by_doc(
            "SELECT times, ahead_ms_max, claimed_ms FROM record_clock WHERE doc = $1",
            doc,
            |r| {
                Ok(ClockSkew {
                    times: u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX),
                    ahead_ms_max: r.get(1),
                    claimed_ms: r.get(2),
                })
            },
        )
    }

    fn record_row(&self, doc: DocId) -> Result<Option<RecordRow>, StoreError> {
        self.by_doc(
            "SELECT doc, kind, area, state, created_at, created_by, title, submitted_at, \
             conflicts, comments FROM record_index WHERE doc = $1",
            doc,
            row_of,
        )
    }

    fn unsummarised(&self, after: Option<DocId>, limit: usize) -> Result<Vec<DocId>, StoreError> {
        let after = after.map(key).unwrap_or_default();
        let limit = int(limit as u64);
        self.pg.run(move |c| async move {
            c.query(
                &c.prepare_cached(
                    "SELECT doc FROM record_index WHERE NOT summarised AND doc > $1 \
                 ORDER BY doc LIMIT $2",
                )
                .await?,
                &[&after, &limit],
            )
            .await?
            .iter()
            .map(|r| doc_of(r.get(0), "record_index"))
            .collect()
        })
    }

    fn fill_summary(&self, doc: DocId, summary: &RecordSummary) -> Result<bool, StoreError> {
        let k = key(doc);
        let s = summary.clone();
        self.pg.run(move |c| async move {
            let comments = i32::try_from(s.comments).unwrap_or(i32::MAX);
            Ok(c.execute(
                &c.prepare_cached(
                    "UPDATE record_index SET summarised = true, title = $2, submitted_at = $3, \
                 conflicts = $4, comments = $5 WHERE doc = $1 AND NOT summarised",
                )
                .await?,
                &[&k, &s.title, &s.submitted_at, &s.conflicts, &comments],
            )
            .await?
                == 1)
        })
    }

    fn opened_clean(&self) -> bool {
        true
    }

    fn all_docs(&self) -> Result<Vec<DocId>, StoreError> {
        self.pg.run(|c| async move {
            c.query(
                &c.prepare_cached("SELECT doc FROM docs ORDER BY doc")
                    .await?,
                &[],
            )
            .await?
            .iter()
            .map(|r| doc_of(r.get(0), "docs"))
            .collect()
        })
    }

    fn index_rows_agree(&self, _doc: DocId) -> Result<Option<String>, StoreError> {
        // Index, access and summary are one row here: nothing to disagree.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::storage::postgres::testing;

    fn write(doc: DocId, b: u8) -> DocWrite {
        DocWrite {
            doc,
            chunk: vec![b],
            heads: vec![Head::from(automerge::ChangeHash([b; 32]))],
            rebuild: false,
            index: None,
            erase: false,
            receipt: None,
        }
    }

    #[test]
    fn the_postgres_store_meets_the_store_contract() {
        crate::storage::conformance::every_check(&|| {
            Box::new(PgStore::open(testing::database()).unwrap())
        });
    }

    /// The batch read ahead really reads: a cold start's record comes
    /// whole in it, with its access and its latest heads, in one statement
    /// (the contract checks that what it holds is what single reads say).
    #[test]
    fn a_catch_up_batch_reads_every_record_asked_about_at_once() {
        let store = PgStore::open(testing::database()).unwrap();
        let (d, e) = (DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        store.commit(&[write(d, 1), write(e, 2)]).unwrap();
        store.commit(&[write(d, 3)]).unwrap();
        let batch = store
            .catch_up_batch(&[(d, Some(0)), (e, Some(1)), (d, Some(0))])
            .unwrap();
        let cold = &batch.records[&d];
        assert_eq!(
            cold.load.as_ref().map(|l| l.bytes.clone()),
            Some(vec![1, 3])
        );
        assert_eq!(cold.snapshot, Some(None));
        assert_eq!(cold.latest.as_ref().map(|l| l.0), Some(3));
        let warm = &batch.records[&e];
        assert_eq!(warm.chunks.len(), 1);
        assert_eq!(warm.chunks[0].0, 1);
        assert_eq!(
            warm.chunks[0].1.as_ref().map(|c| c.bytes.clone()),
            Some(vec![2])
        );
    }

    /// A write judged on a copy that another node has written since is
    /// refused, and only that write of its batch; writes of the same
    /// handle do not count against it, nor does a write with no base; an
    /// erased record refuses every write judged on a copy.
    #[test]
    fn a_write_judged_on_a_copy_another_node_overtook_is_left_out() {
        let url = testing::database_url();
        let a = PgStore::open(Pg::connect(&url).unwrap()).unwrap();
        let b = PgStore::open(Pg::connect(&url).unwrap()).unwrap();
        let (d, e) = (DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        let first = a.commit(&[write(d, 1)]).unwrap()[0];
        // A's own later write on its copy as of 0: its own write counts not.
        let own = a.commit_unless_stale(&[write(d, 2)], &[Some(0)]).unwrap();
        assert!(own[0].is_some());
        // B's copy as of `first` lacks A's second write; B's write to
        // another record in the same batch goes in.
        let mixed = b
            .commit_unless_stale(&[write(d, 3), write(e, 4)], &[Some(first), Some(0)])
            .unwrap();
        assert_eq!(mixed[0], None);
        let at = mixed[1].expect("the write to the other record is stored");
        assert_eq!(b.doc_seq(d).unwrap(), own[0]);
        assert_eq!(b.entries_after(0, at, 10).unwrap().len(), 3);
        // Judged on a copy as fresh as the store: stored.
        let fresh = b.commit_unless_stale(&[write(d, 5)], &own).unwrap();
        assert!(fresh[0].is_some());
        // Erased through B: A's copy is overtaken whatever its base.
        b.commit(&[DocWrite::erasure(e)]).unwrap();
        let late = a
            .commit_unless_stale(&[write(e, 6)], &[Some(u64::MAX >> 2)])
            .unwrap();
        assert_eq!(late, vec![None]);
        assert!(a.erased(e).unwrap().is_some());
        assert!(a.commit(&[write(d, 7)]).unwrap().len() == 1);
    }

    /// What one node writes is heard by another, which is first told it is
    /// listening; a node does not hear itself.
    #[test]
    fn a_node_hears_another_nodes_commits_and_device_changes_but_not_its_own() {
        use crate::storage::devices::DeviceStore;
        use crate::storage::notices::Notice;
        use crate::storage::Backend;
        let url = testing::database_url();
        let (pa, pb) = (Pg::connect(&url).unwrap(), Pg::connect(&url).unwrap());
        let wait = std::time::Duration::from_secs(10);
        let heard_by_a = pa.listen().unwrap();
        let heard_by_b = pb.listen().unwrap();
        assert_eq!(heard_by_a.recv_timeout(wait), Ok(Notice::Resumed));
        assert_eq!(heard_by_b.recv_timeout(wait), Ok(Notice::Resumed));
        let a = PgStore::open(pa.clone()).unwrap();
        let d = DocId::from_bytes([3; 16]);
        let seqs = a.commit(&[write(d, 1), write(d, 2)]).unwrap();
        assert_eq!(
            heard_by_b.recv_timeout(wait),
            Ok(Notice::Wrote {
                first: seqs[0],
                last: seqs[1]
            })
        );
        a.commit(&[DocWrite::erasure(d)]).unwrap();
        assert_eq!(heard_by_b.recv_timeout(wait), Ok(Notice::Rewritten(d)));
        assert!(matches!(
            heard_by_b.recv_timeout(wait),
            Ok(Notice::Wrote { .. })
        ));
        let devices = crate::storage::postgres::PgDeviceStore::new(pa.clone());
        let record = crate::storage::devices::DeviceRecord {
            id: "00112233445566778899aabbccddeeff".into(),
            name: "tablet".into(),
            token_hash: String::new(),
            created_at: 0,
            revoked: false,
            retiring: false,
            retired_at: None,
            expires_at: None,
            previous_token_hash: None,
            scope: None,
            user: None,
        };
        devices
            .insert(&record, &crate::storage::devices::TokenHash([1; 32]))
            .unwrap();
        assert!(devices.update(&record.id, &|r| r.revoked = true).unwrap());
        assert_eq!(heard_by_b.recv_timeout(wait), Ok(Notice::Device));
        // A heard none of it.
        assert!(heard_by_a
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
    }

    #[test]
    fn the_store_id_is_the_databases_whichever_node_opens_it() {
        let url = testing::database_url();
        let a = PgStore::open(Pg::connect(&url).unwrap()).unwrap();
        let b = PgStore::open(Pg::connect(&url).unwrap()).unwrap();
        assert_eq!(a.store_id(), b.store_id());
        assert!(a.opened_clean() && b.opened_clean());
        let other = PgStore::open(testing::database()).unwrap();
        assert_ne!(other.store_id(), a.store_id());
    }

    /// Two nodes commit at once, in random batch sizes, while a reader
    /// polls the watermark as a tablet's catch-up would: every position
    /// up to the watermark it was given is already there to read, so a
    /// cursor moved to the watermark never skips a write.
    #[test]
    fn interleaved_commits_from_two_nodes_never_let_a_reader_skip_a_write() {
        let url = testing::database_url();
        let nodes: Vec<Arc<PgStore>> = (0..2)
            .map(|_| Arc::new(PgStore::open(Pg::connect(&url).unwrap()).unwrap()))
            .collect();
        let reader = PgStore::open(Pg::connect(&url).unwrap()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let node = nodes[usize::from(w) % 2].clone();
                std::thread::spawn(move || {
                    let mut seqs = Vec::new();
                    for round in 0..15u8 {
                        let batch: Vec<DocWrite> = (0..1 + rand::random::<u8>() % 4)
                            .map(|i| {
                                write(DocId::from_bytes([w * 64 + round % 8 + i * 8; 16]), round)
                            })
                            .collect();
                        seqs.extend(node.commit(&batch).unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let watcher = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut cursor = 0;
                let mut seen = Vec::new();
                // Bounded: the writers finish in well under this many polls.
                for _ in 0..100_000 {
                    let finished = done.load(Ordering::SeqCst);
                    let mark = reader.feed_watermark().unwrap();
                    let entries = reader.entries_after(cursor, mark, 10_000).unwrap();
                    let positions: Vec<Seq> = entries.iter().map(|(s, _)| *s).collect();
                    assert_eq!(
                        positions,
                        (cursor + 1..=mark).collect::<Vec<_>>(),
                        "a reader at {cursor} given watermark {mark} must find every position"
                    );
                    seen.extend(positions);
                    cursor = mark;
                    if finished {
                        break;
                    }
                }
                seen
            })
        };
        let mut committed: Vec<Seq> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, Ordering::SeqCst);
        let seen = watcher.join().unwrap();
        committed.sort_unstable();
        assert_eq!(committed, (1..=committed.len() as u64).collect::<Vec<_>>());
        assert_eq!(seen, committed);
    }
}
