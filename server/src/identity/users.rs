//! Users: who may log in, with which role, for which areas; passwords
//! hashed with argon2; lockout after repeated failures.
//!
//! The registry and the login rules live here; `POST /v1/enroll`
//! (`login.rs`), the admin commands (`admin.rs`) and the admin HTTP API
//! (`admin_api.rs`) call into it. Users are kept in a
//! [`UserStore`], failed logins and per-address attempts counted in a
//! [`ThrottleStore`] (both in `storage`).

use std::net::IpAddr;
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Failed logins within [`LOCKOUT_WINDOW_SECS`] that lock an account.
pub const LOCKOUT_FAILURES: usize = 5;
/// The window in which failures count, in seconds.
pub const LOCKOUT_WINDOW_SECS: u64 = 15 * 60;
/// Shortest password accepted, in characters.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Login attempts one source address may make per window before it is
/// made to wait.
pub const ATTEMPTS_PER_ADDRESS_MAX: usize = 20;
/// The window for per-address throttling, in seconds.
pub const ADDRESS_WINDOW_SECS: u64 = 60;
/// Longest user name accepted, in characters.
pub const NAME_CHARS_MAX: usize = 64;
/// Most areas one user may have.
pub const AREAS_MAX: usize = 64;
/// Longest area name accepted, in characters.
pub const AREA_CHARS_MAX: usize = 128;

const COMMON_PASSWORDS: &str = include_str!("../../assets/common-passwords.txt");

pub use crate::storage::users::{User, UserStore};
pub use baraza_records::access::Role;

use crate::storage::store::StoreError;
use crate::storage::throttles::ThrottleStore;

/// Why a user operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The store failed.
    #[error("user store: {0}")]
    Store(StoreError),
    /// A stored user does not decode.
    #[error("stored user {0} is corrupt")]
    Corrupt(String),
    /// The password breaks a rule.
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    /// The user name breaks a rule.
    #[error("invalid user name: {0}")]
    InvalidName(&'static str),
    /// An area name, or the number of areas, breaks a rule.
    #[error("invalid areas: {0}")]
    InvalidAreas(&'static str),
    /// The name is taken.
    #[error("a user named {0:?} exists already")]
    Exists(String),
    /// No such user.
    #[error("no user named {0:?}")]
    NotFound(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl From<StoreError> for UserError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { reason, .. } => UserError::Corrupt(reason),
            e => UserError::Store(e),
        }
    }
}

/// Why a login was refused: the real reason, for the audit log and the
/// server's own log. Callers are never told which it was:
/// [`crate::api::login::LoginGate`] answers every refusal alike, so a login form
/// reveals neither which names exist nor the state of an account (its
/// holder hears of a lock or a disabling from an administrator).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// No user has that name.
    #[error("no such user")]
    UnknownUser,
    /// The password is wrong.
    #[error("wrong password")]
    WrongPassword,
    /// The password is wrong, and this failure locked the account.
    #[error("wrong password; the account is now locked")]
    WrongPasswordNowLocked,
    /// Locked after repeated failures, until an admin releases it; the
    /// password was not checked.
    #[error("the account is locked after repeated failed logins")]
    Locked,
    /// The account is disabled; the password was not checked.
    #[error("the account is disabled")]
    Disabled,
    /// Too many attempts from this address: wait. This one is shown to the
    /// caller: it depends only on the address, not on any account.
    #[error("too many login attempts from this address; wait {0} s")]
    Throttled(u64),
    /// The store failed; nothing was decided.
    #[error("user store unavailable")]
    Unavailable,
}

/// Checks a new password against the rules.
pub fn check_password(name: &str, password: &str) -> Result<(), UserError> {
    if password.chars().count() < PASSWORD_CHARS_MIN {
        return Err(UserError::WeakPassword(
            "it must have at least 8 characters",
        ));
    }
    let lower = password.to_lowercase();
    if lower == name.to_lowercase() {
        return Err(UserError::WeakPassword("it must not be the user name"));
    }
    let common = COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.trim() == lower);
    if common {
        return Err(UserError::WeakPassword(
            "it is on the list of common passwords",
        ));
    }
    Ok(())
}

/// Checks a new user name. Names appear in URLs (`/v1/admin/users/{name}`),
/// audit entries and record headers, so they are kept to letters, digits
/// and `.`, `-`, `_`, `@`.
pub fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::InvalidName("it is empty"));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(UserError::InvalidName("it is longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
    {
        return Err(UserError::InvalidName(
            "use only letters, digits and . - _ @",
        ));
    }
    Ok(())
}

/// Checks a user's areas: area names are matched against record headers,
/// so an empty or unprintable one could only ever be a mistake.
pub fn check_areas(areas: &[String]) -> Result<(), UserError> {
    if areas.len() > AREAS_MAX {
        return Err(UserError::InvalidAreas("a user may have at most 64 areas"));
    }
    for area in areas {
        if area.trim().is_empty() {
            return Err(UserError::InvalidAreas("an area name is empty"));
        }
        if area.chars().count() > AREA_CHARS_MAX {
            return Err(UserError::InvalidAreas(
                "an area name is longer than 128 characters",
            ));
        }
        if area.chars().any(char::is_control) {
            return Err(UserError::InvalidAreas(
                "an area name contains control characters",
            ));
        }
    }
    Ok(())
}

fn hash(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The users and the rules for them. Cheap to clone.
#[derive(Clone)]
pub struct UserRegistry {
    users: Arc<dyn UserStore>,
    throttles: Arc<dyn ThrottleStore>,
}

impl UserRegistry {
    /// The registry over `users`, counting failed logins in `throttles`.
    pub fn new(users: Arc<dyn UserStore>, throttles: Arc<dyn ThrottleStore>) -> UserRegistry {
        UserRegistry { users, throttles }
    }

    /// Where login attempts are counted, for the per-address throttle.
    pub fn throttles(&self) -> Arc<dyn ThrottleStore> {
        self.throttles.clone()
    }

    fn put(&self, user: &User) -> Result<(), UserError> {
        Ok(self.users.put(user, true)?)
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> Result<Option<User>, UserError> {
        Ok(self.users.get(name)?)
    }

    /// Adds a user.
    pub fn add(
        &self,
        name: &str,
        role: Role,
        areas: &[String],
        password: &str,
    ) -> Result<User, UserError> {
        check_name(name)?;
        check_areas(areas)?;
        if self.get(name)?.is_some() {
            return Err(UserError::Exists(name.to_string()));
        }
        check_password(name, password)?;
        let user = User {
            name: name.to_string(),
            role,
            areas: areas.to_vec(),
            disabled: false,
            locked: false,
            password_hash: hash(password)?,
        };
        self.put(&user)?;
        Ok(user)
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut User)) -> Result<User, UserError> {
        let mut user = self
            .get(name)?
            .ok_or_else(|| UserError::NotFound(name.to_string()))?;
        f(&mut user);
        self.put(&user)?;
        Ok(user)
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<User>, UserError> {
        Ok(self.users.list()?)
    }

    /// Disables or enables a user.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<User, UserError> {
        self.update(name, |u| u.disabled = disabled)
    }

    /// Replaces a user's areas.
    pub fn set_areas(&self, name: &str, areas: &[String]) -> Result<User, UserError> {
        check_areas(areas)?;
        self.update(name, |u| u.areas = areas.to_vec())
    }

    /// Releases a locked account.
    pub fn release(&self, name: &str) -> Result<User, UserError> {
        if self.get(name)?.is_none() {
            return Err(UserError::NotFound(name.to_string()));
        }
        self.throttles.clear_failures(name)?;
        self.update(name, |u| u.locked = false)
    }

    /// Checks a login at time `now` (unix seconds). A locked or disabled
    /// account is refused even with the right password.
    ///
    /// Every call runs exactly one argon2 verification, against a stand-in
    /// hash when the account could not log in anyway (unknown, locked,
    /// disabled), so the time taken does not tell those apart from a wrong
    /// password.
    pub fn login(&self, name: &str, password: &str, now: u64) -> Result<User, LoginError> {
        let mut user = match self.get(name).map_err(|_| LoginError::Unavailable)? {
            Some(user) if !user.disabled && !user.locked => user,
            other => {
                let _ = verify(password, DUMMY_HASH);
                return Err(match other {
                    None => LoginError::UnknownUser,
                    Some(user) if user.disabled => LoginError::Disabled,
                    Some(_) => LoginError::Locked,
                });
            }
        };
        if verify(password, &user.password_hash) {
            self.throttles
                .clear_failures(name)
                .map_err(|_| LoginError::Unavailable)?;
            return Ok(user);
        }
        let failures = self
            .throttles
            .login_failed(name, now, LOCKOUT_WINDOW_SECS)
            .map_err(|_| LoginError::Unavailable)?;
        user.locked = failures >= LOCKOUT_FAILURES;
        if user.locked {
            // Not flushed, as the failure count is not: a flush would make
            // the locking guess measurably slower than the others.
            self.users
                .put(&user, false)
                .map_err(|_| LoginError::Unavailable)?;
        }
        Err(if user.locked {
            LoginError::WrongPasswordNowLocked
        } else {
            LoginError::WrongPassword
        })
    }
}

/// A real argon2 hash of a password nobody has, for equal-time refusals.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4dq2oNtMqjtR3bgXjBxzNn6LrOjcXbUrmTnvYgDLkmI";

/// Per-address throttling of login attempts, counted in a
/// [`ThrottleStore`].
///
/// Every attempt counts from the moment it is made, so many concurrent
/// guesses cannot all slip in before the first is refused; a login that
/// then succeeds is [`forgive`](Self::forgive)n, so only failures add up.
/// A store that fails lets attempts through (and says so in the log):
/// the password check and the lockout still stand.
pub struct LoginThrottle {
    store: Arc<dyn ThrottleStore>,
}

impl LoginThrottle {
    /// A throttle counting in `store`.
    pub fn new(store: Arc<dyn ThrottleStore>) -> LoginThrottle {
        LoginThrottle { store }
    }

    /// Records an attempt from `addr` at `now`; refuses with the seconds to
    /// wait if the address made too many recently.
    pub fn attempt(&self, addr: IpAddr, now: u64) -> Result<(), LoginError> {
        match self
            .store
            .attempt(addr, now, ADDRESS_WINDOW_SECS, ATTEMPTS_PER_ADDRESS_MAX)
        {
            Ok(None) => Ok(()),
            Ok(Some(oldest)) => Err(LoginError::Throttled(
                ADDRESS_WINDOW_SECS.saturating_sub(now.saturating_sub(oldest)),
            )),
            Err(error) => {
                tracing::error!(%error, "cannot count a login attempt");
                Ok(())
            }
        }
    }

    /// Takes back the attempt `addr` made at `at`: the login succeeded, or
    /// the server rather than the password failed.
    pub fn forgive(&self, addr: IpAddr, at: u64) {
        if let Err(error) = self.store.forgive(addr, at) {
            tracing::error!(%error, "cannot take back a login attempt");
        }
    }

    /// Whether a refusal of `addr` at `now` should be reported (audited):
    /// true for the first refusal in each window.
    pub fn report_refusal(&self, addr: IpAddr, now: u64) -> bool {
        self.store
            .first_refusal(addr, now, ADDRESS_WINDOW_SECS)
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> UserRegistry {
        let storage = crate::storage::sled::temporary().unwrap();
        UserRegistry::new(storage.users, storage.throttles)
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(crate::storage::sled::temporary().unwrap().throttles)
    }

    #[test]
    fn weak_passwords_are_refused_with_the_reason() {
        assert!(check_password("achieng", "short").is_err());
        assert!(check_password("achieng", "Achieng").is_err());
        assert!(check_password("achieng1", "ACHIENG1").is_err());
        assert!(matches!(
            check_password("achieng", "Password123"),
            Err(UserError::WeakPassword(reason)) if reason.contains("common")
        ));
        assert!(check_password("achieng", "Nairobi123").is_err());
        assert!(check_password("achieng", "lamps on Olympic road").is_ok());
    }

    #[test]
    fn passwords_are_stored_hashed() {
        let users = registry();
        users
            .add(
                "achieng",
                Role::Liaison,
                &["kibera-north".into()],
                "lamps on Olympic road",
            )
            .unwrap();
        let stored = users.get("achieng").unwrap().unwrap();
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("lamps on Olympic road"));
        assert!(text.contains("$argon2id$"));
        let user = users
            .login("achieng", "lamps on Olympic road", 100)
            .unwrap();
        assert_eq!(user.role, Role::Liaison);
        assert_eq!(user.areas, vec!["kibera-north".to_string()]);
    }

    #[test]
    fn five_failures_lock_the_account_until_an_admin_releases_it() {
        let users = registry();
        users
            .add(
                "otieno",
                Role::Officer,
                &["mathare".into()],
                "night patrol B4",
            )
            .unwrap();
        for i in 0..4 {
            assert_eq!(
                users.login("otieno", "guess", 1_000 + i).err(),
                Some(LoginError::WrongPassword)
            );
        }
        assert_eq!(
            users.login("otieno", "guess", 1_004).err(),
            Some(LoginError::WrongPasswordNowLocked)
        );
        // Even the right password is refused while locked.
        assert_eq!(
            users.login("otieno", "night patrol B4", 1_005).err(),
            Some(LoginError::Locked)
        );
        users.release("otieno").unwrap();
        assert!(users.login("otieno", "night patrol B4", 1_006).is_ok());
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_lock() {
        let users = registry();
        users
            .add(
                "wanjiru",
                Role::Supervisor,
                &["kibera-north".into()],
                "review queue 2024",
            )
            .unwrap();
        for i in 0..8 {
            let now = 10_000 + i * (LOCKOUT_WINDOW_SECS / 3);
            assert_eq!(
                users.login("wanjiru", "nope", now).err(),
                Some(LoginError::WrongPassword)
            );
        }
        assert!(users.login("wanjiru", "review queue 2024", 20_000).is_ok());
    }

    #[test]
    fn the_stand_in_hash_for_unknown_users_is_a_real_one() {
        // Otherwise refusing an unknown name would be measurably faster.
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn unknown_users_and_disabled_accounts() {
        let users = registry();
        assert_eq!(
            users.login("ghost", "whatever1", 0).err(),
            Some(LoginError::UnknownUser)
        );
        users
            .add("kiprotich", Role::Officer, &[], "radio check 1900")
            .unwrap();
        users.set_disabled("kiprotich", true).unwrap();
        assert_eq!(
            users.login("kiprotich", "radio check 1900", 0).err(),
            Some(LoginError::Disabled)
        );
        // The failure bookkeeping of a refused account is left alone.
        assert_eq!(
            users.login("kiprotich", "wrong guess", 0).err(),
            Some(LoginError::Disabled)
        );
        assert!(!users.get("kiprotich").unwrap().unwrap().locked);
        assert!(matches!(
            users.add("kiprotich", Role::Admin, &[], "another good one"),
            Err(UserError::Exists(_))
        ));
    }

    #[test]
    fn one_address_is_throttled_then_let_through_again() {
        let throttle = throttle();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..ATTEMPTS_PER_ADDRESS_MAX as u64 {
            throttle.attempt(addr, 100 + i / 10).unwrap();
        }
        assert!(matches!(
            throttle.attempt(addr, 102),
            Err(LoginError::Throttled(_))
        ));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        throttle.attempt(other, 102).unwrap();
        throttle
            .attempt(addr, 100 + ADDRESS_WINDOW_SECS + 1)
            .unwrap();
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let throttle = throttle();
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        // Many officers behind one station router log in successfully.
        for _ in 0..ATTEMPTS_PER_ADDRESS_MAX * 3 {
            throttle.attempt(addr, 500).unwrap();
            throttle.forgive(addr, 500);
        }
        for _ in 0..ATTEMPTS_PER_ADDRESS_MAX {
            throttle.attempt(addr, 500).unwrap();
        }
        assert!(throttle.attempt(addr, 500).is_err());
        // A success frees the slot its own attempt took, no more.
        throttle.forgive(addr, 500);
        throttle.attempt(addr, 500).unwrap();
        assert!(throttle.attempt(addr, 500).is_err());
    }

    #[test]
    fn a_throttled_address_is_reported_once_per_window() {
        let throttle = throttle();
        let addr: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(throttle.report_refusal(addr, 1_000));
        assert!(!throttle.report_refusal(addr, 1_001));
        assert!(!throttle.report_refusal(addr, 1_000 + ADDRESS_WINDOW_SECS - 1));
        assert!(throttle.report_refusal(addr, 1_000 + ADDRESS_WINDOW_SECS));
        assert!(throttle.report_refusal("192.0.2.9".parse().unwrap(), 1_001));
    }

    #[test]
    fn names_and_areas_are_checked() {
        for good in [
            "otieno",
            "cpl.otieno",
            "w_njeri-2",
            "admin@kibera",
            "Wanjirũ",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a%20",
            "x\n",
            &"x".repeat(NAME_CHARS_MAX + 1),
        ] {
            assert!(
                matches!(check_name(bad), Err(UserError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(check_areas(&[]).is_ok());
        assert!(check_areas(&["kibera-north".into(), "Mathare 3".into()]).is_ok());
        for bad in [
            vec![" ".to_string()],
            vec!["a\u{7}".into()],
            vec!["k".into(); AREAS_MAX + 1],
        ] {
            assert!(matches!(check_areas(&bad), Err(UserError::InvalidAreas(_))));
        }
        let users = registry();
        assert!(matches!(
            users.add("two words", Role::Officer, &[], "radio check 1900"),
            Err(UserError::InvalidName(_))
        ));
        users
            .add("njeri", Role::Officer, &[], "radio check 1900")
            .unwrap();
        assert!(matches!(
            users.set_areas("njeri", &["".into()]),
            Err(UserError::InvalidAreas(_))
        ));
        assert!(users.get("njeri").unwrap().unwrap().areas.is_empty());
    }
}
