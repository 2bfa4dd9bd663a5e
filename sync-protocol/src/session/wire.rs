//! What both ends of a session share: the outgoing queue, error frames,
//! and decoding a frame into a message or a refusal.

use std::collections::VecDeque;

use super::SessionError;
use crate::codec::{self, CodecError};
use crate::limits::Limits;
use crate::message::*;

/// Everything a session keeps between frames that both roles share.
#[derive(Debug)]
pub(super) struct Wire {
    pub(super) limits: Limits,
    pub(super) outgoing: VecDeque<Vec<u8>>,
    pub(super) closed: bool,
    /// How frames from here on are packed together, once agreed.
    packing: Option<Packing>,
    /// Frames at the front of `outgoing` that go as they are: queued
    /// before packing was agreed (the welcome that agrees it), or a batch
    /// that did not shrink when packed.
    plain_ahead: usize,
}

impl Wire {
    pub(super) fn new(limits: Limits) -> Self {
        Wire {
            limits,
            outgoing: VecDeque::new(),
            closed: false,
            packing: None,
            plain_ahead: 0,
        }
    }

    /// Packs what is queued after this point with `packing`.
    pub(super) fn pack_from_here(&mut self, packing: Packing) {
        self.packing = Some(packing);
        self.plain_ahead = self.outgoing.len();
    }

    /// The next frame to send. Once packing is agreed, the frames queued
    /// at this moment go packed together, up to
    /// [`codec::PACK_BYTES_TARGET`] bytes a frame; a batch under
    /// [`codec::PACK_BYTES_MIN`], or one that does not shrink, goes as it is.
    pub(super) fn next_frame(&mut self) -> Option<Vec<u8>> {
        let packing = match self.packing {
            Some(p) if self.plain_ahead == 0 => p,
            _ => {
                self.plain_ahead = self.plain_ahead.saturating_sub(1);
                return self.outgoing.pop_front();
            }
        };
        let budget = codec::PACK_BYTES_TARGET.min(self.limits.frame_bytes_max);
        let (mut n, mut size) = (0, 0);
        for frame in &self.outgoing {
            let more = codec::packed_len(frame);
            if size + more > budget {
                break;
            }
            size += more;
            n += 1;
        }
        if size < codec::PACK_BYTES_MIN {
            // Also a first frame too large to pack with its 4-byte length.
            self.plain_ahead = n.max(1) - 1;
            return self.outgoing.pop_front();
        }
        let batch: Vec<Vec<u8>> = self.outgoing.drain(..n).collect();
        match codec::pack(&batch, packing) {
            Ok(frame) if frame.len() < size => Some(frame),
            _ => {
                for frame in batch.into_iter().rev() {
                    self.outgoing.push_front(frame);
                }
                self.plain_ahead = n - 1;
                self.outgoing.pop_front()
            }
        }
    }

    /// Packs what is queued now, so that taking it later costs nothing: a
    /// driver calls the producer of a large batch (catch-up) off its async
    /// workers, and the compression is done there too.
    pub(super) fn pack_queued(&mut self) {
        if self.packing.is_none() {
            return;
        }
        let mut ready = VecDeque::with_capacity(self.outgoing.len());
        while let Some(frame) = self.next_frame() {
            ready.push_back(frame);
        }
        self.plain_ahead = ready.len();
        self.outgoing = ready;
    }

    /// The frames inside a packed frame, a refusal closing the session if
    /// it is not what it declares (only a broken or hostile peer sends one).
    pub(super) fn unpack(&mut self, packed: &Packed) -> Result<Vec<Vec<u8>>, SessionError> {
        codec::unpack(packed, &self.limits).map_err(|err| {
            let code = match err {
                CodecError::PackedTooLarge { .. } => ErrorCode::FrameTooLarge,
                _ => ErrorCode::MalformedFrame,
            };
            self.send_error(code, None, err.to_string(), true);
            SessionError::Codec(err)
        })
    }

    pub(super) fn send(&mut self, message: &Message) {
        // Our own types always encode; if one ever did not, dropping the frame
        // is safe: every message is re-derivable from state at the next sync.
        if let Ok(frame) = codec::encode(message) {
            self.outgoing.push_back(frame);
        }
    }

    pub(super) fn send_error(
        &mut self,
        code: ErrorCode,
        doc: Option<DocId>,
        message: String,
        fatal: bool,
    ) {
        self.send_error_rule(code, doc, message, fatal, None);
    }

    pub(super) fn send_error_rule(
        &mut self,
        code: ErrorCode,
        doc: Option<DocId>,
        message: String,
        fatal: bool,
        rule: Option<String>,
    ) {
        self.send(&Message::Error(ErrorMsg {
            code,
            doc,
            message,
            fatal,
            rule,
        }));
        if fatal {
            self.closed = true;
        }
    }

    /// Decodes a frame, answering a decode failure with an error frame. A
    /// frame that is too large, not CBOR, or shaped past the codec's bounds
    /// (only a hostile or broken peer builds one) cannot be trusted to be
    /// followed by well-formed ones, so those close the session; an unknown
    /// type or a known type with bad fields is refused alone, and a push
    /// with too many changes is refused for its document alone, as any
    /// other refused push is.
    pub(super) fn decode(&mut self, frame: &[u8]) -> Result<Option<Message>, SessionError> {
        match codec::decode(frame, &self.limits) {
            Ok(m) => Ok(Some(m)),
            Err(err) => {
                let (code, doc, fatal) = match &err {
                    CodecError::TooLarge { .. } => (ErrorCode::FrameTooLarge, None, true),
                    CodecError::MalformedCbor(_) | CodecError::TooComplex { .. } => {
                        (ErrorCode::MalformedFrame, None, true)
                    }
                    CodecError::TooManyChanges { doc, .. } => {
                        (ErrorCode::TooManyChanges, *doc, false)
                    }
                    CodecError::UnknownType(_) => (ErrorCode::UnknownMessageType, None, false),
                    CodecError::Invalid { .. } | CodecError::Encode(_) => {
                        (ErrorCode::MalformedFrame, None, false)
                    }
                    // Not returned by decode; packed frames are opened by
                    // `unpack`, after decode.
                    CodecError::PackedTooLarge { .. } | CodecError::Unpack(_) => {
                        (ErrorCode::MalformedFrame, None, true)
                    }
                };
                self.send_error(code, doc, err.to_string(), fatal);
                if fatal {
                    Err(SessionError::Codec(err))
                } else {
                    Ok(None)
                }
            }
        }
    }

    pub(super) fn unexpected(&mut self, kind: &'static str) -> SessionError {
        self.send_error(
            ErrorCode::UnexpectedMessage,
            None,
            format!("unexpected {kind} message at this point of the session"),
            true,
        );
        SessionError::Unexpected(kind)
    }
}
