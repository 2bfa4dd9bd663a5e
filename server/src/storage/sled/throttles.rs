//! [`ThrottleStore`] for the embedded, single-process server: each
//! account's failed logins in sled (tree `login_failures`: name → times,
//! 8 bytes big-endian each), so a restart does not reset a lockout in
//! progress; per-address attempts in memory, as they are cheap to count
//! and need not survive a restart (one process sees every attempt).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::storage::store::StoreError;
use crate::storage::throttles::ThrottleStore;

/// Addresses remembered before quiet ones are pruned.
const ADDRESSES_PRUNE: usize = 10_000;

/// Login attempt counts of one embedded server.
pub struct SledThrottles {
    failures: sled::Tree,
    addresses: Mutex<Addresses>,
}

#[derive(Default)]
struct Addresses {
    attempts: HashMap<IpAddr, Vec<u64>>,
    /// When each address's throttling was last reported.
    reported: HashMap<IpAddr, u64>,
}

impl SledThrottles {
    /// Opens (creating if needed) the failures tree of `db`.
    pub fn open(db: &sled::Db) -> Result<SledThrottles, StoreError> {
        Ok(SledThrottles {
            failures: db.open_tree("login_failures")?,
            addresses: Mutex::default(),
        })
    }

    /// Every update is a single push, remove or insert, so the counts stay
    /// consistent even if a holder panicked: a poisoned lock is taken over.
    fn addresses(&self) -> std::sync::MutexGuard<'_, Addresses> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode_times(v: &[u8]) -> Vec<u64> {
    v.chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

impl ThrottleStore for SledThrottles {
    fn attempt(
        &self,
        addr: IpAddr,
        now: u64,
        window_secs: u64,
        max: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mut a = self.addresses();
        let recent = a.attempts.entry(addr).or_default();
        recent.retain(|t| now.saturating_sub(*t) < window_secs);
        if recent.len() >= max {
            return Ok(Some(recent.first().copied().unwrap_or(now)));
        }
        recent.push(now);
        if a.attempts.len() > ADDRESSES_PRUNE {
            a.attempts
                .retain(|_, v| v.iter().any(|t| now.saturating_sub(*t) < window_secs));
        }
        Ok(None)
    }

    fn forgive(&self, addr: IpAddr, at: u64) -> Result<(), StoreError> {
        let mut a = self.addresses();
        if let Some(recent) = a.attempts.get_mut(&addr) {
            if let Some(i) = recent.iter().rposition(|t| *t == at) {
                recent.remove(i);
            }
            if recent.is_empty() {
                a.attempts.remove(&addr);
            }
        }
        Ok(())
    }

    fn first_refusal(&self, addr: IpAddr, now: u64, window_secs: u64) -> Result<bool, StoreError> {
        let mut a = self.addresses();
        if a.reported.len() > ADDRESSES_PRUNE {
            a.reported
                .retain(|_, t| now.saturating_sub(*t) < window_secs);
        }
        Ok(match a.reported.get(&addr) {
            Some(t) if now.saturating_sub(*t) < window_secs => false,
            _ => {
                a.reported.insert(addr, now);
                true
            }
        })
    }

    fn login_failed(&self, user: &str, now: u64, window_secs: u64) -> Result<usize, StoreError> {
        let mut count = 0;
        self.failures.update_and_fetch(user.as_bytes(), |old| {
            let mut times = old.map(decode_times).unwrap_or_default();
            times.retain(|t| now.saturating_sub(*t) < window_secs);
            times.push(now);
            count = times.len();
            Some(
                times
                    .iter()
                    .flat_map(|t| t.to_be_bytes())
                    .collect::<Vec<u8>>(),
            )
        })?;
        Ok(count)
    }

    fn clear_failures(&self, user: &str) -> Result<(), StoreError> {
        self.failures.remove(user.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_within_their_window_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let t = SledThrottles::open(&db).unwrap();
            assert_eq!(t.login_failed("otieno", 100, 60).unwrap(), 1);
            assert_eq!(t.login_failed("otieno", 150, 60).unwrap(), 2);
            assert_eq!(t.login_failed("amina", 150, 60).unwrap(), 1);
            db.flush().unwrap();
        }
        let db = super::super::reopened(|| Ok(sled::open(dir.path())?));
        let t = SledThrottles::open(&db).unwrap();
        // The one at 100 is out of the window by 170.
        assert_eq!(t.login_failed("otieno", 170, 60).unwrap(), 2);
        t.clear_failures("otieno").unwrap();
        assert_eq!(t.login_failed("otieno", 171, 60).unwrap(), 1);
    }
}
