//! What decoding a hostile frame costs in memory, measured by a counting
//! global allocator. Each frame claims millions of items (or levels) in a
//! few megabytes; the codec must refuse it for the right reason while
//! holding little more than the frame itself, which the caller already has.
//!
//! Its own test binary because the allocator is global: the tests take one
//! lock so only one decode is measured at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use baraza_protocol::codec::{self, CodecError};
use baraza_protocol::{DocId, Limits, Message, Push};
use serde_bytes::ByteBuf;

/// Wraps the system allocator, keeping the bytes live now and the most
/// live since the last [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// only bookkeeping beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block arriving before the old one leaves,
            // which is what a moving realloc costs at its peak.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measured decode at a time.
static MEASURING: Mutex<()> = Mutex::new(());

/// Decodes `frame`, returning the result and the most bytes allocated
/// beyond what was live before (the frame included) at any moment.
fn measure(frame: &[u8], limits: &Limits) -> (Result<Message, CodecError>, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = codec::decode(frame, limits);
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(before);
    (result, peak)
}

/// Well below any of the frames: what the refusal itself may cost (its
/// message), nothing in proportion to what the frame claims.
const REFUSAL_BYTES_MAX: usize = 64 * 1024;

const DOC: [u8; 16] = [0x42; 16];

fn text(s: &str) -> Vec<u8> {
    assert!(s.len() < 24);
    [vec![0x60 | s.len() as u8], s.as_bytes().to_vec()].concat()
}

/// A CBOR head with a four-byte argument.
fn head32(major: u8, n: u32) -> Vec<u8> {
    [vec![(major << 5) | 26], n.to_be_bytes().to_vec()].concat()
}

fn report(case: &str, frame: &[u8], peak: usize, result: &Result<Message, CodecError>) {
    // Shown with --nocapture; the numbers the fix is judged by.
    eprintln!(
        "{case}: frame {} bytes, peak {peak} bytes, {}",
        frame.len(),
        match result {
            Ok(m) => format!("decoded {}", m.kind()),
            Err(e) => e.to_string(),
        }
    );
}

fn refused_as(frame: &[u8], case: &str, what: &str) {
    let (result, peak) = measure(frame, &Limits::DEFAULT);
    report(case, frame, peak, &result);
    assert!(
        matches!(&result, Err(CodecError::TooComplex { what: w, .. }) if *w == what),
        "{case}: {result:?}"
    );
    assert!(peak < REFUSAL_BYTES_MAX, "{case}: peak {peak} bytes");
}

#[test]
fn an_array_of_eight_million_integers_is_refused_cheaply() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let n = 8_000_000u32;
    let definite = [head32(4, n), vec![0x01; n as usize]].concat();
    assert!(definite.len() <= Limits::DEFAULT.frame_bytes_max);
    refused_as(&definite, "(a) 8M-int array", "elements in one array");
    drop(definite);
    let indefinite = [vec![0x9f], vec![0x01; n as usize], vec![0xff]].concat();
    refused_as(
        &indefinite,
        "(a) 8M-int indefinite array",
        "elements in one array",
    );
}

#[test]
fn a_push_of_a_million_empty_changes_is_refused_for_its_document_cheaply() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1_000_000u32;
    let mut frame = vec![0xa5];
    frame.extend(text("t"));
    frame.extend(text("push"));
    frame.extend(text("doc"));
    frame.push(0x50);
    frame.extend(DOC);
    frame.extend(text("base"));
    frame.push(0x80);
    frame.extend(text("heads"));
    frame.push(0x80);
    frame.extend(text("changes"));
    frame.extend(head32(4, n));
    frame.extend(std::iter::repeat_n(0x40, n as usize));
    let (result, peak) = measure(&frame, &Limits::DEFAULT);
    report("(b) 1M empty changes", &frame, peak, &result);
    match &result {
        Err(CodecError::TooManyChanges { doc, count, limit }) => {
            assert_eq!(*doc, Some(DocId::from_bytes(DOC)));
            assert_eq!(*count, u64::from(n));
            assert_eq!(*limit, Limits::DEFAULT.changes_per_message_max);
        }
        other => panic!("expected too many changes, got {other:?}"),
    }
    assert!(peak < REFUSAL_BYTES_MAX, "peak {peak} bytes");
}

#[test]
fn deeply_nested_arrays_are_refused_cheaply() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    // At the top level, and as the changes of a push (where serde would
    // build the levels it reads before its own recursion limit).
    let bare = vec![0x81; 4_000_000];
    refused_as(&bare, "(c) 4M nested arrays", "levels of nesting");
    drop(bare);
    let mut frame = vec![0xa2];
    frame.extend(text("t"));
    frame.extend(text("push"));
    frame.extend(text("changes"));
    frame.extend(vec![0x9f; 4_000_000]);
    refused_as(&frame, "(c) 4M nested in a push", "levels of nesting");
}

#[test]
fn a_map_of_millions_of_entries_is_refused_cheaply() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    // {"t":"push", 0:0, 1:1, ...}: a message-shaped map that serde would
    // buffer whole before looking at its fields.
    let n = 2_000_000u32;
    let mut entries = text("t");
    entries.extend(text("push"));
    for i in 0..n - 1 {
        let small = (i % 24) as u8;
        entries.extend([small, small]);
    }
    let definite = [head32(5, n), entries.clone()].concat();
    refused_as(&definite, "(d) 2M-entry map", "entries in one map");
    drop(definite);
    let indefinite = [vec![0xbf], entries, vec![0xff]].concat();
    refused_as(
        &indefinite,
        "(d) 2M-entry indefinite map",
        "entries in one map",
    );
}

#[test]
fn a_full_push_at_the_limits_still_decodes_within_twice_its_size() {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    // The bounds must leave room for the largest honest push: as many
    // changes as allowed, filling the frame.
    let limits = Limits::DEFAULT;
    let n = limits.changes_per_message_max;
    let each = limits.frame_bytes_max / n - 16;
    let push = Message::Push(Push {
        doc: DocId::from_bytes(DOC),
        base: Vec::new(),
        heads: Vec::new(),
        changes: vec![ByteBuf::from(vec![7; each]); n],
    });
    let frame = codec::encode(&push).unwrap_or_default();
    drop(push);
    let (result, peak) = measure(&frame, &limits);
    report("(e) honest push at the limits", &frame, peak, &result);
    match &result {
        Ok(Message::Push(p)) => assert_eq!(p.changes.len(), n),
        other => panic!("expected the push, got {other:?}"),
    }
    assert!(peak < 2 * frame.len(), "peak {peak} bytes");
}
