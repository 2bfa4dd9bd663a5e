//! Bounded per-session bookkeeping of the records a connection sent or
//! received, for the audit entry written when it ends.
//!
//! A live connection can last for days and carry every record in the
//! feed; a list of all of them would grow without bound and end up in one
//! audit entry. So a tally lists the first `cap` records and counts the
//! rest: the audit says exactly how many went by and names most of them.

use crate::message::{DocId, Head};

/// The first records of a session, with a count of all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTally {
    cap: usize,
    listed: Vec<(DocId, Vec<Head>)>,
    count: u64,
}

impl RecordTally {
    /// Records listed by name in one audit entry unless the driver's
    /// configuration says otherwise.
    pub const CAP_DEFAULT: usize = 256;

    /// An empty tally listing at most `cap` records.
    pub fn new(cap: usize) -> Self {
        RecordTally {
            cap,
            listed: Vec::new(),
            count: 0,
        }
    }

    /// Notes one record and the heads it was sent or stored at.
    pub fn note(&mut self, doc: DocId, heads: &[Head]) {
        self.count = self.count.saturating_add(1);
        if self.listed.len() < self.cap {
            self.listed.push((doc, heads.to_vec()));
        }
    }

    /// The records listed, in the order they were noted.
    pub fn listed(&self) -> &[(DocId, Vec<Head>)] {
        &self.listed
    }

    /// Every record noted, listed or not.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Records noted but not listed (past the cap).
    pub fn unlisted(&self) -> u64 {
        self.count.saturating_sub(self.listed.len() as u64)
    }

    /// The most records listed.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

impl Default for RecordTally {
    fn default() -> Self {
        RecordTally::new(RecordTally::CAP_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_lists_up_to_its_cap_and_counts_everything() {
        let mut tally = RecordTally::new(3);
        for i in 0..10u8 {
            tally.note(DocId::from_bytes([i; 16]), &[]);
        }
        assert_eq!(tally.listed().len(), 3);
        assert_eq!(tally.listed()[2].0, DocId::from_bytes([2; 16]));
        assert_eq!(tally.count(), 10);
        assert_eq!(tally.unlisted(), 7);
    }
}
