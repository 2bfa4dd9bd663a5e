//! Tablet stores written through the SDK, then damaged in the two ways
//! found to defeat sled 0.34 (by experiment against real stores; the
//! damage is fixed, not random):
//!
//! - [`remove_blob`]: a record larger than sled's blob threshold lives in
//!   its own file under `store/blobs/`. Once the store has been reopened
//!   (sled writes a snapshot then, so its recovery no longer reads that
//!   log entry), deleting the file leaves a page sled cannot read: the
//!   open succeeds, and every scan of the `docs` tree yields the same error
//!   forever, so `Tree::len` (the record count in `status`) spins at 100%
//!   CPU and never returns.
//! - [`duplicate_segment_header`]: sled's log is 512 KiB segments, each
//!   starting with a 20-byte header holding its LSN. Copying the first
//!   segment's header over the second's makes both claim LSN 0, and sled's
//!   recovery panics (`duplicate segment LSN 0 detected`) inside
//!   `sled::open`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baraza_client::{Client, ClientError};

/// The key the fixtures seal their stores with.
pub const KEY: [u8; 32] = [0x6b; 32];
/// Another key, for telling a wrong key apart from damage.
pub const OTHER_KEY: [u8; 32] = [0x11; 32];
/// sled 0.34's default log segment (the store's `conf` says so; checked).
const SEGMENT: usize = 512 * 1024;
/// sled writes a value as a separate blob file above segment / 4 - 20
/// bytes; a record's saved document must exceed it, after automerge's
/// compression, so its text is incompressible and well above that.
const BLOB_SIZED: usize = 300_000;

/// `len` printable characters from a fixed xorshift sequence: the same
/// every run, and incompressible enough that automerge's deflate keeps
/// them large.
pub fn incompressible(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b' ' + (x % 95) as u8)
        })
        .collect()
}

/// Opens a store just closed in this process. sled lets go of its lock
/// file only once its background threads drop their last handle, a moment
/// after the client is dropped, so a lock error is waited out.
pub fn reopen(data: &Path, key: &[u8]) -> Result<Client, Box<ClientError>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::open(data, key) {
            Err(ClientError::Store(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(Box::new),
        }
    }
}

/// A configured tablet in `data` with a few small meetings and `big`
/// patrol notes whose `officer` field is `big_len` incompressible
/// characters. Closed when this returns.
fn write_store(data: &Path, key: &[u8], big: usize, big_len: usize) -> Vec<String> {
    let client = Client::open(data, key).expect("create the tablet store");
    let token = format!("bz_{}_{}", "ab".repeat(16), "cd".repeat(32));
    client
        .configure("https://127.0.0.1:9", None, &token)
        .expect("configure");
    client
        .set_identity("cpl.achieng", "mathare")
        .expect("set identity");
    let mut ids = Vec::new();
    for i in 0..3 {
        let title = format!("Market baraza {i}");
        ids.push(
            client
                .create_record("meeting", "mathare", vec![("title".into(), title)])
                .expect("create a meeting"),
        );
    }
    for i in 0..big {
        let fields = vec![
            ("beat".into(), format!("B{i}")),
            (
                "officer".into(),
                incompressible(big_len, 0x9e37_79b9 + i as u64),
            ),
        ];
        ids.push(
            client
                .create_record("patrol_note", "mathare", fields)
                .expect("create a large patrol note"),
        );
    }
    let status = client.status().expect("status of the new store");
    assert_eq!(status.records as usize, ids.len());
    ids
}

fn store_dir(data: &Path) -> PathBuf {
    data.join("store")
}

/// The precondition both damages rely on: sled's default segment size.
fn assert_segment_size(data: &Path) {
    // The text settings, then a 4-byte checksum.
    let conf = std::fs::read(store_dir(data).join("conf")).expect("read sled's conf");
    let conf = String::from_utf8_lossy(&conf);
    assert!(
        conf.contains(&format!("segment_size: {SEGMENT}")),
        "sled's segment size changed, the damage below no longer fits: {conf}"
    );
}

/// Writes a store whose one large record sled keeps as a blob file,
/// reopens it once (so sled writes its snapshot) and deletes that file.
/// Returns the path of the file deleted.
pub fn remove_blob(data: &Path) -> PathBuf {
    write_store(data, &KEY, 1, BLOB_SIZED);
    // The control: the intact store opens and counts its records.
    let client = reopen(data, &KEY).expect("reopen the intact store");
    assert_eq!(client.status().expect("status").records, 4);
    drop(client);
    wait_closed(data);
    assert_segment_size(data);
    let blobs: Vec<PathBuf> = std::fs::read_dir(store_dir(data).join("blobs"))
        .expect("list sled's blobs")
        .map(|e| e.expect("a blob entry").path())
        .collect();
    assert_eq!(
        blobs.len(),
        1,
        "expected one blob, the large record: {blobs:?}"
    );
    let snapshot = std::fs::read_dir(store_dir(data))
        .expect("list the store")
        .any(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .starts_with("snap.")
        });
    assert!(
        snapshot,
        "sled wrote no snapshot, so its recovery would read the blob's entry again"
    );
    std::fs::remove_file(&blobs[0]).expect("delete the blob");
    blobs[0].clone()
}

/// Writes a store of two segments or more (eight records of about 84 KB
/// each after compression) and copies the first segment's 20-byte header
/// (file offset 0) over the second's (offset 524288).
pub fn duplicate_segment_header(data: &Path) {
    write_store(data, &KEY, 8, 100_000);
    wait_closed(data);
    assert_segment_size(data);
    let db = store_dir(data).join("db");
    let mut bytes = std::fs::read(&db).expect("read sled's log");
    assert!(
        bytes.len() > SEGMENT + 20,
        "the log has one segment only ({} bytes)",
        bytes.len()
    );
    assert_ne!(bytes[..20], bytes[SEGMENT..SEGMENT + 20]);
    let (first, rest) = bytes.split_at_mut(SEGMENT);
    rest[..20].copy_from_slice(&first[..20]);
    std::fs::write(&db, &bytes).expect("write the damaged log");
}

/// Waits (up to 10 s) until no sled thread of this process still has the
/// store open, so nothing writes to its files after the damage. sled holds
/// a `flock` on `store/db` for as long as any of its threads has the file
/// open, and lets go a moment after the last handle is dropped; on Linux
/// `/proc/locks` shows it by inode. Elsewhere, a pause stands in.
fn wait_closed(data: &Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(store_dir(data).join("db"))
            .expect("stat sled's log")
            .ino();
        let needle = format!(":{inode} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            if !locks
                .lines()
                .any(|l| l.contains("FLOCK") && l.contains(&needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sled still holds {} after 10 s", data.display());
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = data;
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs `f` on its own thread and waits at most `limit`: a test must fail,
/// not hang, when the code under test spins. A stuck thread is left behind
/// (it ends with the test process).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {limit:?}: it hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}
