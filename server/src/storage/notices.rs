//! What other writers of a shared backend did, as the backend tells it:
//! [`Notice`]s from [`crate::storage::Backend::listen`].
//!
//! With several server nodes on one database, each node keeps copies of
//! records in memory, wakes its sessions when the feed moves and cuts a
//! device the moment it is revoked. Those are this node's own writes
//! until another node writes: the notices are how it hears. They carry
//! only positions and ids; what changed is read from the store. They are
//! a prompt, never the record of what happened: a notice lost (the
//! listening connection dropped) is made good by [`Notice::Resumed`],
//! after which a node trusts nothing it held and reads again. So no
//! notice is needed for correctness, only for speed: a node's copy that
//! missed another's write is also refused at commit
//! ([`crate::storage::store::Store::commit_unless_stale`]).

use baraza_protocol::{DocId, Seq};

/// One thing another writer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// It committed writes at feed positions `first..=last`.
    Wrote {
        /// The first of them.
        first: Seq,
        /// The last of them.
        last: Seq,
    },
    /// It erased, rebuilt, quarantined or released a record: nothing
    /// read of it before holds.
    Rewritten(DocId),
    /// It changed a device (revoked, retired, rotated its token).
    Device,
    /// It changed a user (areas, role, disabled).
    User,
    /// The listening connection was (re)established: whatever happened
    /// while it was down was not heard, so every copy and standing is to
    /// be read again. The first notice of every listener.
    Resumed,
}
