//! A device's push, end to end through the server's half of the protocol
//! over an in-memory document: the frame decoded by a `ServerSession`, its
//! changes parsed and counted, applied to a stored record, then the record
//! validated. The bytes fuzzed are one change's (the shape a hostile tablet
//! controls). Panics inside automerge are expected and must be contained
//! (`docsync::contained`); any other panic is a crash.
#![no_main]

use std::sync::Once;

use automerge::Automerge;
use baraza_protocol::docsync;
use baraza_protocol::{
    codec, DocId, Hello, Limits, Message, Push, ServerEvent, ServerSession, StoreId,
};
use libfuzzer_sys::fuzz_target;

static HOOK: Once = Once::new();

/// A meeting record as a tablet creates it.
fn record() -> Automerge {
    use baraza_records::ops::{self, FieldValue, Stamp};
    let mut doc = Automerge::new();
    doc.set_actor(automerge::ActorId::from(vec![0xab; 16]));
    let header = baraza_records::Header {
        id: DocId::from_bytes([7; 16]).to_string(),
        kind: baraza_records::Kind::Meeting,
        area: "mathare".into(),
        created_by_user: "cpl.otieno".into(),
        created_by_device: "ab".repeat(8),
        created_at: 1_700_000_000_000,
        schema: baraza_records::SCHEMA_VERSION,
    };
    let at = Stamp {
        now_ms: 1_700_000_000_000,
        by: "cpl.otieno",
    };
    let _ = ops::create(&mut doc, &header, at);
    let _ = ops::set(&mut doc, "title", FieldValue::Str("Market baraza".into()), at);
    doc
}

fuzz_target!(|change: &[u8]| {
    HOOK.call_once(|| {
        // libFuzzer's hook aborts on every panic; contained ones are the
        // library's known faults, answered as refusals by the server.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !docsync::is_contained() {
                default(info);
                std::process::abort();
            }
        }));
    });
    let limits = Limits::DEFAULT;
    let mut session = ServerSession::new(limits.clone());
    let hello = codec::encode(&Message::Hello(Hello {
        version: baraza_protocol::PROTOCOL_VERSION,
        store: None,
        cursor: 0,
        names: false,
    }))
    .expect("hello encodes");
    if let Ok(events) = session.handle_frame(&hello) {
        for event in events {
            if let ServerEvent::Hello(h) = event {
                session.accept(&h, StoreId::from_bytes([1; 16]), 0);
            }
        }
    }
    let push = codec::encode(&Message::Push(Push {
        doc: DocId::from_bytes([7; 16]),
        base: Vec::new(),
        heads: Vec::new(),
        changes: vec![serde_bytes::ByteBuf::from(change.to_vec())],
    }))
    .expect("push encodes");
    let Ok(events) = session.handle_frame(&push) else {
        return;
    };
    for event in events {
        if let ServerEvent::Push { changes, heads, .. } = event {
            let mut doc = record();
            if docsync::apply_push(&mut doc, changes, &heads).is_ok() {
                let _ = docsync::contained(|| Ok(baraza_records::validate(&doc).is_ok()));
            }
        }
    }
});
