//! [`SessionStore`] in PostgreSQL: table `review_sessions` (cookie hash →
//! the session as JSON), so a supervisor signed in through one node is
//! signed in on all of them.

use std::sync::Arc;

use crate::storage::postgres::Pg;
use crate::storage::sessions::{ReviewSession, SessionStore};
use crate::storage::store::StoreError;

/// Review desk sessions in PostgreSQL.
pub struct PgSessionStore {
    pg: Arc<Pg>,
}

impl PgSessionStore {
    /// The sessions of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgSessionStore {
        PgSessionStore { pg }
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        tree: "review_sessions",
        reason: e.to_string(),
    }
}

impl SessionStore for PgSessionStore {
    fn put(&self, key: &[u8; 32], session: &ReviewSession) -> Result<(), StoreError> {
        let body = serde_json::to_string(session).map_err(corrupt)?;
        let key = key.to_vec();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached(
                    "INSERT INTO review_sessions (key, body) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body",
                )
                .await?,
                &[&key, &body],
            )
            .await?;
            Ok(())
        })
    }

    fn get(&self, key: &[u8; 32]) -> Result<Option<ReviewSession>, StoreError> {
        let key = key.to_vec();
        self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT body FROM review_sessions WHERE key = $1")
                        .await?,
                    &[&key],
                )
                .await?;
            row.map(|r| serde_json::from_str(r.get(0)).map_err(corrupt))
                .transpose()
        })
    }

    fn remove(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        let key = key.to_vec();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached("DELETE FROM review_sessions WHERE key = $1")
                    .await?,
                &[&key],
            )
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::testing;

    #[test]
    fn a_session_made_on_one_node_is_seen_and_ended_on_another() {
        let url = testing::database_url();
        let a = PgSessionStore::new(Pg::connect(&url).unwrap());
        let b = PgSessionStore::new(Pg::connect(&url).unwrap());
        let key = [7u8; 32];
        let session = ReviewSession {
            user: "sgt.wanjiru".into(),
            csrf: "c".repeat(43),
            expires_at: 2_000_000_000,
        };
        assert_eq!(b.get(&key).unwrap(), None);
        a.put(&key, &session).unwrap();
        assert_eq!(b.get(&key).unwrap(), Some(session));
        b.remove(&key).unwrap();
        assert_eq!(a.get(&key).unwrap(), None);
        assert_eq!(a.get(&[8u8; 32]).unwrap(), None);
    }
}
