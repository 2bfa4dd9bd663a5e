//! [`AttachmentStore`] in PostgreSQL: table `attachment_chunks` (digest,
//! offset → the bytes of one uploaded chunk) and `attachments` (the
//! digests checked whole, with their size). An append counts what is held
//! and writes its chunk in one transaction under an advisory lock on the
//! digest, so two nodes taking chunks of the same upload cannot both
//! write at one offset; it commits (with `synchronous_commit` on) before
//! it is acknowledged.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::storage::attachments::{Appended, AttachmentStore, Digest, Finished, Held};
use crate::storage::postgres::{int, uint, Pg};
use crate::storage::store::StoreError;

/// Attachments' bytes in PostgreSQL.
pub struct PgAttachments {
    pg: Arc<Pg>,
}

impl PgAttachments {
    /// The attachments of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgAttachments {
        PgAttachments { pg }
    }
}

const HELD: &str = "SELECT (SELECT size FROM attachments WHERE sha = $1), \
     (SELECT coalesce(max(at + length(bytes)), 0)::bigint FROM attachment_chunks WHERE sha = $1), \
     (SELECT count(*) FROM attachment_chunks WHERE sha = $1)";

async fn held_in(
    c: &impl deadpool_postgres::GenericClient,
    sha: &[u8],
) -> Result<Held, StoreError> {
    let row = c.query_one(HELD, &[&sha]).await?;
    let whole: Option<i64> = row.get(0);
    let end: i64 = row.get(1);
    let chunks: i64 = row.get(2);
    Ok(match whole {
        Some(size) => Held::Whole(uint(size)),
        None if chunks == 0 => Held::Nothing,
        None => Held::Partial(uint(end)),
    })
}

const LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('attachment:' || encode($1, 'hex'), 0))";

impl AttachmentStore for PgAttachments {
    fn held(&self, sha: &Digest) -> Result<Held, StoreError> {
        let sha = sha.to_vec();
        self.pg.run(move |c| async move { held_in(&c, &sha).await })
    }

    fn append(&self, sha: &Digest, offset: u64, bytes: &[u8]) -> Result<Appended, StoreError> {
        let sha = sha.to_vec();
        let bytes = bytes.to_vec();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(&tx.prepare_cached(LOCK).await?, &[&sha]).await?;
            let held = held_in(&tx, &sha).await?;
            let at = match held {
                Held::Nothing => 0,
                Held::Partial(end) => end,
                Held::Whole(_) => return Ok(Appended::NotAtEnd(held)),
            };
            if at != offset {
                return Ok(Appended::NotAtEnd(held));
            }
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO attachment_chunks (sha, at, bytes, written_ms) VALUES ($1, $2, $3, $4)",
                )
                .await?,
                &[&sha, &int(at), &bytes, &now_ms()],
            )
            .await?;
            tx.commit().await?;
            Ok(Appended::To(at + bytes.len() as u64))
        })
    }

    fn finish(&self, sha: &Digest) -> Result<Finished, StoreError> {
        let name = *sha;
        let sha = sha.to_vec();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(&tx.prepare_cached(LOCK).await?, &[&sha]).await?;
            match held_in(&tx, &sha).await? {
                Held::Whole(size) => return Ok(Finished::Whole(size)),
                Held::Nothing => return Ok(Finished::Mismatch),
                Held::Partial(_) => {}
            }
            // Chunk by chunk, so hashing a large upload holds one chunk
            // at a time.
            let mut hasher = Sha256::new();
            let mut end = 0u64;
            let mut contiguous = true;
            let offsets = tx
                .query(
                    "SELECT at, length(bytes) FROM attachment_chunks WHERE sha = $1 ORDER BY at",
                    &[&sha],
                )
                .await?;
            for row in offsets {
                let at = uint(row.get(0));
                if at != end {
                    contiguous = false;
                    break;
                }
                let chunk = tx
                    .query_one(
                        "SELECT bytes FROM attachment_chunks WHERE sha = $1 AND at = $2",
                        &[&sha, &int(at)],
                    )
                    .await?;
                let bytes: &[u8] = chunk.get(0);
                hasher.update(bytes);
                end = at + bytes.len() as u64;
            }
            if !contiguous || <[u8; 32]>::from(hasher.finalize()) != name {
                tx.execute("DELETE FROM attachment_chunks WHERE sha = $1", &[&sha])
                    .await?;
                tx.commit().await?;
                return Ok(Finished::Mismatch);
            }
            tx.execute(
                "INSERT INTO attachments (sha, size, stored_ms) VALUES ($1, $2, $3)",
                &[&sha, &int(end), &now_ms()],
            )
            .await?;
            tx.commit().await?;
            Ok(Finished::Whole(end))
        })
    }

    fn read(&self, sha: &Digest, offset: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha.to_vec();
        self.pg.run(move |c| async move {
            let whole = c
                .query_opt(
                    &c.prepare_cached("SELECT size FROM attachments WHERE sha = $1")
                        .await?,
                    &[&sha],
                )
                .await?;
            let Some(whole) = whole else {
                return Ok(None);
            };
            let size = uint(whole.get(0));
            let start = offset.min(size);
            let stop = start.saturating_add(len as u64).min(size);
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT at, bytes FROM attachment_chunks \
                         WHERE sha = $1 AND at < $3 AND at + length(bytes) > $2 ORDER BY at",
                    )
                    .await?,
                    &[&sha, &int(start), &int(stop)],
                )
                .await?;
            let mut out = Vec::with_capacity((stop - start) as usize);
            for row in rows {
                let at = uint(row.get(0));
                let bytes: &[u8] = row.get(1);
                let from = start.saturating_sub(at) as usize;
                let to = ((stop - at) as usize).min(bytes.len());
                out.extend_from_slice(&bytes[from.min(to)..to]);
            }
            if out.len() as u64 != stop - start {
                return Err(StoreError::Corrupt {
                    tree: "attachment_chunks",
                    reason: format!("bytes {start}..{stop} of a whole attachment are not all held"),
                });
            }
            Ok(Some(out))
        })
    }

    fn note_owner(&self, sha: &Digest, record: baraza_protocol::DocId) -> Result<(), StoreError> {
        let sha = sha.to_vec();
        let doc = record.as_bytes().to_vec();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached(
                    "INSERT INTO attachment_owners (sha, doc) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .await?,
                &[&sha, &doc],
            )
            .await?;
            Ok(())
        })
    }

    fn kept(&self) -> Result<Vec<crate::storage::attachments::Kept>, StoreError> {
        self.owners_and_kept()
    }

    fn remove(&self, sha: &Digest) -> Result<(), StoreError> {
        let sha = sha.to_vec();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(&tx.prepare_cached(LOCK).await?, &[&sha]).await?;
            tx.execute("DELETE FROM attachments WHERE sha = $1", &[&sha])
                .await?;
            tx.execute("DELETE FROM attachment_chunks WHERE sha = $1", &[&sha])
                .await?;
            tx.execute("DELETE FROM attachment_owners WHERE sha = $1", &[&sha])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

fn now_ms() -> i64 {
    int(crate::clock::unix_now_ms())
}

impl PgAttachments {
    fn owners_and_kept(&self) -> Result<Vec<crate::storage::attachments::Kept>, StoreError> {
        self.pg.run(move |c| async move {
            let rows = c
                .query(
                    "SELECT s.sha, a.size, \
                       coalesce(a.stored_ms, (SELECT max(written_ms) FROM attachment_chunks \
                         WHERE sha = s.sha), 0), \
                       (SELECT coalesce(max(at + length(bytes)), 0)::bigint \
                         FROM attachment_chunks WHERE sha = s.sha), \
                       coalesce((SELECT array_agg(doc) FROM attachment_owners \
                         WHERE sha = s.sha), '{}') \
                     FROM (SELECT sha FROM attachments UNION \
                           SELECT DISTINCT sha FROM attachment_chunks) s \
                     LEFT JOIN attachments a ON a.sha = s.sha",
                    &[],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let sha: Vec<u8> = row.get(0);
                let Ok(sha) = <[u8; 32]>::try_from(sha.as_slice()) else {
                    continue;
                };
                let size: Option<i64> = row.get(1);
                let changed: i64 = row.get(2);
                let end: i64 = row.get(3);
                let owners: Vec<Vec<u8>> = row.get(4);
                out.push(crate::storage::attachments::Kept {
                    sha,
                    held: match size {
                        Some(size) => Held::Whole(uint(size)),
                        None => Held::Partial(uint(end)),
                    },
                    changed_ms: uint(changed),
                    owners: owners
                        .iter()
                        .filter_map(|d| <[u8; 16]>::try_from(d.as_slice()).ok())
                        .map(baraza_protocol::DocId::from_bytes)
                        .collect(),
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::testing;

    #[test]
    fn postgres_keeps_the_contract() {
        crate::storage::attachments::conformance::run(&PgAttachments::new(testing::database()));
    }
}
