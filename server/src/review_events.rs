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

use crate::docs::DocsError;
use crate::sync::SyncHub;

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
}

/// Starts the stream for `who` from the current feed position: the
/// events of every write durable after this call. Returns the body.
pub fn start(
    source: EventSource,
    who: Principal,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Event>(EVENTS_BUFFERED_MAX);
    tokio::spawn(produce(source, who, tx));
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

async fn produce(source: EventSource, who: Principal, tx: mpsc::Sender<Event>) {
    let EventSource {
        hub,
        check,
        mut sessions_ended,
        mut stop,
    } = source;
    let mut durable = hub.durable();
    let mut position: Seq = *durable.borrow_and_update();
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
                let rows = tokio::task::spawn_blocking(move || rows_between(&read_hub, &read_who, from, upto)).await;
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
/// None if there are more than [`ENTRIES_PER_WAKE_MAX`] entries (resync).
fn rows_between(
    hub: &SyncHub,
    who: &Principal,
    from: Seq,
    upto: Seq,
) -> Result<Option<Vec<serde_json::Value>>, DocsError> {
    let entries = hub.written_after(from, upto, ENTRIES_PER_WAKE_MAX + 1)?;
    if entries.len() > ENTRIES_PER_WAKE_MAX {
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
            rows.push(crate::review::row_json(hub, row)?);
        }
    }
    Ok(Some(rows))
}
