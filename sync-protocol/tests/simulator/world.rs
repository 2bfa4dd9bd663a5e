//! The simulated world: tablets, connections through the real
//! `ServerDriver`, the network's faults, and the checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjType, ReadDoc, ROOT};
use baraza_protocol::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::store::SimStore;
use crate::tablet::MemReplica;

pub struct Tablet {
    pub replica: MemReplica,
    /// Every change this tablet authored: all must end up on the server,
    /// unless its record was refused.
    pub authored: Vec<(DocId, ChangeHash)>,
    pub actor: u8,
}

pub struct Conn {
    /// Names this connection's writes in the store's held answers.
    pub id: u64,
    pub tablet: usize,
    pub server: ServerDriver,
    pub client: ClientDriver,
    pub up: VecDeque<Vec<u8>>,
    pub down: VecDeque<Vec<u8>>,
    /// Session-end audit entries seen: exactly one per session.
    pub ended: usize,
}

// --------------------------------------------------------------- the world

/// Simulated time per step of `run`.
pub const STEP: Duration = Duration::from_millis(10);
/// The server's idle timeout in the simulator: long enough that most
/// sessions never reach it, short enough that some do.
pub const IDLE: Duration = Duration::from_millis(500);

pub struct World {
    pub seed: u64,
    pub rng: StdRng,
    pub now: Duration,
    pub server: SimStore,
    pub tablets: Vec<Tablet>,
    pub conns: Vec<Conn>,
    pub next_conn: u64,
    pub next_doc: u8,
    /// The last byte of the last store id taken after a crash.
    pub next_store: u8,
    pub faults: bool,
    /// While set, no durability step is taken: writes are admitted (or
    /// refused) and wait for their acknowledgement.
    pub hold_flush: bool,
    pub injected: Injected,
    /// Every (record, head) a server acknowledged to a tablet: none may
    /// ever go missing, crashes included.
    pub acked: BTreeSet<(DocId, Head)>,
    /// Records created in the area the rule refuses, with their author.
    pub forbidden: BTreeMap<DocId, usize>,
}

/// How many faults a run injected, so the test can show it tested them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Injected {
    pub drops: usize,
    pub swaps: usize,
    pub duplicates: usize,
    pub restarts: usize,
    pub new_store_ids: usize,
    pub idle_closes: usize,
    pub pongs: usize,
    pub refusals: usize,
}

pub const AREAS: i64 = 5;

impl World {
    pub fn new(seed: u64, tablets: usize) -> Self {
        let forbidden_area = (seed % AREAS as u64) as i64;
        World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: Duration::ZERO,
            server: SimStore::new(StoreId::from_bytes([9; 16]), forbidden_area),
            tablets: (0..tablets)
                .map(|i| Tablet {
                    replica: MemReplica::default(),
                    authored: Vec::new(),
                    actor: i as u8 + 1,
                })
                .collect(),
            conns: Vec::new(),
            next_conn: 0,
            next_doc: 0,
            next_store: 9,
            faults: true,
            hold_flush: false,
            injected: Injected::default(),
            acked: BTreeSet::new(),
            forbidden: BTreeMap::new(),
        }
    }

    pub fn edit(&mut self, t: usize) {
        let tablet = &mut self.tablets[t];
        let existing: Vec<DocId> = tablet.replica.docs.keys().copied().collect();
        let new_doc = existing.is_empty() || self.rng.random_bool(0.2);
        let (id, mut doc) = if new_doc {
            self.next_doc += 1;
            let id = DocId::from_bytes([self.next_doc; 16]);
            let area = self.rng.random_range(0..AREAS);
            if area == self.server.rule.forbidden_area {
                self.forbidden.insert(id, t);
            }
            let mut doc = Automerge::new();
            let mut tx = doc.transaction();
            tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
            tx.put(ROOT, "title", format!("doc {}", self.next_doc))
                .unwrap();
            tx.put(ROOT, "area", area).unwrap();
            tx.commit();
            (id, doc)
        } else {
            let id = existing[self.rng.random_range(0..existing.len())];
            (id, tablet.replica.doc(id).unwrap().unwrap())
        };
        doc.set_actor(automerge::ActorId::from(vec![tablet.actor; 16]));
        let mut tx = doc.transaction();
        if self.rng.random_bool(0.5) {
            let field = ["place", "status", "owner"][self.rng.random_range(0..3)];
            tx.put(ROOT, field, self.rng.random_range(0..1000) as i64)
                .unwrap();
        } else if let Some((_, notes)) = tx.get(ROOT, "notes").unwrap() {
            let len = tx.length(&notes);
            let pos = self.rng.random_range(0..=len);
            tx.splice_text(&notes, pos, 0, &format!("[{}]", tablet.actor))
                .unwrap();
        }
        tx.commit();
        for h in doc.get_heads() {
            tablet.authored.push((id, h));
        }
        tablet.replica.put_doc(id, &doc).unwrap();
        tablet.replica.unacked.insert(id);
        for c in self.conns.iter_mut().filter(|c| c.tablet == t) {
            c.client.enqueue(id);
            let _ = c.client.pump(&mut tablet.replica);
        }
    }

    /// Tablet `t` sets one field of a record it holds, offline, and
    /// returns the change's hash (not counted among the changes that must
    /// reach the server: a test says what it expects of it).
    pub fn put(&mut self, t: usize, id: DocId, field: &str, value: i64) -> ChangeHash {
        let tablet = &mut self.tablets[t];
        let mut doc = tablet.replica.doc(id).unwrap().unwrap();
        doc.set_actor(automerge::ActorId::from(vec![tablet.actor; 16]));
        let mut tx = doc.transaction();
        tx.put(ROOT, field, value).unwrap();
        tx.commit();
        tablet.replica.put_doc(id, &doc).unwrap();
        tablet.replica.unacked.insert(id);
        doc.get_heads()[0]
    }

    pub fn connect(&mut self, t: usize) {
        if self.conns.iter().any(|c| c.tablet == t) {
            return;
        }
        let client = ClientDriver::new(Limits::DEFAULT, &mut self.tablets[t].replica).unwrap();
        let mut config = DriverConfig::new(Limits::DEFAULT, self.server.store);
        config.idle = IDLE;
        // A small batch exercises the incremental cursor.
        config.feed_batch = 3;
        let opening = Opening {
            durable: self.server.durable,
            refeed: false,
            standing: Standing::Active,
            own_name: None,
        };
        self.next_conn += 1;
        self.conns.push(Conn {
            id: self.next_conn,
            tablet: t,
            server: ServerDriver::new(config, opening, self.now),
            client,
            up: VecDeque::new(),
            down: VecDeque::new(),
            ended: 0,
        });
    }

    /// Carries out connection `i`'s storage tasks and collects its audit
    /// entries. Every task's answer is synchronous here except writes'
    /// acknowledgements, which wait for `flush`.
    pub fn serve(&mut self, i: usize) {
        let now = self.now;
        let conn = &mut self.conns[i];
        // Bounded: each task's answer yields at most a feed read or a few
        // steps more, and feed reads end at the watermark.
        for _ in 0..10_000 {
            let Some(task) = conn.server.poll_task() else {
                break;
            };
            match task {
                Task::Admit(w) => self.server.admit_push(conn.id, &mut conn.server, now, w),
                Task::Sync { write, msg } => {
                    self.server
                        .admit_sync(conn.id, &mut conn.server, now, write, msg)
                }
                Task::ReadFeed(read) => {
                    assert!(
                        conn.server.pending_writes() == 0,
                        "a feed read was asked for while a write waits for its commit"
                    );
                    assert!(read.upto <= self.server.durable);
                    let _ = conn.server.handle_feed(now, &mut self.server);
                }
                Task::OfferRepairs | Task::NoteScope | Task::MarkRetired { .. } => {}
            }
        }
        while let Some(event) = conn.server.poll_audit() {
            if let AuditEvent::SessionEnded(summary) = event {
                conn.ended += 1;
                assert!(summary.received.listed().len() <= summary.received.cap());
                if summary.reason == Some(CloseReason::Idle) {
                    self.injected.idle_closes += 1;
                }
            }
        }
        assert!(conn.ended <= 1, "a session ended twice");
    }

    /// A world whose rule refuses nothing, for tests that count records.
    pub fn without_refusals(mut self) -> Self {
        self.server.rule.forbidden_area = -1;
        self
    }

    pub fn disconnect_all(&mut self) {
        while !self.conns.is_empty() {
            self.disconnect(0);
        }
    }

    /// Closes connection `i` from the transport's side and drops it.
    pub fn disconnect(&mut self, i: usize) {
        let now = self.now;
        self.conns[i]
            .server
            .handle_closed(now, CloseReason::Disconnected);
        self.serve(i);
        assert_eq!(
            self.conns[i].ended, 1,
            "a closed session wrote no audit entry"
        );
        self.conns.remove(i);
    }

    /// The store's durability step: answers go to the connections still
    /// there, and every driver hears of the new watermark.
    pub fn flush(&mut self) {
        let held = self.server.flush(&mut self.rng);
        let now = self.now;
        for (conn_id, write, commit) in held {
            if let Some(i) = self.conns.iter().position(|c| c.id == conn_id) {
                self.conns[i].server.handle_commit(now, write, commit);
                self.serve(i);
            }
        }
        let durable = self.server.durable;
        for i in 0..self.conns.len() {
            self.conns[i].server.handle_durable(now, durable);
            self.serve(i);
        }
    }

    /// The server crashes and restarts: every connection drops, and writes
    /// not yet durable are lost (their tablets were never told otherwise).
    pub fn crash(&mut self) {
        self.injected.restarts += 1;
        self.disconnect_all();
        self.server.crash();
        // Half the time the store notices the unclean stop and takes a new
        // id (as sled's does), so tablets reset and re-offer everything;
        // otherwise it trusts what was durable (as a database would).
        if self.rng.random_bool(0.5) {
            self.injected.new_store_ids += 1;
            self.next_store = self.next_store.wrapping_add(1);
            self.server.store = StoreId::from_bytes([self.next_store; 16]);
        }
        self.check_acked();
    }

    pub fn check_acked(&self) {
        for (id, head) in &self.acked {
            let hash = ChangeHash(*head.as_bytes());
            assert!(
                self.server
                    .docs
                    .get(id)
                    .is_some_and(|d| d.get_change_by_hash(&hash).is_some()),
                "acknowledged head {hash} of {id} is lost"
            );
        }
    }

    pub fn note_acks(&mut self, frame: &[u8]) {
        if let Ok(Message::Ack(ack)) = codec::decode(frame, &Limits::DEFAULT) {
            for head in ack.heads {
                self.acked.insert((ack.doc, head));
            }
        }
    }

    /// Moves queued frames into the wires, delivers one frame somewhere,
    /// or, when no frame moves, takes a durability step.
    pub fn step_network(&mut self) -> bool {
        for c in self.conns.iter_mut() {
            while let Some(f) = c.client.poll_transmit() {
                c.up.push_back(f);
            }
            while let Some(f) = c.server.poll_transmit() {
                c.down.push_back(f);
            }
        }
        // Sessions the server closed go once what they queued is sent.
        if let Some(i) = self
            .conns
            .iter()
            .position(|c| c.server.is_closed() && c.down.is_empty())
        {
            self.disconnect(i);
            return true;
        }
        let busy: Vec<usize> = (0..self.conns.len())
            .filter(|&i| !self.conns[i].up.is_empty() || !self.conns[i].down.is_empty())
            .collect();
        let may_flush = self.server.has_held() && !self.hold_flush;
        if busy.is_empty() || (may_flush && self.rng.random_bool(0.1)) {
            if !may_flush {
                return false;
            }
            self.flush();
            return true;
        }
        let i = busy[self.rng.random_range(0..busy.len())];
        let upward = if self.conns[i].up.is_empty() {
            false
        } else if self.conns[i].down.is_empty() {
            true
        } else {
            self.rng.random_bool(0.5)
        };
        let faults = self.faults;
        let roll: f64 = self.rng.random();
        let conn = &mut self.conns[i];
        let queue = if upward { &mut conn.up } else { &mut conn.down };
        if faults && roll < 0.02 {
            // A lost frame: the transport notices and the connection breaks.
            self.injected.drops += 1;
            self.disconnect(i);
            return true;
        }
        if faults && roll < 0.05 && queue.len() > 1 {
            queue.swap(0, 1);
            self.injected.swaps += 1;
        }
        let Some(frame) = queue.pop_front() else {
            return true;
        };
        let copies = if faults && roll > 0.97 { 2 } else { 1 };
        self.injected.duplicates += copies - 1;
        let now = self.now;
        for _ in 0..copies {
            if upward {
                if self.conns[i].server.wants_frames() {
                    let _ = self.conns[i].server.handle_frame(now, &frame);
                } else {
                    // Not read yet: it waits at the socket.
                    self.conns[i].up.push_front(frame.clone());
                    break;
                }
                self.serve(i);
            } else {
                self.note_acks(&frame);
                let conn = &mut self.conns[i];
                let replica = &mut self.tablets[conn.tablet].replica;
                if conn.client.handle_frame(&frame, replica).is_err() {
                    self.disconnect(i);
                    return true;
                }
            }
        }
        if self.conns[i].client.is_closed() {
            self.disconnect(i);
        }
        true
    }

    /// Time passes; sessions whose idle deadline went by are told.
    pub fn tick(&mut self) {
        self.now += STEP;
        let now = self.now;
        for i in 0..self.conns.len() {
            if self.conns[i]
                .server
                .poll_timeout()
                .is_some_and(|d| d <= now)
            {
                self.conns[i].server.handle_timeout(now);
                self.serve(i);
            }
            // A keepalive ping; some tablets' pongs come back in time.
            if self.conns[i].server.poll_keepalive() && self.rng.random_bool(0.5) {
                self.injected.pongs += 1;
                self.conns[i].server.handle_ping(now);
            }
        }
    }

    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.tick();
            let t = self.rng.random_range(0..self.tablets.len());
            match self.rng.random_range(0..100) {
                0..=24 => self.edit(t),
                25..=34 => self.connect(t),
                35..=38 => {
                    if let Some(i) = self.conns.iter().position(|c| c.tablet == t) {
                        self.disconnect(i);
                    }
                }
                39 => self.crash(),
                _ => {
                    self.step_network();
                }
            }
        }
        self.injected.refusals = self.server.refusals;
    }

    /// Heals the network and lets everyone sync until nothing moves.
    pub fn settle(&mut self) {
        self.faults = false;
        for round in 0..4 {
            for t in 0..self.tablets.len() {
                self.connect(t);
            }
            let mut budget = 200_000;
            while budget > 0 && self.step_network() {
                budget -= 1;
            }
            assert!(budget > 0, "network never went quiet");
            let all_settled = self.conns.iter().all(|c| c.client.is_settled());
            self.disconnect_all();
            if all_settled && round > 0 {
                return;
            }
        }
        panic!("the tablets never all settled on a healed network");
    }

    pub fn check(&mut self) {
        self.check_acked();
        let server_docs: BTreeMap<DocId, Vec<ChangeHash>> = self
            .server
            .docs
            .iter()
            .map(|(id, d)| (*id, d.get_heads()))
            .collect();
        for id in self.forbidden.keys() {
            assert!(
                !server_docs.contains_key(id),
                "refused record {id} was stored"
            );
        }
        for (t, tablet) in self.tablets.iter_mut().enumerate() {
            let own_forbidden: BTreeSet<DocId> = self
                .forbidden
                .iter()
                .filter(|(_, a)| **a == t)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(
                tablet.replica.unacked, own_forbidden,
                "tablet {t}: what is unacknowledged is not exactly its refused records"
            );
            for id in &own_forbidden {
                assert_eq!(
                    tablet.replica.refused.get(id),
                    Some(&Some("own_areas".to_string())),
                    "tablet {t} does not keep {id} marked refused by its rule"
                );
            }
            let held: BTreeMap<DocId, Vec<ChangeHash>> = tablet
                .replica
                .docs
                .keys()
                .copied()
                .filter(|id| !own_forbidden.contains(id))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|id| (id, tablet.replica.doc(id).unwrap().unwrap().get_heads()))
                .collect();
            for (id, heads) in &server_docs {
                assert_eq!(
                    held.get(id),
                    Some(heads),
                    "tablet {t} differs from the server on {id}"
                );
            }
            assert_eq!(
                held.len(),
                server_docs.len(),
                "tablet {t} holds other documents"
            );
        }
        let all_authored: Vec<(DocId, ChangeHash)> = self
            .tablets
            .iter()
            .flat_map(|t| t.authored.iter().copied())
            .filter(|(id, _)| !self.forbidden.contains_key(id))
            .collect();
        for (id, hash) in all_authored {
            let doc = &self.server.docs[&id];
            assert!(
                doc.get_change_by_hash(&hash).is_some(),
                "edit {hash} to {id} is missing on the server"
            );
        }
    }
}

/// Runs `body` for each seed (or only `SIM_SEED`), naming the seed that
/// failed so it can be run alone.
pub fn for_seeds(seeds: std::ops::Range<u64>, mut body: impl FnMut(u64)) {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => seeds.collect(),
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(seed))) {
            eprintln!("simulator seed {seed} failed; run it alone with SIM_SEED={seed}");
            resume_unwind(panic);
        }
    }
}
