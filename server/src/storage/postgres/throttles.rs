//! [`ThrottleStore`] in PostgreSQL, counted across every node: tables
//! `login_attempts` (address, time), `login_refusals` (address → when its
//! throttling was last reported) and `login_failures` (name, time). Each
//! count-then-write runs in one transaction under a transaction advisory
//! lock on the address or name, so two nodes never both let through the
//! last attempt a window allows.
//!
//! Writes commit with `synchronous_commit` off: losing the last counts in
//! a database crash only forgets a few failures, and a flush would make
//! a wrong password for a real name measurably slower than an unknown one.

use std::net::IpAddr;
use std::sync::Arc;

use crate::storage::postgres::{int, uint, Pg};
use crate::storage::store::StoreError;
use crate::storage::throttles::ThrottleStore;

/// Login attempt counts shared by the nodes of one database.
pub struct PgThrottles {
    pg: Arc<Pg>,
}

impl PgThrottles {
    /// The counts of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgThrottles {
        PgThrottles { pg }
    }
}

/// The lock key of one address or name within its table's counts.
fn lock_key(kind: &str, what: &str) -> String {
    format!("baraza/{kind}/{what}")
}

/// The oldest time still inside a window of `window` seconds before
/// `now`: a count at `t` is in it while `now - t < window`.
fn window_start(now: u64, window: u64) -> i64 {
    int(now).saturating_sub(int(window)).saturating_add(1)
}

impl ThrottleStore for PgThrottles {
    fn attempt(
        &self,
        addr: IpAddr,
        now: u64,
        window_secs: u64,
        max: usize,
    ) -> Result<Option<u64>, StoreError> {
        let addr = addr.to_string();
        let from = window_start(now, window_secs);
        let max = int(max as u64);
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .await?;
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .await?,
                &[&lock_key("attempts", &addr)],
            )
            .await?;
            // Every address's attempts out of the window go, not only
            // this one's, so the table holds one window's worth.
            tx.execute(
                &tx.prepare_cached("DELETE FROM login_attempts WHERE at < $1")
                    .await?,
                &[&from],
            )
            .await?;
            let row = tx
                .query_one(
                    &tx.prepare_cached(
                        "SELECT count(*), min(at) FROM login_attempts WHERE addr = $1 AND at >= $2",
                    )
                    .await?,
                    &[&addr, &from],
                )
                .await?;
            let (count, oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
            if count >= max {
                tx.commit().await?;
                return Ok(Some(oldest.map(uint).unwrap_or(now)));
            }
            tx.execute(
                &tx.prepare_cached("INSERT INTO login_attempts (addr, at) VALUES ($1, $2)")
                    .await?,
                &[&addr, &int(now)],
            )
            .await?;
            tx.commit().await?;
            Ok(None)
        })
    }

    fn forgive(&self, addr: IpAddr, at: u64) -> Result<(), StoreError> {
        let addr = addr.to_string();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached(
                    "DELETE FROM login_attempts WHERE ctid = \
                 (SELECT ctid FROM login_attempts WHERE addr = $1 AND at = $2 LIMIT 1)",
                )
                .await?,
                &[&addr, &int(at)],
            )
            .await?;
            Ok(())
        })
    }

    fn first_refusal(&self, addr: IpAddr, now: u64, window_secs: u64) -> Result<bool, StoreError> {
        let addr = addr.to_string();
        let from = window_start(now, window_secs);
        self.pg.run(move |c| async move {
            // Inserted, or replaced because the last report is out of the
            // window: either way this refusal is the first to report.
            let rows = c
                .query(
                    &c.prepare_cached(
                        "INSERT INTO login_refusals (addr, at) VALUES ($1, $2) \
                     ON CONFLICT (addr) DO UPDATE SET at = EXCLUDED.at \
                     WHERE login_refusals.at < $3 RETURNING 1",
                    )
                    .await?,
                    &[&addr, &int(now), &from],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn login_failed(&self, user: &str, now: u64, window_secs: u64) -> Result<usize, StoreError> {
        let user = user.to_string();
        let from = window_start(now, window_secs);
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .await?;
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .await?,
                &[&lock_key("failures", &user)],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("DELETE FROM login_failures WHERE name = $1 AND at < $2")
                    .await?,
                &[&user, &from],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("INSERT INTO login_failures (name, at) VALUES ($1, $2)")
                    .await?,
                &[&user, &int(now)],
            )
            .await?;
            let count: i64 = tx
                .query_one(
                    &tx.prepare_cached("SELECT count(*) FROM login_failures WHERE name = $1")
                        .await?,
                    &[&user],
                )
                .await?
                .get(0);
            tx.commit().await?;
            Ok(usize::try_from(count).unwrap_or(usize::MAX))
        })
    }

    fn clear_failures(&self, user: &str) -> Result<(), StoreError> {
        let user = user.to_string();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached("DELETE FROM login_failures WHERE name = $1")
                    .await?,
                &[&user],
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
    fn two_nodes_share_one_window_of_attempts_per_address() {
        let url = testing::database_url();
        let a = PgThrottles::new(Pg::connect(&url).unwrap());
        let b = PgThrottles::new(Pg::connect(&url).unwrap());
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(a.attempt(addr, 100, 60, 3).unwrap(), None);
        assert_eq!(b.attempt(addr, 110, 60, 3).unwrap(), None);
        assert_eq!(a.attempt(addr, 120, 60, 3).unwrap(), None);
        // The fourth within the window is refused on either node, and
        // told when the oldest counted one was.
        assert_eq!(b.attempt(addr, 130, 60, 3).unwrap(), Some(100));
        assert_eq!(b.attempt(other, 130, 60, 3).unwrap(), None);
        // A forgiven attempt makes room; one out of the window too.
        a.forgive(addr, 120).unwrap();
        assert_eq!(b.attempt(addr, 131, 60, 3).unwrap(), None);
        assert_eq!(a.attempt(addr, 132, 60, 3).unwrap(), Some(100));
        assert_eq!(a.attempt(addr, 160, 60, 3).unwrap(), None);

        // Throttling is reported once per window, whichever node sees it.
        assert!(a.first_refusal(addr, 200, 60).unwrap());
        assert!(!b.first_refusal(addr, 230, 60).unwrap());
        assert!(b.first_refusal(addr, 260, 60).unwrap());
        assert!(a.first_refusal(other, 230, 60).unwrap());
    }

    #[test]
    fn concurrent_attempts_from_two_nodes_never_exceed_the_limit() {
        let url = testing::database_url();
        let nodes: Vec<Arc<PgThrottles>> = (0..2)
            .map(|_| Arc::new(PgThrottles::new(Pg::connect(&url).unwrap())))
            .collect();
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let node = nodes[i % 2].clone();
                std::thread::spawn(move || {
                    (0..5)
                        .filter(|_| node.attempt(addr, 500, 60, 10).unwrap().is_none())
                        .count()
                })
            })
            .collect();
        let let_through: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(let_through, 10);
    }

    #[test]
    fn failures_count_within_their_window_on_every_node() {
        let url = testing::database_url();
        let a = PgThrottles::new(Pg::connect(&url).unwrap());
        let b = PgThrottles::new(Pg::connect(&url).unwrap());
        assert_eq!(a.login_failed("otieno", 100, 60).unwrap(), 1);
        assert_eq!(b.login_failed("otieno", 150, 60).unwrap(), 2);
        assert_eq!(b.login_failed("amina", 150, 60).unwrap(), 1);
        // The one at 100 is out of the window by 170.
        assert_eq!(a.login_failed("otieno", 170, 60).unwrap(), 2);
        b.clear_failures("otieno").unwrap();
        assert_eq!(a.login_failed("otieno", 171, 60).unwrap(), 1);
    }
}
