//! Photos, recordings and scanned pages on records, over links that drop:
//! the bytes go on their own resumable queue after the record change that
//! refers to them, a cut costs at most the chunk in flight, a server
//! killed mid-upload resumes at what it had made durable, bytes changed in
//! flight or forged are refused, reads follow the record's access, limits
//! refuse by name, and an erased contact's attachments go with it.

use std::sync::Mutex;
use std::time::Duration;

use baraza_client::{SyncEvent, SyncListener, UploadState};
use baraza_tests::{https_get, https_request_with, Link, Middlebox, ServerProcess, Tablet};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Bytes that do not compress and differ per seed, like a photo's.
fn photo(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

const CHUNK_MAX: u64 = 64 * 1024;

fn small_chunks() -> String {
    format!("[attachments]\nchunk_max_bytes = {CHUNK_MAX}\n")
}

/// A meeting in kibera-north made and synced by `tablet`.
async fn meeting(tablet: &Tablet) -> String {
    let id = tablet
        .create_record(
            "meeting",
            "kibera-north",
            vec![kv("title", "Lighting baraza")],
        )
        .unwrap();
    assert_eq!(tablet.sync().await.refused, 0);
    id
}

/// Where the server says an upload stands: (offset, complete).
async fn upload_status(
    server: &ServerProcess,
    tablet: &Tablet,
    id: &str,
    sha: &str,
) -> (u64, bool) {
    let (status, body) = https_get(
        server,
        &format!("/v1/records/{id}/attachments/{sha}/upload"),
        Some(tablet.token()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        body["offset"].as_u64().unwrap(),
        body["complete"].as_bool().unwrap(),
    )
}

/// Upload passes until the queue is empty, each failure (a cut) retried;
/// returns the failures seen.
async fn upload_through(tablet: &Tablet, listener: &dyn SyncListener, tries: usize) -> usize {
    let mut failures = 0;
    for _ in 0..tries {
        match tokio::time::timeout(Duration::from_secs(60), tablet.upload_attachments(listener))
            .await
        {
            Ok(Ok(report)) if report.waiting == 0 && report.refused == 0 => return failures,
            Ok(Ok(report)) => panic!("an upload pass left work: {report:?}"),
            Ok(Err(_)) | Err(_) => failures += 1,
        }
    }
    panic!("the upload did not finish in {tries} passes");
}

/// The highest offset the server acknowledged to the tablet.
#[derive(Default)]
struct Acked(Mutex<u64>);

impl SyncListener for Acked {
    fn on_event(&self, event: SyncEvent) {
        if let SyncEvent::Attachment {
            upload: true, done, ..
        } = event
        {
            let mut acked = self.0.lock().unwrap();
            *acked = (*acked).max(done);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_crosses_a_link_cut_every_200_kb_whole_at_one_chunk_per_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(&tmp.path().join("server"), &small_chunks());
    let officer = Tablet::new(&server, "officer's tablet");
    let supervisor = Tablet::new(&server, "supervisor's tablet");
    let id = meeting(&officer).await;

    let link = Link::start(server.addr(), Some(200 * 1024)).await;
    officer
        .configure(&link.url(), Some(&server.ca_path()), officer.token())
        .unwrap();
    let bytes = photo(5_000_000, 1);
    let reference = officer
        .attach(&id, "photos", &bytes, "image/jpeg", "scene.jpg")
        .unwrap();
    assert_eq!(reference.size_bytes, 5_000_000);
    assert_eq!(
        officer.attachments(&id).unwrap()[0].upload,
        UploadState::Pending
    );
    // The record change goes first; the upload pass after it is cut.
    let acked = Acked::default();
    let report = officer.sync_heard_by(&acked, Duration::from_secs(60)).await;
    assert_eq!(report.attachments.waiting, 1, "{report:?}");
    let failures = 1 + upload_through(&officer, &acked, 200).await;
    assert!(failures > 10, "the link cut the upload {failures} times");
    assert_eq!(
        officer.attachments(&id).unwrap()[0].upload,
        UploadState::Uploaded
    );
    assert_eq!(*acked.0.lock().unwrap(), 5_000_000);

    // Every byte once, plus at most one chunk per cut and what TLS and
    // HTTP wrap around them: a handshake per connection, a request head
    // and TLS record overhead per chunk of at least 16 KiB.
    let chunks_at_most = 5_000_000 / (16 * 1024) + link.cuts() + 1;
    let allowance = link.cuts() * CHUNK_MAX + link.connections() * 4096 + chunks_at_most * 600;
    assert!(
        link.bytes_up() <= 5_000_000 + allowance,
        "{} bytes went up for a 5,000,000-byte photo over {} cuts and {} connections",
        link.bytes_up(),
        link.cuts(),
        link.connections()
    );

    assert_eq!(
        upload_status(&server, &officer, &id, &reference.sha256).await,
        (5_000_000, true)
    );
    supervisor.sync().await;
    let fetched = supervisor
        .fetch_attachment(&id, &reference.sha256, &baraza_client::NoListener)
        .await
        .unwrap();
    assert!(fetched == bytes, "the server's copy is the photo");
    let held = supervisor.attachments(&id).unwrap();
    assert!(held[0].complete && held[0].upload == UploadState::Remote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_resumes_at_what_it_had_made_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with_config(&tmp.path().join("server"), &small_chunks());
    let officer = std::sync::Arc::new(Tablet::new(&server, "officer's tablet"));
    let id = meeting(&officer).await;
    // A link slow enough (1 MB/s up) that the upload is surely under way
    // when the server dies: each chunk's acknowledgement is seen by the
    // listener.
    let link = Link::shaped(server.addr(), None, Some(1_000_000)).await;
    officer
        .configure(&link.url(), Some(&server.ca_path()), officer.token())
        .unwrap();
    let bytes = photo(3_000_000, 2);
    let sha = officer
        .attach(&id, "audio", &bytes, "audio/ogg", "meeting.ogg")
        .unwrap()
        .sha256;
    let acked = std::sync::Arc::new(Acked::default());
    let uploading = {
        let (officer, acked) = (officer.clone(), acked.clone());
        tokio::spawn(async move { officer.sync_once(acked.as_ref()).await })
    };
    baraza_tests::wait_until(
        "half a megabyte acknowledged",
        Duration::from_secs(30),
        || *acked.0.lock().unwrap() >= 500_000,
    )
    .await;
    server.kill9();
    let before_kill = *acked.0.lock().unwrap();
    let report = uploading.await.unwrap().unwrap();
    assert_eq!(
        report.attachments.waiting, 1,
        "the pass ends with the server"
    );
    server.restart();
    officer.point_at(&server);

    let (offset, complete) = upload_status(&server, &officer, &id, &sha).await;
    assert!(!complete);
    assert!(
        offset >= before_kill,
        "the server holds {offset} bytes after the kill, less than the {before_kill} it acknowledged"
    );
    let resumed = Acked::default();
    upload_through(&officer, &resumed, 5).await;
    assert_eq!(
        upload_status(&server, &officer, &id, &sha).await,
        (3_000_000, true)
    );
    let supervisor = Tablet::new(&server, "supervisor's tablet");
    supervisor.sync().await;
    let fetched = supervisor
        .fetch_attachment(&id, &sha, &baraza_client::NoListener)
        .await
        .unwrap();
    assert!(fetched == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_changed_in_flight_is_sent_again_and_forged_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(&tmp.path().join("server"), &small_chunks());
    let officer = Tablet::new(&server, "officer's tablet");
    let id = meeting(&officer).await;
    let middlebox = Middlebox::start(server.addr(), &server.ca_path()).await;
    officer
        .configure(&middlebox.url(), Some(middlebox.ca()), officer.token())
        .unwrap();
    let bytes = photo(300_000, 3);
    let sha = officer
        .attach(
            &id,
            "attendance_sheet",
            &bytes,
            "application/pdf",
            "sheet.pdf",
        )
        .unwrap()
        .sha256;
    let report = officer.sync().await;
    assert!(middlebox.changed(), "the middlebox changed a byte");
    assert_eq!(report.attachments.uploaded, 1, "{report:?}");
    officer.point_at(&server);
    let fetched = officer
        .fetch_attachment(&id, &sha, &baraza_client::NoListener)
        .await
        .unwrap();
    assert!(fetched == bytes);
    assert!(server
        .log()
        .contains("attachment chunk does not match its digest"));

    // A reference to some bytes, and other bytes sent under its name.
    let real = "the real statement, signed".to_string();
    let forged = "a forged statement, signed".to_string();
    let real_sha = hex_sha(real.as_bytes());
    officer
        .add_item(
            &id,
            "photos",
            vec![
                kv("sha256", &real_sha),
                kv("size_bytes", &real.len().to_string()),
                kv("mime", "image/png"),
                kv("name", "statement.png"),
            ],
        )
        .unwrap();
    officer.sync().await;
    let auth = format!("Bearer {}", officer.token());
    let chunk_sha = hex_sha(forged.as_bytes());
    let reply = put_chunk(&server, &auth, &id, &real_sha, 0, &chunk_sha, &forged).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.json()["error"], "not_its_bytes");
    assert_eq!(
        upload_status(&server, &officer, &id, &real_sha).await,
        (0, false)
    );
    // A chunk whose own digest is wrong is written nowhere.
    let reply = put_chunk(&server, &auth, &id, &real_sha, 0, &chunk_sha, &real).await;
    assert_eq!(reply.json()["error"], "chunk_corrupt", "{}", reply.body);
    assert_eq!(
        upload_status(&server, &officer, &id, &real_sha).await,
        (0, false)
    );
    // The real bytes are taken.
    let reply = put_chunk(&server, &auth, &id, &real_sha, 0, &real_sha, &real).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(
        server
            .audit_entries()
            .iter()
            .any(|e| e["event"] == "attachment_hash_mismatch"
                && e["details"]["record"] == id.as_str())
    );
}

fn hex_sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn put_chunk(
    server: &ServerProcess,
    auth: &str,
    id: &str,
    sha: &str,
    offset: u64,
    chunk_sha: &str,
    body: &str,
) -> baraza_tests::HttpReply {
    let path = format!("/v1/records/{id}/attachments/{sha}?offset={offset}");
    let headers = [("Authorization", auth), ("baraza-chunk-sha256", chunk_sha)];
    baraza_tests::https_request_raw(server, "PUT", &path, &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_follow_their_record_and_go_with_an_erased_contact() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("pc.kiprotich", "officer", &["eastleigh"]);
    server.add_user("pc.achieng", "officer", &["mathare"]);
    server.add_user("sgt.wanjiru", "supervisor", &["eastleigh"]);
    let officer = Tablet::for_user(&server, "officer's tablet", "pc.kiprotich", "eastleigh");
    let elsewhere = Tablet::for_user(&server, "mathare tablet", "pc.achieng", "mathare");
    let supervisor = Tablet::for_user(&server, "supervisor's tablet", "sgt.wanjiru", "eastleigh");

    let note = officer
        .create_record("patrol_note", "eastleigh", vec![kv("beat", "E2")])
        .unwrap();
    let feedback = officer
        .create_record("feedback", "eastleigh", vec![kv("category", "complaint")])
        .unwrap();
    let contact = officer
        .create_record(
            "feedback_contact",
            "eastleigh",
            vec![kv("feedback", &feedback)],
        )
        .unwrap();
    let scene = photo(80_000, 4);
    let scene_sha = officer
        .attach(&note, "photos", &scene, "image/jpeg", "scene.jpg")
        .unwrap()
        .sha256;
    let id_card = photo(40_000, 5);
    let id_sha = officer
        .attach(&contact, "documents", &id_card, "image/png", "id-card.png")
        .unwrap()
        .sha256;
    // An observation's own photo, in the list inside its item.
    officer
        .add_item(&note, "observations", vec![kv("text", "broken gate")])
        .unwrap();
    let gate = photo(20_000, 12);
    let gate_sha = officer
        .attach(
            &note,
            "observations.0.photos",
            &gate,
            "image/jpeg",
            "gate.jpg",
        )
        .unwrap()
        .sha256;
    let report = officer.sync().await;
    assert_eq!(report.attachments.uploaded, 3, "{report:?}");
    let listed = officer.attachments(&note).unwrap();
    assert!(listed
        .iter()
        .any(|a| a.reference.field == "observations.0.photos" && a.reference.sha256 == gate_sha));

    // Another area's officer: absence, the same as for bytes that do not
    // exist, and audited.
    let path = format!("/v1/records/{note}/attachments/{scene_sha}");
    let (status, body) = https_get(&server, &path, Some(elsewhere.token())).await;
    assert_eq!(status, 404, "{body}");
    let missing = format!("/v1/records/{note}/attachments/{}", "0".repeat(64));
    let (status, same) = https_get(&server, &missing, Some(officer.token())).await;
    assert_eq!((status, same), (404, body));
    assert!(server
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "attachment_refused"
            && e["details"]["record"] == note.as_str()
            && e["details"]["user"] == "pc.achieng"));
    // A range resumes a download.
    let auth = format!("Bearer {}", supervisor.token());
    let reply = https_request_with(
        &server,
        "GET",
        &path,
        &[("Authorization", &auth), ("Range", "bytes=70000-")],
        None,
    )
    .await;
    assert_eq!(reply.status, 206);
    assert_eq!(
        reply.header("content-range"),
        Some("bytes 70000-79999/80000")
    );

    supervisor.sync().await;
    let fetched = supervisor
        .fetch_attachment(&contact, &id_sha, &baraza_client::NoListener)
        .await
        .unwrap();
    assert!(fetched == id_card);
    let fetched = supervisor
        .fetch_attachment(&note, &gate_sha, &baraza_client::NoListener)
        .await
        .unwrap();
    assert!(fetched == gate);

    let out = server.command(&["record", "erase", "--id", &contact], "");
    assert!(out.status.success(), "{out:?}");
    let contact_path = format!("/v1/records/{contact}/attachments/{id_sha}");
    let (status, _) = https_get(&server, &contact_path, Some(officer.token())).await;
    assert_eq!(status, 404);
    // The bytes went too: a new record naming the same digest finds none
    // of them on the server, on either backend.
    let again = officer
        .create_record(
            "feedback_contact",
            "eastleigh",
            vec![kv("feedback", &feedback)],
        )
        .unwrap();
    officer
        .add_item(
            &again,
            "documents",
            vec![
                kv("sha256", &id_sha),
                kv("size_bytes", &id_card.len().to_string()),
                kv("mime", "image/png"),
                kv("name", "id-card.png"),
            ],
        )
        .unwrap();
    officer.sync().await;
    assert_eq!(
        upload_status(&server, &officer, &again, &id_sha).await,
        (0, false)
    );
    if !server.on_postgres() {
        let bytes_in = |sha: &str| {
            ["whole", "partial"]
                .iter()
                .any(|d| file_named(&server.data_dir().join("attachments").join(d), sha))
        };
        assert!(!bytes_in(&id_sha));
        assert!(bytes_in(&scene_sha));
    }
    supervisor.sync().await;
    assert!(
        supervisor.attachments(&contact).is_err(),
        "the contact is gone"
    );
    assert_eq!(
        supervisor.attachment_bytes(&contact, &id_sha).unwrap(),
        None
    );
}

fn file_named(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            path.file_name().is_some_and(|n| n == name)
                || (path.is_dir() && file_named(&path, name))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_over_the_limit_is_refused_by_name_kept_and_deletable() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[attachments]\nsize_max_bytes = 100000\n",
    );
    let liaison = Tablet::new(&server, "liaison's tablet");
    let id = meeting(&liaison).await;
    let big = photo(150_000, 6);
    let sha = liaison
        .attach(&id, "photos", &big, "image/jpeg", "crowd.jpg")
        .unwrap()
        .sha256;
    let report = liaison.sync().await;
    assert_eq!(report.attachments.refused, 1, "{report:?}");
    let listed = liaison.attachments(&id).unwrap();
    match &listed[0].upload {
        UploadState::Refused { limit, message, .. } => {
            assert_eq!(limit.as_deref(), Some("size_max_bytes"));
            assert!(message.contains("100000"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(liaison.attachment_bytes(&id, &sha).unwrap(), Some(big));

    liaison.delete_attachment(&id, &sha).unwrap();
    assert!(liaison.attachments(&id).unwrap().is_empty());
    assert_eq!(liaison.attachment_bytes(&id, &sha).unwrap(), None);
    liaison.sync().await;
    let (status, body) =
        https_get(&server, &format!("/v1/records/{id}"), Some(liaison.token())).await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["fields"]["photos"], serde_json::json!([]), "{body}");
}

/// A new meeting whose photos name the bytes `sha` (of `len` bytes), its
/// reference synced: asking where their upload stands then says whether
/// the server holds them.
async fn naming(tablet: &Tablet, sha: &str, len: usize) -> String {
    let id = tablet
        .create_record("meeting", "kibera-north", vec![kv("title", "Probe")])
        .unwrap();
    tablet
        .add_item(
            &id,
            "photos",
            vec![
                kv("sha256", sha),
                kv("size_bytes", &len.to_string()),
                kv("mime", "image/jpeg"),
                kv("name", "probe.jpg"),
            ],
        )
        .unwrap();
    tablet.sync().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_no_record_refers_to_are_removed_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[attachments]\ngarbage_grace_secs = 1\ngarbage_every_secs = 1\n",
    );
    let liaison = Tablet::new(&server, "liaison's tablet");
    let id = meeting(&liaison).await;
    let dropped = photo(30_000, 7);
    let kept = photo(30_000, 8);
    let dropped_sha = liaison
        .attach(&id, "photos", &dropped, "image/jpeg", "blurred.jpg")
        .unwrap()
        .sha256;
    let kept_sha = liaison
        .attach(&id, "photos", &kept, "image/jpeg", "sharp.jpg")
        .unwrap()
        .sha256;
    assert_eq!(liaison.sync().await.attachments.uploaded, 2);
    liaison.delete_attachment(&id, &dropped_sha).unwrap();
    liaison.sync().await;

    // A second record naming the dropped bytes asks where their upload
    // stands: once collected, the server holds none of them.
    let probe = naming(&liaison, &dropped_sha, dropped.len()).await;
    // Asking made the probe an owner: it refers to the bytes, so they
    // stay while it does.
    assert_eq!(
        upload_status(&server, &liaison, &probe, &dropped_sha).await,
        (30_000, true)
    );
    liaison.remove_item(&probe, "photos", 0).unwrap();
    liaison.sync().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = naming(&liaison, &dropped_sha, dropped.len()).await;
        let (offset, complete) = upload_status(&server, &liaison, &again, &dropped_sha).await;
        liaison.remove_item(&again, "photos", 0).unwrap();
        liaison.sync().await;
        if (offset, complete) == (0, false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped photo was not collected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        upload_status(&server, &liaison, &id, &kept_sha).await,
        (30_000, true)
    );
    assert!(server
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "attachment_collected"
            && e["details"]["sha256"] == dropped_sha.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisors_tablet_prefetches_the_photos_of_submitted_meetings() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let liaison = Tablet::new(&server, "liaison's tablet");
    let supervisor = Tablet::new(&server, "supervisor's tablet");
    supervisor
        .set_prefetch(Some(&baraza_client::PrefetchPolicy {
            kinds: vec![baraza_records::Kind::Meeting],
            states: vec![baraza_records::ReviewState::Submitted],
            mime_prefixes: vec!["image/".into()],
            size_max_bytes: None,
        }))
        .unwrap();

    let submitted = meeting(&liaison).await;
    let draft = meeting(&liaison).await;
    let photo_bytes = photo(20_000, 9);
    let photo_sha = liaison
        .attach(&submitted, "photos", &photo_bytes, "image/jpeg", "hall.jpg")
        .unwrap()
        .sha256;
    let audio_sha = liaison
        .attach(
            &submitted,
            "audio",
            &photo(10_000, 10),
            "audio/ogg",
            "minutes.ogg",
        )
        .unwrap()
        .sha256;
    let draft_sha = liaison
        .attach(
            &draft,
            "photos",
            &photo(10_000, 11),
            "image/jpeg",
            "draft.jpg",
        )
        .unwrap()
        .sha256;
    liaison.submit(&submitted).unwrap();
    assert_eq!(liaison.sync().await.attachments.uploaded, 3);

    let report = supervisor.sync().await;
    assert_eq!(report.attachments.fetched, 1, "{report:?}");
    assert_eq!(
        supervisor.attachment_bytes(&submitted, &photo_sha).unwrap(),
        Some(photo_bytes)
    );
    assert_eq!(
        supervisor.attachment_bytes(&submitted, &audio_sha).unwrap(),
        None
    );
    assert_eq!(
        supervisor.attachment_bytes(&draft, &draft_sha).unwrap(),
        None
    );
    // Nothing more to fetch the next time.
    assert_eq!(supervisor.sync().await.attachments.fetched, 0);
}
