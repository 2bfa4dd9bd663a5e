//! The review desk in a real browser (Debian's headless Chromium through
//! chromedriver) against a real server: a supervisor signs in, opens a
//! submitted record with a conflict, resolves it, returns it with a
//! comment, approves another (each decision confirmed, then sent after
//! its undo window); after each step the test checks what the page shows
//! and what the server stored. A record full of markup and
//! script renders as inert text. The record view is saved as a screenshot.

use baraza_tests::webdriver::Browser;
use baraza_tests::{DeskSession, ReviewWorld, HARNESS_PASSWORD};
use serde_json::json;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_works_the_queue_in_a_browser() {
    let world = ReviewWorld::open().await;
    let (server, officer, liaison) = (&world.server, &world.officer, &world.liaison);
    let meeting = world.meeting.clone();
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    officer.submit(&patrol).unwrap();
    let probe_title = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    let probe = officer
        .create_record("meeting", "kibera", vec![kv("title", probe_title)])
        .unwrap();
    officer.submit(&probe).unwrap();
    liaison.sync().await;
    officer.sync().await;
    let witness = DeskSession::open(server, "sgt.wanjiru").await;

    // The browser is driven from a blocking thread: WebDriver calls wait.
    let url = server.url();
    let (meeting_id, patrol_id, probe_id) = (meeting.clone(), patrol.clone(), probe.clone());
    let screenshot_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("review-record.png");
    let shot_path = screenshot_path.clone();
    // Mid-test the page asks for a record to arrive while it is open.
    let (want_live, live_wanted) = std::sync::mpsc::channel::<()>();
    let (live_sent, live_arrived) = std::sync::mpsc::channel::<String>();
    let page = tokio::task::spawn_blocking(move || {
        let b = Browser::start();
        b.go(&format!("{url}/review"));
        b.type_into(&b.wait_for("#user"), "sgt.wanjiru");
        b.type_into(&b.wait_for("#password"), HARNESS_PASSWORD);
        b.click(&b.wait_for("#signin-form button[type=submit]"));
        b.wait_until("the three submitted records", || {
            (b.all("#queue li").len() == 3).then_some(())
        });
        let who = b.text_of("#who").unwrap_or_default();
        assert!(who.contains("sgt.wanjiru"), "{who}");

        // Open the conflicted meeting.
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{meeting_id}\"]")));
        let title = b.text(&b.wait_for("#record-title"));
        assert!(title.contains("Street lighting baraza"), "{title}");
        let conflict = b.text(&b.wait_for(".conflict[data-path=\"place\"]"));
        for expected in ["Chief's camp", "Social hall", "cpl.otieno", "lia.achieng"] {
            assert!(conflict.contains(expected), "{expected} not in {conflict}");
        }
        let png = b.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(&shot_path, &png).expect("save the screenshot");

        // Resolve it with one of its values.
        b.click(&b.wait_for_xpath(
            "//div[@data-path='place']//div[@class='value'][span[@class='v' and text()='Social hall']]/button",
        ));
        b.wait_until("the conflict resolved", || {
            (b.all(".conflict").is_empty()
                && b.text_of("#fields tr[data-field=\"place\"] td").as_deref()
                    == Some("Social hall"))
            .then_some(())
        });

        // Return it with a comment: the page asks first, then waits a
        // few seconds (with Undo) before it sends the decision.
        b.type_into(&b.wait_for("#return-comment"), "add the attendee count");
        b.click(&b.wait_for("#return"));
        b.wait_until("the confirmation asked", || {
            b.is_displayed("#confirm").then_some(())
        });
        b.click(&b.wait_for("#confirm-ok"));
        b.wait_until("the undo window", || {
            b.is_displayed("#pending").then_some(())
        });
        b.wait_until("the record shown as returned", || {
            (b.attribute("#review-state", "data-state").as_deref() == Some("returned"))
                .then_some(())
        });
        let comments = b.text(&b.wait_for("#comments"));
        assert!(
            comments.contains("sgt.wanjiru: add the attendee count"),
            "{comments}"
        );

        // Approve the patrol note.
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{patrol_id}\"]")));
        b.wait_until("the patrol note open", || {
            b.text_of("#record-title")
                .filter(|t| t.contains("B4"))
                .map(|_| ())
        });
        b.click(&b.wait_for("#approve"));
        b.wait_until("the confirmation asked", || {
            b.is_displayed("#confirm").then_some(())
        });
        b.click(&b.wait_for("#confirm-ok"));
        b.wait_until("the patrol note shown as approved", || {
            (b.attribute("#review-state", "data-state").as_deref() == Some("approved"))
                .then_some(())
        });

        // The report for command: meetings by area and month, and the
        // share of decided records returned (one of two).
        b.click(&b.wait_for("#report-toggle"));
        let meetings = b.text(&b.wait_for("#report-meetings"));
        assert!(meetings.contains("kibera"), "{meetings}");
        let handling = b.text(&b.wait_for("#report-handling"));
        assert!(handling.contains("Share returned 50%"), "{handling}");
        b.click(&b.wait_for("#report-toggle"));

        // A record submitted while the page is open joins the queue
        // without a reload.
        want_live.send(()).expect("the test is waiting");
        let live = live_arrived
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a record sent while the page is open");
        b.wait_for(&format!("#queue li[data-id=\"{live}\"]"));

        // The probe: markup and script shown as text, never run.
        b.go(&format!("{url}/review"));
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{probe_id}\"]")));
        let shown = b.text(&b.wait_for("#record-title"));
        assert!(shown.contains("<script>window.pwned=2</script>"), "{shown}");
        assert!(b.all("#record img, #record script").is_empty());
        assert_eq!(b.script("return window.pwned === undefined;"), json!(true));
    });
    let wanted = tokio::task::spawn_blocking(move || {
        live_wanted
            .recv_timeout(std::time::Duration::from_secs(120))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if wanted {
        let live = officer
            .create_record("patrol_note", "kibera", vec![kv("beat", "B9")])
            .unwrap();
        officer.submit(&live).unwrap();
        officer.sync().await;
        let _ = live_sent.send(live);
    }
    if let Err(panic) = page.await {
        std::panic::resume_unwind(panic.into_panic());
    }

    // What the server stored after each step.
    let stored = witness.record(&meeting).await;
    assert_eq!(stored["fields"]["place"], "Social hall");
    assert!(stored["conflicts"].as_array().unwrap().is_empty());
    assert_eq!(stored["review_state"], "returned");
    assert_eq!(
        stored["review_comments"][0]["text"],
        "add the attendee count"
    );
    assert_eq!(witness.record(&patrol).await["review_state"], "approved");
    assert_eq!(witness.record(&probe).await["fields"]["title"], probe_title);
    assert!(screenshot_path.exists());
    eprintln!("record view screenshot: {}", screenshot_path.display());
}
