//! A tablet's store in memory: the simulator's `Replica`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use automerge::Automerge;
use baraza_protocol::*;

#[derive(Default)]
pub struct MemReplica {
    /// Saved bytes, so what a tablet holds is exactly what it stored.
    pub docs: BTreeMap<DocId, Vec<u8>>,
    pub known: HashMap<DocId, Vec<Head>>,
    pub unacked: BTreeSet<DocId>,
    pub store: Option<StoreId>,
    pub cursor: Seq,
    /// Documents the server refused, with the rule it named.
    pub refused: BTreeMap<DocId, Option<String>>,
}

impl Replica for MemReplica {
    type Error = Infallible;

    fn doc(&mut self, id: DocId) -> Result<Option<Automerge>, Infallible> {
        Ok(self
            .docs
            .get(&id)
            .map(|b| Automerge::load(b).expect("own bytes load")))
    }
    fn put_doc(&mut self, id: DocId, doc: &Automerge) -> Result<(), Infallible> {
        self.docs.insert(id, doc.save());
        Ok(())
    }
    fn known(&mut self, id: DocId) -> Result<Vec<Head>, Infallible> {
        Ok(self.known.get(&id).cloned().unwrap_or_default())
    }
    fn set_known(&mut self, id: DocId, heads: &[Head], settled: bool) -> Result<(), Infallible> {
        self.known.insert(id, heads.to_vec());
        if settled {
            self.unacked.remove(&id);
        }
        Ok(())
    }
    fn unacknowledged(&mut self) -> Result<Vec<DocId>, Infallible> {
        Ok(self.unacked.iter().copied().collect())
    }
    fn cursor(&mut self) -> Result<(Option<StoreId>, Seq), Infallible> {
        Ok((self.store, self.cursor))
    }
    fn set_cursor(&mut self, store: StoreId, seq: Seq) -> Result<(), Infallible> {
        self.store = Some(store);
        self.cursor = seq;
        Ok(())
    }
    fn reset(&mut self, store: StoreId) -> Result<(), Infallible> {
        self.store = Some(store);
        self.cursor = 0;
        self.known.clear();
        self.unacked = self.docs.keys().copied().collect();
        Ok(())
    }
    fn refused(
        &mut self,
        id: DocId,
        _: ErrorCode,
        rule: Option<&str>,
        _: &str,
    ) -> Result<(), Infallible> {
        self.refused.insert(id, rule.map(str::to_string));
        Ok(())
    }
    fn erase(&mut self, id: DocId) -> Result<(), Infallible> {
        self.docs.remove(&id);
        self.known.remove(&id);
        self.unacked.remove(&id);
        Ok(())
    }
}
