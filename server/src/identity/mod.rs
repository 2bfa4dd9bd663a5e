//! Who may connect: users and their passwords and throttles, devices and
//! their tokens, and the caller a request resolves to.
//!
//! The rules live here; what they keep does not. Users, devices and login
//! attempt counts are kept through the traits of `storage`
//! ([`crate::storage::users::UserStore`],
//! [`crate::storage::devices::DeviceStore`],
//! [`crate::storage::throttles::ThrottleStore`]), handed in from the
//! [`crate::storage::Storage`] bundle: nothing here knows which backend
//! keeps them, and only `storage/sled/` knows sled.

pub mod caller;
pub mod devices;
pub mod users;
