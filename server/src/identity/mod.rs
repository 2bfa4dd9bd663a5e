//! Who may connect: users and their passwords and throttles, devices and
//! their tokens, and the caller a request resolves to.

pub mod caller;
pub mod devices;
pub mod users;
