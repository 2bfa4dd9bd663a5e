//! Record validation on any document automerge will load: the schema
//! check must refuse or accept, never panic outside containment.
#![no_main]

use std::sync::Once;

use baraza_protocol::docsync;
use libfuzzer_sys::fuzz_target;

static HOOK: Once = Once::new();

fuzz_target!(|bytes: &[u8]| {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !docsync::is_contained() {
                default(info);
                std::process::abort();
            }
        }));
    });
    let loaded = docsync::contained(|| {
        automerge::Automerge::load(bytes).map_err(|e| docsync::ApplyError::Corrupt(e.to_string()))
    });
    if let Ok(doc) = loaded {
        let _ = docsync::contained(|| Ok(baraza_records::validate(&doc).is_ok()));
    }
});
