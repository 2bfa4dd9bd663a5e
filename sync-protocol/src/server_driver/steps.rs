//! The driver's own steps after each input: handing out tasks, answering
//! writes in order, the retire, scope and feed steps, and the end.

use std::time::Duration;

use super::*;

impl ServerDriver {
    pub(super) fn heard(&mut self, now: Duration) {
        self.last_heard = self.last_heard.max(now);
        self.keepalive = Keepalive::NotDue;
    }

    pub(super) fn on_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Hello(hello) => {
                self.session
                    .accept_with(&hello, self.config.store, self.watermark, self.refeed);
                // Its own name first: a tablet enrolled by token alone
                // learns what the registry calls it.
                if let Some(own) = self.own_name.clone() {
                    self.session.send_device_names(vec![own]);
                }
                self.phase = Phase::Streaming(Streaming {
                    reading: None,
                    scope_noted: false,
                    retire_asked: false,
                });
                self.tasks.push_back(Task::OfferRepairs);
            }
            ServerEvent::Push {
                doc,
                base,
                heads,
                changes,
                bytes,
                ops,
            } => {
                let Some(write) = self.pend(doc, WriteKind::Push) else {
                    return;
                };
                self.tasks.push_back(Task::Admit(PushWrite {
                    write,
                    doc,
                    base,
                    heads,
                    changes,
                    bytes,
                    ops,
                }));
            }
            ServerEvent::Sync(msg) => {
                let Some(write) = self.pend(msg.doc, WriteKind::Sync) else {
                    return;
                };
                self.tasks.push_back(Task::Sync { write, msg });
            }
        }
    }

    /// Queues a write for storage, or refuses it when twice as many as a
    /// device may pipeline already wait: a caller that kept reading past
    /// [`ServerDriver::wants_frames`] must not grow the queue without end.
    pub(super) fn pend(&mut self, doc: DocId, kind: WriteKind) -> Option<WriteId> {
        if self.writes.len() >= self.config.limits.pushes_in_flight_max.saturating_mul(2) {
            self.session.refuse(
                doc,
                ErrorCode::StorageFailure,
                format!("document {doc} was not stored: too many writes wait; retry later"),
            );
            return None;
        }
        self.next_write += 1;
        let write = WriteId(self.next_write);
        self.writes.push_back(Pending {
            write,
            doc,
            kind,
            result: None,
        });
        Some(write)
    }

    /// Tells the device how one write ended.
    pub(super) fn answer(&mut self, doc: DocId, kind: WriteKind, result: Commit) {
        if !matches!(self.phase, Phase::Streaming(_) | Phase::Draining { .. }) {
            return;
        }
        match result {
            Commit::Stored {
                heads,
                reply,
                seq,
                base_missing,
                names,
                changed,
            } => {
                if changed {
                    self.received.note(doc, &heads);
                }
                match kind {
                    WriteKind::Push => {
                        // Named before the reply that carries their changes.
                        self.session.send_device_names(names);
                        self.session.push_applied(
                            doc,
                            PushOutcome {
                                heads,
                                reply,
                                seq,
                                base_missing,
                            },
                        );
                    }
                    WriteKind::Sync => self.session.acknowledge(doc, heads, seq),
                }
            }
            Commit::Refused(refusal) => match refusal.rule {
                Some(rule) => self.session.refuse_by_rule(doc, &rule, refusal.message),
                None => self.session.refuse(doc, refusal.code, refusal.message),
            },
            Commit::Failed { message } => self.session.refuse(
                doc,
                ErrorCode::StorageFailure,
                format!("document {doc} was not stored: {message}; retry later"),
            ),
            Commit::NoAck => {}
        }
    }

    /// The steps due after any input: retire request, scope note, the
    /// next feed read, the end of a drain.
    pub(super) fn advance(&mut self) {
        if self.session.is_closed() && !self.is_closed() {
            return self.finish(CloseReason::Protocol("the session closed".into()));
        }
        let (sent, welcome) = (self.session.sent_seq(), self.session.welcome_seq());
        let pending = !self.writes.is_empty();
        let due = self.watermark > sent;
        match &mut self.phase {
            Phase::Streaming(streaming) => {
                if self.retiring && !streaming.retire_asked {
                    streaming.retire_asked = true;
                    self.session.request_retirement();
                }
                // Caught up under the user's current scope: noted, so a
                // later change of role or areas sends the feed again.
                if !streaming.scope_noted && sent >= welcome {
                    streaming.scope_noted = true;
                    self.tasks.push_back(Task::NoteScope);
                }
                if !pending && due && streaming.reading.is_none() {
                    let read = FeedRead {
                        after: sent,
                        upto: self.watermark,
                        limit: self.config.feed_batch,
                    };
                    streaming.reading = Some(read);
                    self.tasks.push_back(Task::ReadFeed(read));
                }
            }
            Phase::Draining { reason } if !pending => {
                let reason = reason.clone();
                self.finish(reason);
            }
            _ => {}
        }
    }

    /// Closes the session and writes its audit entry, once. Work not yet
    /// handed out is dropped (a revoked device's pushes are not stored),
    /// except the retirement mark, which is the device's last word.
    pub(super) fn finish(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Closed { reason };
        self.tasks.retain(|t| matches!(t, Task::MarkRetired { .. }));
        let summary = self.summary();
        self.audits.push_back(AuditEvent::SessionEnded(summary));
    }
}
