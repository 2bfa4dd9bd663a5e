//! A tablet's data dir, copied off the device, reveals no record text and no
//! token without the key (issue 4, item 8). The records are written both
//! ways a tablet writes them (edited on it, and received from the server),
//! the search reads every byte of every file, and the server's own data dir,
//! which keeps the same automerge changes unsealed, shows that the search
//! finds the phrases wherever they are stored in the clear. Then the wrong
//! key is refused and the right one reads everything back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baraza_client::{Client, ClientError, NoListener};
use baraza_tests::{device_of, new_key, pin_to_sled, ServerProcess, Tablet};

/// Every byte of every regular file under `dir` (the server's dir also
/// holds its admin socket).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.is_file() {
                let bytes = std::fs::read(&path).expect("read a file");
                out.push((path, bytes));
            }
        }
    }
    out
}

/// The files under `dir` holding `needle` byte for byte.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(path, _)| path)
        .collect()
}

/// Opens a tablet store just closed in this process. sled lets go of its
/// lock file only once its background threads drop their last handle, a
/// moment after the client is dropped, so a lock error is waited out.
fn reopen(data: &Path, key: &[u8]) -> Result<Client, Box<ClientError>> {
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

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_data_dir_searched_for_a_phrase_finds_nothing_without_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    // The control searches the server's own files for what it keeps.
    pin_to_sled(&tmp.path().join("server"));
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("cpl.achieng", "officer", &["kamukunji"]);
    server.add_user("sgt.wanjiru", "supervisor", &["kamukunji"]);
    let token = server.add_device_for("patrol tablet", "cpl.achieng");
    let data = tmp.path().join("patrol-tablet");
    let key = new_key();

    let title = "Robbery at Kamukunji night market";
    let notes = "Witness saw a grey Probox with plates KDA 417X";
    let received = "Desk sergeant heard shouting near Gikomba";
    let client = Client::open(&data, &key).unwrap();
    client
        .configure(&server.url(), Some(&server.ca_path()), &token)
        .unwrap();
    client.set_identity("cpl.achieng", "kamukunji").unwrap();
    let id = client
        .create_record("patrol_note", "kamukunji", vec![kv("beat", title)])
        .unwrap();
    client.splice(&id, "notes", 0, 0, notes).unwrap();
    let report = client.sync_once(&NoListener).await.unwrap();
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));

    // Another device's record reaches the tablet through the server.
    let desk = Tablet::for_user(&server, "front desk tablet", "sgt.wanjiru", "kamukunji");
    let other = desk
        .create_record("meeting", "kamukunji", vec![kv("title", received)])
        .unwrap();
    desk.sync().await;
    let report = client.sync_once(&NoListener).await.unwrap();
    assert_eq!(report.docs_received, 1);
    drop(client);

    // The control: the server keeps the same changes unsealed, and there
    // the search finds every phrase; a tablet writing them as they are
    // would be found out the same way.
    for phrase in [title, notes, received] {
        assert!(
            !holding(server.data_dir(), phrase).is_empty(),
            "the control failed: {phrase:?} is not in the server's files, \
             so not finding it on the tablet would prove nothing"
        );
    }
    // The copied tablet dir: nothing to find.
    let secret = token.rsplit('_').next().unwrap();
    let device = device_of(&token);
    assert!(files_under(&data).len() > 1, "the store has files");
    for needle in [title, notes, received, &token, secret, &device] {
        let found = holding(&data, needle);
        assert!(found.is_empty(), "{needle:?} is readable in {found:?}");
    }

    // The wrong key is refused and changes nothing; the right one reads
    // everything back and the tablet syncs on.
    match reopen(&data, &new_key()).map_err(|e| *e) {
        Err(ClientError::WrongKey) => {}
        Err(other) => panic!("expected WrongKey, got {other}"),
        Ok(_) => panic!("another key opened the store"),
    }
    assert!(matches!(
        Client::open(&data, &key[..16]),
        Err(ClientError::KeyLength(16))
    ));
    let client = reopen(&data, &key).unwrap();
    let value = |id: &str, field: &str| {
        client
            .get(id)
            .unwrap()
            .fields
            .into_iter()
            .find(|f| f.name == field)
            .map(|f| f.value)
    };
    assert_eq!(value(&id, "beat").as_deref(), Some(title));
    assert_eq!(value(&id, "notes").as_deref(), Some(notes));
    assert_eq!(value(&other, "title").as_deref(), Some(received));
    assert_eq!(client.status().unwrap().unacknowledged, 0);
    client.set(&id, "officer", "Cpl. Achieng").unwrap();
    let report = client.sync_once(&NoListener).await.unwrap();
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
}
