//! A damaged tablet store is refused within a bounded time with
//! [`ClientError::DamagedStore`], never hangs or panics, and stays apart
//! from a wrong key. The stores are written through the SDK and damaged in
//! the fixed ways of `damage/mod.rs`; each was seen to spin or panic sled
//! 0.34 before the store's open guarded against it.

mod damage;

use std::path::Path;
use std::time::{Duration, Instant};

use baraza_client::{Client, ClientError};
use damage::{within, KEY, OTHER_KEY};

/// What a test waits for before calling the code under test hung: well
/// above the default open deadline (20 s), so a slow machine is not
/// mistaken for a hang, and bounded, so a hang fails the test.
const HARNESS_LIMIT: Duration = Duration::from_secs(60);

/// Opens `data` with `key` and reads its status, the way an app starts,
/// on a thread the test gives up on after [`HARNESS_LIMIT`].
fn open_and_status(data: &Path, key: [u8; 32]) -> (Result<u64, Box<ClientError>>, Duration) {
    let data = data.to_path_buf();
    within(
        HARNESS_LIMIT,
        "opening the store and reading its status",
        move || {
            let started = Instant::now();
            let result = match Client::open(&data, &key) {
                Ok(client) => client.status().map(|s| s.records),
                Err(e) => Err(e),
            }
            .map_err(Box::new);
            (result, started.elapsed())
        },
    )
}

fn assert_damaged(result: Result<u64, Box<ClientError>>, data: &Path) -> String {
    match result.map_err(|e| *e) {
        Err(ClientError::DamagedStore { path, reason }) => {
            assert_eq!(path, data.join("store"), "the error names the store");
            assert!(!reason.is_empty());
            reason
        }
        Err(other) => panic!("expected DamagedStore, got {other:?}"),
        Ok(records) => panic!("the damaged store opened, with {records} records"),
    }
}

#[test]
fn a_store_missing_a_blob_file_is_refused_as_damaged_instead_of_spinning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tablet");
    let removed = damage::remove_blob(&data);

    let (result, took) = open_and_status(&data, KEY);
    let reason = assert_damaged(result, &data);
    assert!(
        reason.contains("docs"),
        "the reason names the tree: {reason}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // The format marker still opens: another key is told apart, as a
    // wrong key, not as damage.
    let (result, _) = open_and_status(&data, OTHER_KEY);
    match result.map_err(|e| *e) {
        Err(ClientError::WrongKey) => {}
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // Nothing was changed: the right key is still refused the same way.
    assert!(!removed.exists());
    let (result, _) = open_and_status(&data, KEY);
    assert_damaged(result, &data);
}

#[test]
fn a_log_whose_segments_claim_the_same_lsn_is_refused_as_damaged_instead_of_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tablet");
    damage::duplicate_segment_header(&data);

    let (result, took) = open_and_status(&data, KEY);
    let reason = assert_damaged(result, &data);
    assert!(reason.contains("panicked"), "{reason}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // sled fails before any key is checked: the store is damaged whatever
    // the key, and a retry in the same process fails the same way.
    let (result, _) = open_and_status(&data, OTHER_KEY);
    assert_damaged(result, &data);
}
