//! Several tablets and the real `ServerDriver` in one process, over an
//! in-memory network that drops, duplicates and reorders frames, breaks
//! connections and crashes the server, and over an in-memory store that
//! admits pushes on a fork under a seeded rule, acknowledges only after a
//! durability step (answering writers in any order) and loses what was not
//! durable when it crashes. Seeded: a failing seed is printed, and
//! `SIM_SEED=n cargo nextest run -p baraza-protocol --test simulator`
//! runs that seed alone.
//!
//! The checks at the end: once the network heals and everyone syncs, every
//! replica holds the same heads as the server for every admitted record,
//! every change any tablet made to one is on the server, every head ever
//! acknowledged is still there (checked after every crash too), and a
//! refused record is held only by its author, who keeps it marked.

mod store;
mod tablet;
mod world;

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use baraza_protocol::*;

use store::SimStore;
use tablet::MemReplica;
use world::{for_seeds, Injected, World};

#[test]
fn tablets_converge_despite_drops_duplicates_reordering_and_restarts() {
    let mut total = Injected::default();
    for_seeds(0..24, |seed| {
        let mut world = World::new(seed, 4);
        world.run(600);
        total.drops += world.injected.drops;
        total.swaps += world.injected.swaps;
        total.duplicates += world.injected.duplicates;
        total.restarts += world.injected.restarts;
        total.new_store_ids += world.injected.new_store_ids;
        total.idle_closes += world.injected.idle_closes;
        total.pongs += world.injected.pongs;
        total.refusals += world.injected.refusals;
        world.settle();
        world.check();
        assert_eq!(world.seed, seed);
    });
    eprintln!("faults injected: {total:?}");
    if std::env::var("SIM_SEED").is_err() {
        assert!(
            total.drops > 0
                && total.swaps > 0
                && total.duplicates > 0
                && total.restarts > 0
                && total.new_store_ids > 0
                && total.refusals > 0
                && total.idle_closes > 0
                && total.pongs > 0,
            "the runs injected too few faults to mean anything: {total:?}"
        );
    }
}

#[test]
fn a_replaced_server_store_is_healed_from_the_tablets() {
    let mut world = World::new(99, 3);
    world.faults = false;
    world.run(300);
    world.settle();
    world.check();
    // The server loses everything (a new store): tablets hold full replicas.
    // Everything ever acknowledged comes back from the tablets: `check`
    // still asks for all of it.
    world.server = SimStore::new(
        StoreId::from_bytes([1; 16]),
        world.server.rule.forbidden_area,
    );
    world.settle();
    world.check();
    assert!(!world.server.docs.is_empty());
}

#[test]
fn a_new_tablet_catches_up_in_batches_after_records_were_edited() {
    let mut world = World::new(11, 3).without_refusals();
    world.faults = false;
    for _ in 0..30 {
        world.edit(0);
    }
    world.settle();
    // Edit some records again, so the feed holds several writes for them.
    for _ in 0..15 {
        world.edit(1);
    }
    world.settle();
    world.check();
    let held = world.tablets[0].replica.docs.len();
    // A new tablet with nothing pulls everything in one connection, in
    // small catch-up batches, with no document needing repair.
    world.tablets[2].replica = MemReplica::default();
    world.connect(2);
    let mut budget = 100_000;
    while budget > 0 && world.step_network() {
        budget -= 1;
    }
    let c = world.conns.iter().find(|c| c.tablet == 2).unwrap();
    assert!(
        c.client.is_settled(),
        "the new tablet settled in one connection"
    );
    let counts = c.client.counts();
    assert_eq!(counts.repairs, 0);
    assert_eq!(counts.docs_received, held);
    world.disconnect_all();
    world.check();
}

#[test]
fn reconnect_reconciles_only_what_changed() {
    let mut world = World::new(7, 2).without_refusals();
    world.faults = false;
    for _ in 0..60 {
        world.edit(0);
    }
    world.settle();
    world.check();
    let before: usize = world.tablets[1].replica.docs.len();
    assert!(before > 5);
    // Tablet 0 changes 3 documents while tablet 1 changes 2 others, offline.
    let ids: Vec<DocId> = world.tablets[0].replica.docs.keys().copied().collect();
    for (t, id) in [
        (0, ids[0]),
        (0, ids[1]),
        (0, ids[2]),
        (1, ids[3]),
        (1, ids[4]),
    ] {
        let tablet = &mut world.tablets[t];
        let mut doc = tablet.replica.doc(id).unwrap().unwrap();
        let mut tx = doc.transaction();
        tx.put(ROOT, "status", format!("changed by {t}")).unwrap();
        tx.commit();
        tablet.replica.put_doc(id, &doc).unwrap();
        tablet.replica.unacked.insert(id);
    }
    // Tablet 0 syncs first, then tablet 1, whose session must touch its 2
    // documents and tablet 0's 3, and nothing else.
    for t in [0, 1] {
        world.connect(t);
        while world.step_network() {}
        let c = world.conns.iter().find(|c| c.tablet == t).unwrap();
        assert!(c.client.is_settled());
        if t == 1 {
            let counts = c.client.counts();
            assert_eq!(counts.docs_sent, 2);
            assert_eq!(counts.docs_received, 3);
            assert_eq!(counts.docs_reconciled, 5);
        }
        world.disconnect_all();
    }
    world.settle();
    world.check();
}

#[test]
fn a_refused_change_racing_a_valid_one_on_the_same_record_leaves_the_valid_one_alone() {
    let mut world = World::new(5, 2).without_refusals();
    world.faults = false;
    world.edit(0);
    world.settle();
    world.check();
    let id = *world.tablets[0].replica.docs.keys().next().unwrap();
    // Offline, tablet 0 sets a status the rules refuse while tablet 1 sets
    // the place of the same record.
    let refused = world.put(0, id, "status", -1);
    let valid = world.put(1, id, "place", 42);
    // Both push; neither write is durable yet when the other is judged.
    world.hold_flush = true;
    world.connect(0);
    world.connect(1);
    while world.step_network() {}
    let live = &world.server.docs[&id];
    assert!(live.get_change_by_hash(&valid).is_some());
    assert!(
        live.get_change_by_hash(&refused).is_none(),
        "the refused change reached the live copy"
    );
    assert!(
        world.tablets[1].replica.unacked.contains(&id),
        "acknowledged before the durability step"
    );
    assert_eq!(world.server.refusals, 1);
    world.hold_flush = false;
    world.settle();
    let stored = &world.server.docs[&id];
    assert!(stored.get_change_by_hash(&valid).is_some());
    assert!(stored.get_change_by_hash(&refused).is_none());
    let tablet1 = world.tablets[1].replica.doc(id).unwrap().unwrap();
    assert!(tablet1.get_change_by_hash(&valid).is_some());
    assert!(tablet1.get_change_by_hash(&refused).is_none());
    // Tablet 0 keeps its change, marked with the rule, and has the valid one.
    let tablet0 = &mut world.tablets[0].replica;
    assert_eq!(tablet0.refused.get(&id), Some(&Some("status_range".into())));
    assert!(tablet0.unacked.contains(&id));
    let doc0 = tablet0.doc(id).unwrap().unwrap();
    assert!(doc0.get_change_by_hash(&refused).is_some());
    assert!(doc0.get_change_by_hash(&valid).is_some());
}
