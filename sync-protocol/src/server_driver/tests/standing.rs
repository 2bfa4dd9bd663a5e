//! The driver's timer, the device's standing and the bounds on what a
//! session keeps.

use super::*;

#[test]
fn a_quiet_tablet_is_closed_after_the_idle_time_while_a_pinging_one_stays() {
    let mut quiet = welcomed(0);
    let mut pinging = welcomed(0);
    assert_eq!(quiet.poll_timeout(), Some(secs(30)));
    // Ten minutes pass, the timer fired whenever due.
    for t in (0..=600).step_by(10) {
        let now = secs(t);
        if t % 30 == 0 {
            pinging.handle_ping(now);
        }
        for driver in [&mut quiet, &mut pinging] {
            if driver.poll_timeout().is_some_and(|d| d <= now) {
                driver.handle_timeout(now);
            }
        }
        if t < 60 {
            assert!(!quiet.is_closed(), "closed early at {t} s");
        }
    }
    assert_eq!(quiet.close_reason(), Some(&CloseReason::Idle));
    // No error frame: an idle close is the transport's to make.
    assert!(sent(&mut quiet).is_empty());
    let ended: Vec<AuditEvent> = audits(&mut quiet);
    assert!(matches!(
        ended.as_slice(),
        [AuditEvent::SessionEnded(s)] if s.reason == Some(CloseReason::Idle)
    ));
    assert!(!pinging.is_closed());
    assert_eq!(pinging.poll_timeout(), Some(secs(600 + 30)));
    assert!(audits(&mut pinging).is_empty());
}

#[test]
fn a_listening_tablet_that_answers_the_servers_keepalive_stays_and_a_vanished_one_goes() {
    let mut answers = welcomed(0);
    let mut vanished = welcomed(0);
    assert_eq!(answers.poll_timeout(), Some(secs(30)));
    let mut pings = 0;
    for t in (0..=600).step_by(5) {
        let now = secs(t);
        for driver in [&mut answers, &mut vanished] {
            if driver.poll_timeout().is_some_and(|d| d <= now) {
                driver.handle_timeout(now);
            }
        }
        // The tablet's WebSocket answers a ping with a pong.
        if answers.poll_keepalive() {
            pings += 1;
            answers.handle_ping(now);
        }
        let _ = vanished.poll_keepalive();
    }
    assert!(!answers.is_closed());
    assert_eq!(pings, 20, "one ping per half idle time");
    assert_eq!(vanished.close_reason(), Some(&CloseReason::Idle));
    assert!(!vanished.poll_keepalive());
}

#[test]
fn a_tablet_waiting_on_the_servers_storage_is_not_idle() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    assert_eq!(driver.poll_timeout(), None);
    driver.handle_timeout(secs(600));
    assert!(!driver.is_closed());
    driver.handle_commit(secs(600), write, stored(&doc_a, 1));
    assert_eq!(driver.poll_timeout(), Some(secs(630)));
}

#[test]
fn a_revoked_tablet_is_cut_with_revoked_and_its_pending_push_is_never_acknowledged() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    driver.handle_standing(secs(2), Standing::Revoked);
    let out = sent(&mut driver);
    let [Message::Error(e)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!((e.code, e.fatal), (ErrorCode::Revoked, true));
    assert!(driver.is_closed());
    assert!(!driver.wants_frames());
    assert_eq!(driver.close_reason(), Some(&CloseReason::Revoked));
    driver.handle_commit(secs(3), write, stored(&doc_a, 1));
    assert!(sent(&mut driver).is_empty());
    assert!(driver.handle_frame(secs(3), &push(a, &doc_a)).is_ok());
    assert!(tasks(&mut driver).is_empty());
    assert_eq!(audits(&mut driver).len(), 1);
}

#[test]
fn a_tablet_revoked_before_it_connected_gets_revoked_before_anything_else() {
    let mut driver = ServerDriver::new(config(), opening(0, Standing::Revoked), secs(0));
    assert!(driver.is_closed());
    let out = sent(&mut driver);
    assert!(
        matches!(out.as_slice(), [Message::Error(e)] if e.code == ErrorCode::Revoked && e.fatal)
    );
    driver.handle_frame(secs(0), &hello()).unwrap();
    assert!(sent(&mut driver).is_empty());
}

#[test]
fn a_retiring_tablet_is_asked_once_and_marked_retired_after_its_goodbye() {
    let mut driver = ServerDriver::new(config(), opening(0, Standing::Retiring), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    let out = sent(&mut driver);
    assert!(matches!(
        out.as_slice(),
        [Message::Welcome(_), Message::Error(e)] if e.code == ErrorCode::Retired && !e.fatal
    ));
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    driver.handle_commit(secs(1), write, stored(&doc_a, 1));
    assert_eq!(kinds(&sent(&mut driver)), ["ack"]);
    let goodbye = frame(Message::Error(ErrorMsg {
        code: ErrorCode::Retired,
        doc: None,
        message: "wiped".into(),
        fatal: true,
        rule: None,
    }));
    driver.handle_frame(secs(2), &goodbye).unwrap();
    assert!(matches!(
        tasks(&mut driver).as_slice(),
        [Task::MarkRetired { report }] if report == "wiped"
    ));
    let events = audits(&mut driver);
    assert_eq!(
        events[0],
        AuditEvent::DeviceRetired {
            report: "wiped".into()
        }
    );
    assert!(
        matches!(&events[1], AuditEvent::SessionEnded(s) if s.reason == Some(CloseReason::Retired))
    );
}

#[test]
fn a_changed_scope_ends_the_session_once_the_pending_push_is_answered() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    driver.handle_standing(secs(2), Standing::ScopeChanged);
    assert!(!driver.is_closed());
    assert!(!driver.wants_frames());
    driver.handle_durable(secs(2), 5);
    driver.handle_commit(secs(3), write, stored(&doc_a, 1));
    // The ack, and no feed read under the old scope.
    assert_eq!(kinds(&sent(&mut driver)), ["ack"]);
    assert!(feed_reads(&tasks(&mut driver)).is_empty());
    assert_eq!(driver.close_reason(), Some(&CloseReason::ScopeChanged));
}

#[test]
fn the_scope_is_noted_once_the_tablet_caught_up_to_the_welcome() {
    let mut driver = ServerDriver::new(config(), opening(2, Standing::Active), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    let first = tasks(&mut driver);
    assert!(!first.iter().any(|t| matches!(t, Task::NoteScope)));
    let mut feed = Records::with([record(1), record(2)]);
    driver.handle_feed(secs(0), &mut feed).unwrap();
    assert!(matches!(tasks(&mut driver).as_slice(), [Task::NoteScope]));
    driver.handle_durable(secs(1), 3);
    assert!(!tasks(&mut driver)
        .iter()
        .any(|t| matches!(t, Task::NoteScope)));
}

#[test]
fn the_sessions_bookkeeping_lists_a_bounded_number_of_records_and_counts_them_all() {
    let mut config = config();
    config.records_listed_max = 3;
    let mut driver = ServerDriver::new(config, opening(0, Standing::Active), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    tasks(&mut driver);
    for n in 1..=10u8 {
        let (id, doc) = record(n);
        driver.handle_frame(secs(1), &push(id, &doc)).unwrap();
        let write = admitted(&tasks(&mut driver));
        driver.handle_commit(secs(1), write, stored(&doc, n as Seq));
    }
    // And ten other records come down the feed.
    let mut feed = Records::with((11..=20).map(record));
    driver.handle_durable(secs(2), 10);
    tasks(&mut driver);
    driver.handle_feed(secs(2), &mut feed).unwrap();
    driver.handle_closed(secs(3), CloseReason::Disconnected);
    let ended = audits(&mut driver);
    let [AuditEvent::SessionEnded(summary)] = ended.as_slice() else {
        panic!("{ended:?}");
    };
    assert_eq!(summary.frames_received, 11);
    assert_eq!(summary.received.listed().len(), 3);
    assert_eq!(summary.received.count(), 10);
    assert_eq!(summary.sent.listed().len(), 3);
    assert_eq!(summary.sent.count(), 10);
    assert_eq!(summary.reason, Some(CloseReason::Disconnected));
}

#[test]
fn a_caller_reading_past_the_pipeline_limit_gets_refusals_not_an_endless_queue() {
    let limits = Limits {
        pushes_in_flight_max: 2,
        ..Limits::DEFAULT
    };
    let mut config = config();
    config.limits = limits;
    let mut driver = ServerDriver::new(config, opening(0, Standing::Active), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    sent(&mut driver);
    tasks(&mut driver);
    let mut refused = 0;
    for n in 1..=6u8 {
        let (id, doc) = record(n);
        if n == 3 {
            assert!(!driver.wants_frames());
        }
        driver.handle_frame(secs(1), &push(id, &doc)).unwrap();
        refused += sent(&mut driver)
            .iter()
            .filter(|m| matches!(m, Message::Error(e) if e.code == ErrorCode::StorageFailure))
            .count();
    }
    assert_eq!(driver.pending_writes(), 4);
    assert_eq!(refused, 2);
}

#[test]
fn a_tablet_whose_scope_changed_is_named_and_refed_from_the_start() {
    let own = DeviceName {
        device: DeviceId::from_bytes([7; 16]),
        name: "Kibera tablet 3".into(),
    };
    let opening = Opening {
        durable: 3,
        refeed: true,
        standing: Standing::Active,
        own_name: Some(own.clone()),
    };
    let mut driver = ServerDriver::new(config(), opening, secs(0));
    let hello = frame(Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        store: Some(StoreId::from_bytes([2; 16])),
        cursor: 2,
        names: true,
        packing: Vec::new(),
    }));
    driver.handle_frame(secs(0), &hello).unwrap();
    let out = sent(&mut driver);
    let [Message::Welcome(w), Message::Devices(d)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(w.refeed && !w.reset);
    assert_eq!(d.names, [own]);
    let reads = feed_reads(&tasks(&mut driver));
    assert_eq!(reads[0].after, 0, "the feed goes out again from the start");
}
