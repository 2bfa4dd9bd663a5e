//! The review desk's live updates: `GET /review/api/events`, a stream of
//! server-sent events, one `event: record` (the record's list row as
//! `data`) for every admitted write to a record the signed-in supervisor
//! may read.
//!
//! The stream wakes on the same signal as live sync sessions, the durable
//! feed position ([`SyncHub::durable`]), and reads the feed entries since
//! its last position (no document is loaded, the store is never polled).
//! Each stream holds at most [`EVENTS_BUFFERED_MAX`] events: a desk that
//! reads too slowly (or a burst of more than [`ENTRIES_PER_WAKE_MAX`]
//! writes) gets one `event: resync` instead of a growing queue, and should
//! list again. A `: keepalive` comment goes out every [`KEEPALIVE`], and
//! with it the session is checked again (signing out wakes it at once), so
//! a stream ends within that time of its session ending, a lost role or a
//! disabled account included; it ends at once on server shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use baraza_protocol::{DocId, Seq};
use baraza_records::Principal;
use tokio::sync::{mpsc, watch};
use warp::sse::Event;

use crate::engine::docs::DocsError;
use crate::engine::hub::SyncHub;

/// How often a comment goes out on an idle stream (and the session is
/// checked again): well inside the idle timeouts of proxies and browsers.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events one stream holds for a desk that has not read them yet.
pub const EVENTS_BUFFERED_MAX: usize = 64;
/// Feed entries one wake reads; past this the desk is told to resync.
pub const ENTRIES_PER_WAKE_MAX: usize = 1024;

/// Who the stream is for, checked again at every keepalive: the current
/// principal, or None once the session has ended (signed out, expired,
/// the account disabled or no longer a supervisor). Blocking.
pub type SessionCheck = Arc<dyn Fn() -> Option<Principal> + Send + Sync>;

/// What a stream needs to run.
pub struct EventSource {
    /// Records, the feed and its durable position.
    pub hub: Arc<SyncHub>,
    /// The session's check.
    pub check: SessionCheck,
    /// Fires when some review session ended.
    pub sessions_ended: watch::Receiver<u64>,
    /// Fires on server shutdown.
    pub stop: watch::Receiver<bool>,
    /// Events held for the desk at most ([`EVENTS_BUFFERED_MAX`]).
    pub buffered_max: usize,
    /// Feed entries one wake reads at most ([`ENTRIES_PER_WAKE_MAX`]).
    pub entries_per_wake_max: usize,
}

/// Starts the stream for `who` from the current feed position: the
/// events of every write durable after this call. Returns the body.
pub fn start(
    source: EventSource,
    who: Principal,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Event>(source.buffered_max.max(1));
    // Taken here, not in the task: a write made after this call but before
    // the task first runs (a loaded machine) is still the desk's.
    let mut durable = source.hub.durable();
    let position: Seq = *durable.borrow_and_update();
    tokio::spawn(produce(source, who, tx, durable, position));
    // The body ends once the producer has dropped its sender and what it
    // queued has gone out.
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

/// Why one attempt to queue an event did not.
enum Queued {
    Yes,
    /// The desk has not read what it was sent.
    Full,
    /// The desk is gone.
    Gone,
}

fn queue(tx: &mpsc::Sender<Event>, event: Event) -> Queued {
    match tx.try_send(event) {
        Ok(()) => Queued::Yes,
        Err(mpsc::error::TrySendError::Full(_)) => Queued::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Queued::Gone,
    }
}

fn resync() -> Event {
    // EventSource drops events without data; the page lists again.
    Event::default().event("resync").data("{}")
}

async fn produce(
    source: EventSource,
    who: Principal,
    tx: mpsc::Sender<Event>,
    mut durable: watch::Receiver<Seq>,
    mut position: Seq,
) {
    let EventSource {
        hub,
        check,
        mut sessions_ended,
        mut stop,
        entries_per_wake_max,
        ..
    } = source;
    let mut who = who;
    // Lagging: events were dropped; a resync is owed once there is room.
    let mut lagging = false;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sent at once, so the desk (and a test) knows the stream is open and
    // its position taken.
    if let Queued::Gone = queue(&tx, Event::default().comment(" connected")) {
        return;
    }
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            _ = tx.closed() => return,
            changed = sessions_ended.changed() => {
                if changed.is_err() {
                    break;
                }
                match recheck(&check).await {
                    Some(now) => who = now,
                    None => break,
                }
            }
            _ = keepalive.tick() => {
                match recheck(&check).await {
                    Some(now) => who = now,
                    None => break,
                }
                match queue(&tx, Event::default().comment(" keepalive")) {
                    // A keepalive the desk has not read yet is not missed.
                    Queued::Yes | Queued::Full => {}
                    Queued::Gone => return,
                }
            }
            permit = tx.reserve(), if lagging => {
                let Ok(permit) = permit else { return };
                permit.send(resync());
                lagging = false;
                // What came meanwhile is in the listing the desk fetches.
                position = *durable.borrow_and_update();
            }
            changed = durable.changed() => {
                if changed.is_err() {
                    break;
                }
                let upto = *durable.borrow_and_update();
                if lagging {
                    position = upto;
                    continue;
                }
                let read_who = who.clone();
                let read_hub = hub.clone();
                let from = position;
                let rows = tokio::task::spawn_blocking(move || {
                    rows_between(&read_hub, &read_who, from, upto, entries_per_wake_max)
                })
                .await;
                position = upto;
                let rows = match rows {
                    Ok(Ok(Some(rows))) => rows,
                    Ok(Ok(None)) => {
                        lagging = true;
                        continue;
                    }
                    Ok(Err(err)) => {
                        // The desk falls back on listing; it is told to.
                        tracing::warn!(error = %err, "review desk events: could not read the feed");
                        lagging = true;
                        continue;
                    }
                    Err(_) => break,
                };
                for row in rows {
                    match queue(&tx, Event::default().event("record").data(row.to_string())) {
                        Queued::Yes => {}
                        Queued::Full => {
                            lagging = true;
                            break;
                        }
                        Queued::Gone => return,
                    }
                }
            }
        }
    }
    // Ended by the server or the session: dropping the sender closes the
    // body, and the page sees the stream end (and signs in again, or falls
    // back on polling).
}

/// Completes once shutdown has begun. Holds no `watch::Ref` across an
/// await (it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn recheck(check: &SessionCheck) -> Option<Principal> {
    let check = check.clone();
    tokio::task::spawn_blocking(move || check())
        .await
        .ok()
        .flatten()
}

/// The list rows of records `who` may read written at feed positions
/// `from < seq <= upto`, each once, in the order of their latest write;
/// None if there are more than `entries_max` entries (resync).
fn rows_between(
    hub: &SyncHub,
    who: &Principal,
    from: Seq,
    upto: Seq,
    entries_max: usize,
) -> Result<Option<Vec<serde_json::Value>>, DocsError> {
    let entries = hub.written_after(from, upto, entries_max.saturating_add(1))?;
    if entries.len() > entries_max {
        return Ok(None);
    }
    let mut seen = std::collections::HashSet::new();
    let mut docs: Vec<DocId> = entries
        .into_iter()
        .rev()
        .filter_map(|(_, doc)| seen.insert(doc).then_some(doc))
        .collect();
    docs.reverse();
    let mut rows = Vec::with_capacity(docs.len());
    for doc in docs {
        if let Some(row) = hub.record_row(who, doc)? {
            rows.push(crate::api::review::row_json(hub, row)?);
        }
    }
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baraza_records::{ops, Header, Kind, Role};
    use futures_util::StreamExt;

    fn record(n: u8, area: &str) -> (DocId, automerge::Automerge) {
        let id = DocId::from_bytes([n; 16]);
        let header = Header {
            id: id.to_string(),
            kind: Kind::PatrolNote,
            area: area.into(),
            created_by_user: "ofc".into(),
            created_by_device: "00".repeat(16),
            created_at: 1_700_000_000_000,
            schema: baraza_records::SCHEMA_VERSION,
        };
        let mut doc = automerge::Automerge::new();
        let at = ops::Stamp {
            now_ms: 1_700_000_000_000,
            by: "ofc",
        };
        ops::create(&mut doc, &header, at).unwrap();
        (id, doc)
    }

    struct Desk {
        events:
            std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Event, Infallible>> + Send>>,
        _stop: watch::Sender<bool>,
        _ended: watch::Sender<u64>,
    }

    fn desk(hub: &Arc<SyncHub>, buffered_max: usize, entries_per_wake_max: usize) -> Desk {
        let who = Principal {
            user: "sgt".into(),
            role: Role::Supervisor,
            areas: vec!["kibera".into()],
        };
        let (stop_tx, stop) = watch::channel(false);
        let (ended_tx, sessions_ended) = watch::channel(0u64);
        let still = who.clone();
        let source = EventSource {
            hub: hub.clone(),
            check: Arc::new(move || Some(still.clone())),
            sessions_ended,
            stop,
            buffered_max,
            entries_per_wake_max,
        };
        Desk {
            events: Box::pin(start(source, who)),
            _stop: stop_tx,
            _ended: ended_tx,
        }
    }

    /// The next event as the wire has it, within five seconds.
    async fn next(desk: &mut Desk) -> Option<String> {
        let next = tokio::time::timeout(Duration::from_secs(5), desk.events.next()).await;
        next.ok()
            .flatten()
            .map(|e| e.map(|e| e.to_string()).unwrap_or_default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_desk_that_does_not_read_gets_a_resync_not_a_growing_queue() {
        let dir = tempfile::tempdir().unwrap();
        let hub = SyncHub::open(&crate::storage::sled::open_path(dir.path()).unwrap()).unwrap();
        let mut slow = desk(&hub, 2, ENTRIES_PER_WAKE_MAX);
        let mut fine = desk(&hub, EVENTS_BUFFERED_MAX, ENTRIES_PER_WAKE_MAX);
        // Written one at a time, while no desk reads.
        for n in 1..=6u8 {
            let (id, doc) = record(n, if n == 6 { "mathare" } else { "kibera" });
            hub.store_for_test(id, &doc).await;
        }
        // Give the streams' producers time to see every write.
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A desk with room gets each record of its area once, in order,
        // and nothing of the other area.
        assert_eq!(next(&mut fine).await.as_deref(), Some(": connected\n\n"));
        for n in 1..=5u8 {
            let got = next(&mut fine).await.unwrap();
            assert!(got.starts_with("event:record\ndata:"), "{got}");
            assert!(
                got.contains(&DocId::from_bytes([n; 16]).to_string()),
                "{got}"
            );
        }
        // Holding two events, the slow desk got the first, then a resync
        // for the rest; nothing more was queued for it.
        assert_eq!(next(&mut slow).await.as_deref(), Some(": connected\n\n"));
        let first = next(&mut slow).await.unwrap();
        assert!(
            first.contains(&DocId::from_bytes([1; 16]).to_string()),
            "{first}"
        );
        assert_eq!(
            next(&mut slow).await.as_deref(),
            Some("event:resync\ndata:{}\n\n")
        );

        // After the resync the slow desk is live again.
        let (id, doc) = record(7, "kibera");
        hub.store_for_test(id, &doc).await;
        let got = next(&mut slow).await.unwrap();
        assert!(got.contains(&id.to_string()), "{got}");
        hub.flush().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_writes_than_a_wake_reads_are_a_resync_and_repeats_come_once() {
        let dir = tempfile::tempdir().unwrap();
        let hub = SyncHub::open(&crate::storage::sled::open_path(dir.path()).unwrap()).unwrap();
        let who = Principal {
            user: "sgt".into(),
            role: Role::Supervisor,
            areas: vec!["kibera".into()],
        };
        let records: Vec<_> = (1..=4u8)
            .map(|n| record(n, if n == 4 { "mathare" } else { "kibera" }))
            .collect();
        hub.store_all_for_test(&records).await;
        // Record 1 written again: it comes once, at its latest place.
        let (id, mut doc) = records[0].clone();
        let at = ops::Stamp {
            now_ms: 1_700_000_001_000,
            by: "ofc",
        };
        ops::set(&mut doc, "beat", ops::FieldValue::Str("B4".into()), at).unwrap();
        hub.store_for_test(id, &doc).await;
        let upto = *hub.durable().borrow();
        assert_eq!(upto, 5);
        assert_eq!(rows_between(&hub, &who, 0, upto, 4).unwrap(), None);
        let rows = rows_between(&hub, &who, 0, upto, 5).unwrap().unwrap();
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let id = |n: u8| DocId::from_bytes([n; 16]).to_string();
        assert_eq!(ids, vec![id(2), id(3), id(1)]);
        assert_eq!(rows[2]["title"], "B4");
        hub.flush().unwrap();
    }
}
