//! Bounds on everything a peer can make us hold. Units are in the names.

/// Limits shared by both sides of a session. The server's values are the
/// ones that matter for safety; the client uses them to split its work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, in bytes.
    pub frame_bytes_max: usize,
    /// Largest document the server stores, in bytes of its change log.
    pub doc_bytes_max: usize,
    /// Most automerge changes in one push.
    pub changes_per_message_max: usize,
    /// Most operations the changes of one push or sync message hold once
    /// decoded. Counted apart from bytes because automerge's run-length
    /// columns let a few bytes describe millions of operations.
    pub ops_per_message_max: usize,
    /// Most operations one document may hold, for the same reason.
    pub doc_ops_max: usize,
    /// Most pushes a client keeps unacknowledged on one connection; pushes
    /// beyond it wait, so a device holding thousands of edits cannot flood
    /// the server's commit queue.
    pub pushes_in_flight_max: usize,
}

impl Limits {
    /// Defaults sized for tablets on slow links and records of a few KB.
    pub const DEFAULT: Limits = Limits {
        frame_bytes_max: 8 * 1024 * 1024,
        doc_bytes_max: 4 * 1024 * 1024,
        changes_per_message_max: 10_000,
        ops_per_message_max: 100_000,
        doc_ops_max: 1_000_000,
        pushes_in_flight_max: 256,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
