//! Counts of login attempts: per source address (the throttle) and per
//! account (the lockout). The [`ThrottleStore`] keeps the counts; the
//! limits and windows are `identity::users`'s. Behind a trait so that
//! nodes sharing a database can count together: five bad passwords spread
//! over two nodes lock an account as five on one do.

use std::net::IpAddr;

use crate::storage::store::StoreError;

/// Where login attempts are counted. Times are unix seconds.
pub trait ThrottleStore: Send + Sync {
    /// Counts an attempt from `addr` at `now`, unless `max` attempts were
    /// counted within the `window_secs` before it: then counts nothing and
    /// returns the time of the oldest of those.
    fn attempt(
        &self,
        addr: IpAddr,
        now: u64,
        window_secs: u64,
        max: usize,
    ) -> Result<Option<u64>, StoreError>;
    /// Takes back the attempt `addr` made at `at`.
    fn forgive(&self, addr: IpAddr, at: u64) -> Result<(), StoreError>;
    /// Whether a refusal of `addr` at `now` is its first within
    /// `window_secs` of the last one noted; if so it is noted.
    fn first_refusal(&self, addr: IpAddr, now: u64, window_secs: u64) -> Result<bool, StoreError>;
    /// Counts a failed login to `user` at `now`; returns how many failures
    /// there were within `window_secs`, this one included. Need not reach
    /// the disk before returning: a flush here would make a wrong password
    /// for a real name measurably slower than an unknown name.
    fn login_failed(&self, user: &str, now: u64, window_secs: u64) -> Result<usize, StoreError>;
    /// Forgets every failure counted for `user` (a login succeeded, or an
    /// administrator released the account).
    fn clear_failures(&self, user: &str) -> Result<(), StoreError>;
}
