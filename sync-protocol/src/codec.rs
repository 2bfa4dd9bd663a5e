//! The only module that knows the wire encoding.
//!
//! serde_cbor is unmaintained (RUSTSEC-2021-0127); everything else in the
//! workspace goes through [`encode`] and [`decode`], so swapping it for
//! ciborium touches this file alone. The golden vectors in the tests pin
//! the bytes, so such a swap cannot change the wire format unnoticed.

use crate::message::Message;

/// Why a frame could not be turned into a message. Decoding never panics.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame is larger than the limit; it was not parsed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// Not CBOR at all, or truncated.
    #[error("malformed CBOR: {0}")]
    MalformedCbor(String),
    /// CBOR, but with a type field this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// CBOR with a known type but missing or mistyped fields.
    #[error("invalid {kind} message: {reason}")]
    Invalid {
        /// The type field, if there was one.
        kind: String,
        /// What serde reported.
        reason: String,
    },
    /// The message could not be serialised (should not happen for our types).
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Serialises one message into one frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(message).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Parses one frame, refusing frames over `frame_bytes_max` before looking
/// inside them.
pub fn decode(frame: &[u8], frame_bytes_max: usize) -> Result<Message, CodecError> {
    if frame.len() > frame_bytes_max {
        return Err(CodecError::TooLarge {
            size: frame.len(),
            limit: frame_bytes_max,
        });
    }
    match serde_cbor::from_slice::<Message>(frame) {
        Ok(message) => Ok(message),
        Err(err) => Err(classify(frame, err)),
    }
}

/// Tells a peer that speaks a newer protocol (unknown type) from one that
/// sends garbage. Only runs on the error path, so the second parse is free
/// for well-behaved peers.
fn classify(frame: &[u8], err: serde_cbor::Error) -> CodecError {
    use serde_cbor::Value;
    let value: Value = match serde_cbor::from_slice(frame) {
        Ok(v) => v,
        Err(e) => return CodecError::MalformedCbor(e.to_string()),
    };
    let Value::Map(map) = value else {
        return CodecError::Invalid {
            kind: String::new(),
            reason: "a message must be a CBOR map".into(),
        };
    };
    match map.get(&Value::Text("t".into())) {
        Some(Value::Text(kind)) if !Message::KINDS.contains(&kind.as_str()) => {
            CodecError::UnknownType(kind.clone())
        }
        Some(Value::Text(kind)) => CodecError::Invalid {
            kind: kind.clone(),
            reason: err.to_string(),
        },
        _ => CodecError::Invalid {
            kind: String::new(),
            reason: "missing text field \"t\" naming the message type".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;
    use serde_bytes::ByteBuf;

    const MAX: usize = 1 << 20;

    #[test]
    fn golden_hello_bytes_are_stable() {
        let hello = Message::Hello(Hello {
            version: 1,
            store: None,
            cursor: 7,
        });
        let bytes = encode(&hello).unwrap();
        // {"t":"hello","version":1,"store":null,"cursor":7}
        let expected: &[u8] = &[
            0xa4, 0x61, b't', 0x65, b'h', b'e', b'l', b'l', b'o', 0x67, b'v', b'e', b'r', b's',
            b'i', b'o', b'n', 0x01, 0x65, b's', b't', b'o', b'r', b'e', 0xf6, 0x66, b'c', b'u',
            b'r', b's', b'o', b'r', 0x07,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(decode(expected, MAX).unwrap(), hello);
    }

    #[test]
    fn golden_ack_encodes_ids_and_heads_as_byte_strings() {
        let ack = Message::Ack(Ack {
            doc: DocId::from_bytes([0xab; 16]),
            heads: vec![Head::from(automerge::ChangeHash([0x11; 32]))],
            seq: 9,
        });
        let bytes = encode(&ack).unwrap();
        let mut expected = vec![0xa4, 0x61, b't', 0x63, b'a', b'c', b'k'];
        expected.extend([0x63, b'd', b'o', b'c', 0x50]);
        expected.extend([0xab; 16]);
        expected.extend([0x65, b'h', b'e', b'a', b'd', b's', 0x81, 0x58, 0x20]);
        expected.extend([0x11; 32]);
        expected.extend([0x63, b's', b'e', b'q', 0x09]);
        assert_eq!(bytes, expected);
        assert_eq!(decode(&expected, MAX).unwrap(), ack);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(
            decode(&[0xff, 0x00, 0x13], MAX),
            Err(CodecError::MalformedCbor(_) | CodecError::Invalid { .. })
        ));
        assert!(matches!(
            decode(&[], MAX),
            Err(CodecError::MalformedCbor(_))
        ));
    }

    #[test]
    fn unknown_type_is_named() {
        let frame = serde_cbor::to_vec(&serde_cbor::Value::Map(
            [(
                serde_cbor::Value::Text("t".into()),
                serde_cbor::Value::Text("teleport".into()),
            )]
            .into_iter()
            .collect(),
        ))
        .unwrap();
        match decode(&frame, MAX) {
            Err(CodecError::UnknownType(t)) => assert_eq!(t, "teleport"),
            other => panic!("expected unknown type, got {other:?}"),
        }
    }

    #[test]
    fn known_type_with_wrong_fields_is_invalid() {
        let frame = serde_cbor::to_vec(&serde_cbor::Value::Map(
            [(
                serde_cbor::Value::Text("t".into()),
                serde_cbor::Value::Text("push".into()),
            )]
            .into_iter()
            .collect(),
        ))
        .unwrap();
        assert!(matches!(
            decode(&frame, MAX),
            Err(CodecError::Invalid { kind, .. }) if kind == "push"
        ));
    }

    #[test]
    fn oversized_frames_are_refused_unparsed() {
        let frame = vec![0u8; 101];
        assert!(matches!(
            decode(&frame, 100),
            Err(CodecError::TooLarge {
                size: 101,
                limit: 100
            })
        ));
    }

    fn arb_doc() -> impl Strategy<Value = DocId> {
        any::<[u8; 16]>().prop_map(DocId::from_bytes)
    }

    fn arb_heads() -> impl Strategy<Value = Vec<Head>> {
        proptest::collection::vec(
            any::<[u8; 32]>().prop_map(|b| Head::from(automerge::ChangeHash(b))),
            0..4,
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64).prop_map(ByteBuf::from);
        prop_oneof![
            (any::<u32>(), any::<Option<[u8; 16]>>(), any::<u64>()).prop_map(|(v, s, c)| {
                Message::Hello(Hello {
                    version: v,
                    store: s.map(StoreId::from_bytes),
                    cursor: c,
                })
            }),
            (
                arb_doc(),
                arb_heads(),
                arb_heads(),
                proptest::collection::vec(bytes.clone(), 0..3)
            )
                .prop_map(|(doc, base, heads, changes)| Message::Push(Push {
                    doc,
                    base,
                    heads,
                    changes
                })),
            (arb_doc(), arb_heads(), bytes.clone()).prop_map(
                |(doc, heads, data)| Message::Changes(Changes {
                    n: 1,
                    doc,
                    heads,
                    data
                })
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, n)| Message::Cursor(CursorMsg { seq, n })),
            (arb_doc(), bytes).prop_map(|(doc, data)| Message::Sync(SyncMsg { doc, data })),
            (any::<Option<[u8; 16]>>(), ".{0,40}", any::<bool>()).prop_map(|(d, m, fatal)| {
                Message::Error(ErrorMsg {
                    code: ErrorCode::CorruptChanges,
                    doc: d.map(DocId::from_bytes),
                    message: m,
                    fatal,
                    rule: None,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in arb_message()) {
            let bytes = encode(&m).unwrap();
            prop_assert_eq!(decode(&bytes, usize::MAX).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, MAX);
        }
    }
}
