//! The automerge sync protocol as a fallback, per document.

use std::collections::HashMap;

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;
use serde_bytes::ByteBuf;

use super::wire::Wire;
use crate::docsync::{self, ApplyError};
use crate::message::*;

/// Per-document automerge sync states for the fallback path. Kept only for
/// the life of a connection: a live `sync::State` reused across a dropped
/// message can stall, so every connection starts them afresh.
#[derive(Debug, Default)]
pub(super) struct Fallback {
    pub(super) states: HashMap<DocId, sync::State>,
    /// Set on the server: what arrives comes from devices and is checked
    /// chunk by chunk (no compressed chunks, no whole documents, operations
    /// within the limit), and what goes out advertises no capabilities, so
    /// devices answer with plain changes (automerge's v1 messages) rather
    /// than compressed saves that could not be checked before inflating.
    pub(super) from_devices: bool,
}

impl Fallback {
    fn outgoing(&self, id: DocId, mut msg: sync::Message) -> Message {
        if self.from_devices {
            msg.flags = None;
        }
        Message::Sync(SyncMsg {
            doc: id,
            data: ByteBuf::from(msg.encode()),
        })
    }

    pub(super) fn start(&mut self, wire: &mut Wire, id: DocId, doc: &Automerge) {
        let state = self.states.entry(id).or_default();
        if let Some(msg) = doc.generate_sync_message(state) {
            let out = self.outgoing(id, msg);
            wire.send(&out);
        }
    }

    /// Applies one sync message and queues our answer. Returns whether the
    /// document changed, and whether this side has nothing more to say.
    pub(super) fn receive(
        &mut self,
        wire: &mut Wire,
        id: DocId,
        doc: &mut Automerge,
        data: &[u8],
    ) -> Result<(bool, bool), ApplyError> {
        let msg = if self.from_devices {
            let (msg, changes) = docsync::parse_device_sync(data, wire.limits.ops_per_message_max)?;
            docsync::contained(|| docsync::check_counters(doc, &changes))?;
            msg
        } else {
            sync::Message::decode(data).map_err(|e| ApplyError::Corrupt(e.to_string()))?
        };
        let state = self.states.entry(id).or_default();
        let before = doc.get_heads();
        docsync::contained(|| {
            doc.receive_sync_message(state, msg)
                .map_err(|e| ApplyError::Corrupt(e.to_string()))
        })?;
        let changed = doc.get_heads() != before;
        let reply = docsync::contained(|| Ok(doc.generate_sync_message(state)))?;
        let done = match reply {
            Some(reply) => {
                let out = self.outgoing(id, reply);
                wire.send(&out);
                false
            }
            None => true,
        };
        if done {
            self.states.remove(&id);
        }
        Ok((changed, done))
    }
}
