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
}

impl Wire {
    pub(super) fn new(limits: Limits) -> Self {
        Wire {
            limits,
            outgoing: VecDeque::new(),
            closed: false,
        }
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
