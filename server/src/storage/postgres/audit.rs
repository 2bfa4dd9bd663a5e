//! [`AuditStore`] in PostgreSQL: tables `audit` (seq → the entry as JSON
//! text, byte for byte as hashed) and `audit_head` (one row: seq, hash).
//!
//! One chain for every node: an entry is made from the last one read and
//! inserted under the next position, which is the table's primary key. If
//! another node appended first, the insert finds the position taken, the
//! transaction is rolled back and the entry is made again from the new
//! last one. So the chain has one order, never a fork, whichever nodes
//! write at once.

use std::sync::{Arc, Mutex};

use crate::storage::audit::{AuditError, AuditStore, Entry, Kept};
use crate::storage::postgres::{int, uint, Pg};
use crate::storage::store::StoreError;

/// Times an append is made again after losing the race for a position.
const APPEND_TRIES: usize = 64;

/// The audit log's entries in PostgreSQL.
pub struct PgAuditStore {
    pg: Arc<Pg>,
    /// Appends of this node wait for each other rather than race.
    lock: Mutex<()>,
}

impl PgAuditStore {
    /// The audit log of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgAuditStore {
        PgAuditStore {
            pg,
            lock: Mutex::new(()),
        }
    }
}

fn kept(seq: i64, body: &str) -> Kept {
    Kept {
        seq: uint(seq),
        entry: serde_json::from_str(body).ok(),
    }
}

impl AuditStore for PgAuditStore {
    fn append(
        &self,
        next: &mut dyn FnMut(Option<Kept>) -> Result<Entry, AuditError>,
    ) -> Result<Entry, AuditError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..APPEND_TRIES {
            let entry = next(self.last()?)?;
            let body = serde_json::to_string(&entry).map_err(|_| AuditError::Corrupt(entry.seq))?;
            let (seq, hash) = (int(entry.seq), entry.hash.clone());
            let stored = self.pg.run(move |mut c| async move {
                let tx = c.transaction().await?;
                let inserted = tx
                    .execute(
                        &tx.prepare_cached("INSERT INTO audit (seq, body) VALUES ($1, $2) ON CONFLICT (seq) DO NOTHING").await?,
                        &[&seq, &body],
                    )
                    .await?;
                if inserted == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                tx.execute(
                    &tx.prepare_cached("INSERT INTO audit_head (one, seq, hash) VALUES (true, $1, $2) \
                     ON CONFLICT (one) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash").await?,
                    &[&seq, &hash],
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            })?;
            if stored {
                return Ok(entry);
            }
        }
        Err(AuditError::Store(StoreError::Db(
            "the audit log kept growing under this append".into(),
        )))
    }

    fn last(&self) -> Result<Option<Kept>, AuditError> {
        Ok(self.pg.run(|c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT seq, body FROM audit ORDER BY seq DESC LIMIT 1")
                        .await?,
                    &[],
                )
                .await?;
            Ok(row.map(|r| kept(r.get(0), r.get(1))))
        })?)
    }

    fn get(&self, seq: u64) -> Result<Option<Kept>, AuditError> {
        Ok(self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT seq, body FROM audit WHERE seq = $1")
                        .await?,
                    &[&int(seq)],
                )
                .await?;
            Ok(row.map(|r| kept(r.get(0), r.get(1))))
        })?)
    }

    fn after(&self, after: u64, limit: usize) -> Result<Vec<Kept>, AuditError> {
        let limit = int(limit as u64);
        Ok(self.pg.run(move |c| async move {
            Ok(c.query(
                &c.prepare_cached(
                    "SELECT seq, body FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .await?,
                &[&int(after), &limit],
            )
            .await?
            .iter()
            .map(|r| kept(r.get(0), r.get(1)))
            .collect())
        })?)
    }

    fn tail(&self, n: usize) -> Result<Vec<Kept>, AuditError> {
        let n = int(n as u64);
        let mut tail: Vec<Kept> = self.pg.run(move |c| async move {
            Ok(c.query(
                &c.prepare_cached("SELECT seq, body FROM audit ORDER BY seq DESC LIMIT $1")
                    .await?,
                &[&n],
            )
            .await?
            .iter()
            .map(|r| kept(r.get(0), r.get(1)))
            .collect())
        })?;
        tail.reverse();
        Ok(tail)
    }

    fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        Ok(self.pg.run(|c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT seq, hash FROM audit_head").await?,
                    &[],
                )
                .await?;
            Ok(row.map(|r| (uint(r.get(0)), r.get(1))))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::audit::{AuditLog, Verdict};
    use crate::storage::postgres::testing;

    #[test]
    fn two_nodes_appending_at_once_make_one_chain_and_an_altered_row_is_found() {
        let url = testing::database_url();
        let logs: Vec<AuditLog> = (0..2)
            .map(|_| AuditLog::new(Arc::new(PgAuditStore::new(Pg::connect(&url).unwrap()))))
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let log = logs[i % 2].clone();
                std::thread::spawn(move || {
                    for n in 0..10 {
                        log.append("sync", serde_json::json!({ "writer": i, "n": n }))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(logs[0].verify().unwrap(), Verdict::Intact { entries: 40 });
        assert_eq!(logs[1].verify_tail(10).unwrap(), (40, None));

        // `audit verify` on one node while the other appends: each pass
        // finds the chain whole (an append between reading the head and
        // the entries is not damage).
        let writer = {
            let log = logs[1].clone();
            std::thread::spawn(move || {
                for n in 0..60 {
                    log.append("sync", serde_json::json!({ "late": n }))
                        .unwrap();
                }
            })
        };
        let mut passes = 0;
        while !writer.is_finished() && passes < 500 {
            assert!(
                matches!(logs[0].verify().unwrap(), Verdict::Intact { .. }),
                "pass {passes}"
            );
            assert_eq!(logs[0].verify_tail(5).unwrap().1, None, "pass {passes}");
            passes += 1;
        }
        writer.join().unwrap();
        assert!(passes > 0);
        assert_eq!(logs[0].verify().unwrap(), Verdict::Intact { entries: 100 });

        // Someone with database access edits one entry.
        let pg = Pg::connect(&url).unwrap();
        pg.run(|c| async move {
            c.execute(
                "UPDATE audit SET body = replace(body, '\"sync\"', '\"sunc\"') WHERE seq = 17",
                &[],
            )
            .await?;
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            logs[1].verify().unwrap(),
            Verdict::Broken { at: 17, .. }
        ));
    }
}
