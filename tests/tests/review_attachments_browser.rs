//! The review desk shows what a record carries: a submitted meeting's
//! photo as the server's thumbnail (linking to the whole photo), its
//! recording in the browser's player, its signed attendance sheet as a
//! link to save, and a photo whose bytes have not reached the server yet
//! says so. In headless Chromium against a real server, behind the
//! desk's sign-in and CSP.

use baraza_tests::webdriver::Browser;
use baraza_tests::{ReviewWorld, HARNESS_PASSWORD};

/// A PNG photo, wider than it is tall, with something in it to shrink.
fn png_photo(width: u32, height: u32) -> Vec<u8> {
    let photo = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut png = Vec::new();
    photo
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_shows_a_submitted_meetings_photo_audio_and_sheet() {
    let world = ReviewWorld::open().await;
    let (server, liaison) = (&world.server, &world.liaison);
    let meeting = world.meeting.clone();
    let photo = png_photo(1600, 900);
    liaison
        .attach(&meeting, "photos", &photo, "image/png", "crowd.png")
        .unwrap();
    liaison
        .attach(
            &meeting,
            "audio",
            b"OggS not really audio",
            "audio/ogg",
            "minutes.ogg",
        )
        .unwrap();
    liaison
        .attach(
            &meeting,
            "attendance_sheet",
            b"%PDF-1.4 sheet",
            "application/pdf",
            "sheet.pdf",
        )
        .unwrap();
    let report = liaison.sync().await;
    assert_eq!(report.attachments.uploaded, 3, "{report:?}");
    // A second photo whose bytes never leave the tablet: the reference
    // syncs, the upload does not happen.
    liaison
        .add_item(
            &meeting,
            "photos",
            vec![
                ("sha256".into(), "ab".repeat(32)),
                ("size_bytes".into(), "1000".into()),
                ("mime".into(), "image/jpeg".into()),
                ("name".into(), "still-on-tablet.jpg".into()),
            ],
        )
        .unwrap();
    liaison.sync().await;
    world.officer.sync().await;

    let url = server.url();
    let id = meeting.clone();
    tokio::task::spawn_blocking(move || {
        let b = Browser::start();
        b.go(&format!("{url}/review"));
        b.type_into(&b.wait_for("#user"), "sgt.wanjiru");
        b.type_into(&b.wait_for("#password"), HARNESS_PASSWORD);
        b.click(&b.wait_for("#signin-form button[type=submit]"));
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{id}\"]")));

        let img = "section[data-field=photos] figure.photo img";
        b.wait_for(img);
        b.scroll_to(img);
        // Loaded and decoded: the server's thumbnail, 320 pixels wide.
        let width = b.wait_until("the thumbnail decoded", || {
            let w = b.script_with(
                "const i = document.querySelector(arguments[0]); return i && i.complete ? i.naturalWidth : 0;",
                serde_json::json!([img]),
            );
            w.as_u64().filter(|w| *w > 0)
        });
        assert_eq!(width, 320, "the thumbnail, not the 1600-pixel photo");
        assert!(b.is_displayed(img), "the thumbnail is drawn");
        let caption = b.text_of("section[data-field=photos] figure.photo figcaption").unwrap_or_default();
        assert!(caption.contains("crowd.png"), "{caption}");
        let full = b.attribute("section[data-field=photos] figure.photo a", "href").unwrap_or_default();
        assert!(full.ends_with(&format!("/attachments/{}", sha256_hex(&png_photo(1600, 900)))), "{full}");

        let pending = b.wait_for("section[data-field=photos] .pending");
        assert_eq!(b.text(&pending), "Not uploaded yet");

        let audio = "section[data-field=audio] figure.audio audio";
        b.scroll_to(audio);
        assert!(b.is_displayed(audio), "the player is drawn");
        assert!(b.attribute(audio, "controls").is_some());

        let sheet = "section[data-field=attendance_sheet] figure.document a";
        b.scroll_to(sheet);
        assert!(b.is_displayed(sheet));
        assert_eq!(b.text_of(sheet).as_deref(), Some("sheet.pdf"));
        assert_eq!(b.attribute(sheet, "download").as_deref(), Some("sheet.pdf"));
    })
    .await
    .unwrap();

    // Behind the sign-in: the same URL without a session is refused.
    let (status, _) = baraza_tests::https_get(
        server,
        &format!(
            "/review/api/records/{meeting}/attachments/{}?thumb=1",
            sha256_hex(&photo)
        ),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
