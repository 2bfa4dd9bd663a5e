//! What the server's catch-up reads: the changes feed and documents.

use crate::message::*;

/// The server's changes feed and documents, as catch-up reads them.
pub trait Feed {
    /// The store's failure type.
    type Error;
    /// Feed entries with `after < seq <= upto`, oldest first, at most `limit`:
    /// one per durable write.
    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Self::Error>;
    /// Says which documents [`Feed::changes_since`] is about to be asked
    /// for, each as `(doc, base, at)` as it will be asked, so a store with
    /// round trips can read them together. Only a hint: what it answers
    /// must not change.
    fn prepare(&mut self, _wants: &[(DocId, Seq, Seq)]) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The document as the bytes a client lacks that holds it as of feed
    /// position `base` (its last write at or before `base`; the whole
    /// document when `base` is 0 or the document is newer), read for the
    /// feed entry at `at`: the state answered includes every write of the
    /// document up to `at` (it may include later ones). None if the
    /// document is unknown. A store that keeps each write's chunk by feed
    /// position answers with reads alone.
    fn changes_since(
        &mut self,
        doc: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<DocDelta>, Self::Error>;
    /// True if `doc`, which [`Feed::changes_since`] did not find, was
    /// erased and this client must be told to delete it.
    fn erased(&mut self, _doc: DocId) -> Result<bool, Self::Error> {
        Ok(false)
    }
    /// True if `doc`, which [`Feed::changes_since`] did not find, is held
    /// back (damaged or quarantined) and this client must be told so.
    fn quarantined(&mut self, _doc: DocId) -> Result<bool, Self::Error> {
        Ok(false)
    }
    /// The names of those of `devices` that have one, for a client that
    /// asked for names ([`Hello::names`]). Unknown devices are left out.
    fn device_names(&mut self, _devices: &[DeviceId]) -> Result<Vec<DeviceName>, Self::Error> {
        Ok(Vec::new())
    }
}

/// What catch-up sends of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocDelta {
    /// The document's heads in this state.
    pub heads: Vec<Head>,
    /// Chunk bytes the client lacks.
    pub data: Vec<u8>,
    /// A feed position this state includes every write up to: later feed
    /// entries for the document up to here need not be sent again.
    pub seq: Seq,
}
