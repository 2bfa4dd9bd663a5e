//! Any bytes a peer can send, through the frame codec: decoding must never
//! panic, and whatever it accepts must survive a round trip.
#![no_main]

use baraza_protocol::codec;
use baraza_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    // The default limits, but with changes_per_message_max small so short
    // inputs can reach the over-long `changes` path too.
    let limits = Limits {
        changes_per_message_max: 4,
        ..Limits::DEFAULT
    };
    if let Ok(message) = codec::decode(frame, &limits) {
        // What we accepted we can say again, and read back the same.
        let again = codec::encode(&message).expect("a decoded message encodes");
        let back = codec::decode(&again, &limits).expect("an encoded message decodes");
        assert_eq!(back, message);
    }
});
