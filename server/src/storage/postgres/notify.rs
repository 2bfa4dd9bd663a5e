//! Nodes telling each other what they wrote: a `NOTIFY` on one channel
//! inside the transaction that wrote (so it is heard only once that
//! commits, and never if it rolls back), and a `LISTEN` on a connection
//! of each node's own. A payload carries only a kind, the writing
//! handle's node id (so a node passes over its own) and positions or an
//! id: `c NODE FIRST LAST` (feed positions committed), `r NODE DOC` (a
//! record erased, rebuilt, quarantined or released), `v NODE` (a device
//! changed), `u NODE` (a user changed).
//!
//! The listener reconnects by itself with backoff, and every
//! (re)connection is told to the node as [`Notice::Resumed`], so what was
//! said while it was away is read from the tables instead.

use std::time::Duration;

use baraza_protocol::{DocId, Seq};
use deadpool_postgres::GenericClient;
use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::storage::notices::Notice;
use crate::storage::store::StoreError;

/// The channel every node listens on.
pub(crate) const CHANNEL: &str = "baraza";

/// How long the listening connection may be silent before TCP keepalives
/// probe it, so a database that vanished is noticed in about a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);

/// Feed positions `first..=last` were committed by `node`.
pub(crate) fn committed(node: &str, first: i64, last: i64) -> String {
    format!("c {node} {first} {last}")
}

/// `doc` was erased, rebuilt, quarantined or released by `node`.
pub(crate) fn rewritten(node: &str, doc: DocId) -> String {
    format!("r {node} {doc}")
}

/// A device was changed by `node`.
pub(crate) fn device(node: &str) -> String {
    format!("v {node}")
}

/// A user was changed by `node`.
pub(crate) fn user(node: &str) -> String {
    format!("u {node}")
}

/// Says `payload` to every listening node once the transaction (or, on a
/// plain connection, the statement) commits.
pub(crate) async fn say(c: &impl GenericClient, payload: &str) -> Result<(), StoreError> {
    c.execute(
        &c.prepare_cached("SELECT pg_notify($1, $2)").await?,
        &[&CHANNEL, &payload],
    )
    .await?;
    Ok(())
}

/// What a payload tells a node whose id is `me`; None for its own, and for
/// one it cannot read (a newer node's kind), which it passes over.
pub(crate) fn heard(payload: &str, me: &str) -> Option<Notice> {
    let mut words = payload.split(' ');
    let (kind, node) = (words.next()?, words.next()?);
    if node == me {
        return None;
    }
    let seq = |w: Option<&str>| w.and_then(|w| w.parse::<Seq>().ok());
    match kind {
        "c" => Some(Notice::Wrote {
            first: seq(words.next())?,
            last: seq(words.next())?,
        }),
        "r" => Some(Notice::Rewritten(words.next()?.parse::<DocId>().ok()?)),
        "v" => Some(Notice::Device),
        "u" => Some(Notice::User),
        _ => None,
    }
}

/// Listens for ever (until `out`'s receiver is gone), reconnecting after
/// a lost connection with backoff; sends [`Notice::Resumed`] each time it
/// is listening again.
pub(crate) async fn listen(
    mut config: tokio_postgres::Config,
    me: String,
    out: std::sync::mpsc::Sender<Notice>,
) {
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    let mut attempt = 0u32;
    loop {
        match listen_once(&config, &me, &out).await {
            Ok(Ended::ReceiverGone) => return,
            Ok(Ended::Lost) => {
                tracing::warn!("lost the connection that hears other nodes; reconnecting");
                attempt = 0;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for other nodes' writes; retrying")
            }
        }
        // 0.2 s doubling to 10 s: a node that cannot hear the others
        // still serves; it only hears late.
        let wait = Duration::from_millis(200u64 << attempt.min(6)).min(Duration::from_secs(10));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

enum Ended {
    ReceiverGone,
    Lost,
}

async fn listen_once(
    config: &tokio_postgres::Config,
    me: &str,
    out: &std::sync::mpsc::Sender<Notice>,
) -> Result<Ended, StoreError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                if tx.send(n.payload().to_string()).is_err() {
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Listening from here on: whatever was said before is read afresh.
    if out.send(Notice::Resumed).is_err() {
        driver.abort();
        return Ok(Ended::ReceiverGone);
    }
    while let Some(payload) = rx.recv().await {
        if let Some(notice) = heard(&payload, me) {
            if out.send(notice).is_err() {
                driver.abort();
                return Ok(Ended::ReceiverGone);
            }
        }
    }
    drop(client);
    Ok(Ended::Lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_hears_others_and_passes_over_itself_and_what_it_cannot_read() {
        let doc = DocId::from_bytes([7; 16]);
        assert_eq!(
            heard(&committed("b", 3, 9), "a"),
            Some(Notice::Wrote { first: 3, last: 9 })
        );
        assert_eq!(
            heard(&rewritten("b", doc), "a"),
            Some(Notice::Rewritten(doc))
        );
        assert_eq!(heard(&device("b"), "a"), Some(Notice::Device));
        assert_eq!(heard(&user("b"), "a"), Some(Notice::User));
        assert_eq!(heard(&committed("a", 3, 9), "a"), None);
        assert_eq!(heard("z b 1", "a"), None);
        assert_eq!(heard("c b x 9", "a"), None);
        assert_eq!(heard("", "a"), None);
    }
}
