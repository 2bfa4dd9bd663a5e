//! What every [`Store`] backend must do, as tests over `&dyn Store`: each
//! backend's tests hand these a fresh, empty store of theirs, so sled and
//! PostgreSQL are held to one contract rather than two that drift.

use baraza_protocol::{DocId, Head};
use baraza_records::{Kind, Principal, ReviewState, Role};

use crate::storage::store::{
    ClockSkew, DocWrite, IndexEntry, ReadScope, Receipt, RecordFilter, RecordSummary, Store,
};

fn head(b: u8) -> Head {
    Head::from(automerge::ChangeHash([b; 32]))
}

fn doc(b: u8) -> DocId {
    DocId::from_bytes([b; 16])
}

fn write(d: DocId, b: u8) -> DocWrite {
    DocWrite {
        doc: d,
        chunk: vec![b],
        heads: vec![head(b)],
        rebuild: false,
        index: None,
        erase: false,
        receipt: None,
    }
}

fn entry(kind: Kind, area: &str, by: &str, created_at: i64) -> IndexEntry {
    IndexEntry {
        kind: kind.name().to_string(),
        area: area.to_string(),
        state: ReviewState::Draft,
        created_at,
        created_by: by.to_string(),
        summary: RecordSummary::default(),
    }
}

fn indexed(d: DocId, b: u8, e: IndexEntry) -> DocWrite {
    DocWrite {
        index: Some(e),
        ..write(d, b)
    }
}

/// Feed positions, heads by position, chunks after a position, loads.
pub fn feed_chunks_and_heads(store: &dyn Store) {
    let (a, b) = (doc(1), doc(2));
    assert_eq!(store.feed_watermark().unwrap(), 0);
    assert_eq!(store.load(a).unwrap(), None);
    assert_eq!(
        store.commit(&[write(a, 1), write(b, 2)]).unwrap(),
        vec![1, 2]
    );
    assert_eq!(store.commit(&[write(a, 3)]).unwrap(), vec![3]);
    assert_eq!(store.feed_watermark().unwrap(), 3);
    assert_eq!(
        store.entries_after(0, 3, 10).unwrap(),
        vec![(1, a), (2, b), (3, a)]
    );
    assert_eq!(store.entries_after(1, 3, 1).unwrap(), vec![(2, b)]);
    assert_eq!(store.entries_after(1, 2, 10).unwrap(), vec![(2, b)]);
    assert_eq!(store.doc_seq(a).unwrap(), Some(3));
    assert_eq!(store.doc_seq(doc(9)).unwrap(), None);
    assert_eq!(store.heads_at(a, 2).unwrap(), Some(vec![head(1)]));
    assert_eq!(store.heads_at(a, 3).unwrap(), Some(vec![head(3)]));
    assert_eq!(store.heads_at(b, 1).unwrap(), None);
    let loaded = store.load(a).unwrap().unwrap();
    assert_eq!(
        (loaded.bytes, loaded.positions, loaded.seq, loaded.heads),
        (vec![1, 3], vec![1, 3], 3, vec![head(3)])
    );
    let all = store.chunks_after(a, 0).unwrap().unwrap();
    assert!(all.whole);
    assert_eq!((all.bytes, all.ends), (vec![1, 3], vec![(1, 1), (3, 2)]));
    let tail = store.chunks_after(a, 2).unwrap().unwrap();
    assert!(!tail.whole);
    assert_eq!(
        (tail.bytes, tail.seq, tail.heads),
        (vec![3], 3, vec![head(3)])
    );
    // A reader at a position before the record's first write has none of it.
    assert!(store.chunks_after(b, 1).unwrap().unwrap().whole);
    assert_eq!(store.chunks_after(doc(9), 0).unwrap(), None);
    assert_eq!(store.doc_count().unwrap(), 2);
    assert_eq!(store.all_docs().unwrap(), vec![a, b]);
    assert_eq!(store.commit(&[]).unwrap(), Vec::<u64>::new());
}

/// A fold replaces exactly the chunks it read, and refuses when they are
/// not what is there.
pub fn folds_keep_what_they_did_not_read(store: &dyn Store) {
    let a = doc(1);
    store.commit(&[write(a, 1)]).unwrap();
    store.commit(&[write(a, 2)]).unwrap();
    store.commit(&[write(a, 3)]).unwrap();
    assert!(
        !store.fold(a, &[1, 3], &[9]).unwrap(),
        "chunk 2 was not read"
    );
    assert!(!store.fold(a, &[], &[9]).unwrap());
    assert!(store.fold(a, &[1, 2], &[12]).unwrap());
    let loaded = store.load(a).unwrap().unwrap();
    assert_eq!((loaded.bytes, loaded.positions), (vec![12, 3], vec![2, 3]));
    // Compacted past 1: a reader there needs the whole record.
    assert_eq!(store.chunks_after(a, 1).unwrap(), None);
    let after = store.chunks_after(a, 2).unwrap().unwrap();
    assert_eq!((after.bytes, after.whole), (vec![3], false));
    // Folding again what is no longer there changes nothing.
    assert!(!store.fold(a, &[1, 2], &[0]).unwrap());
    assert!(store.fold(a, &[2, 3], &[123]).unwrap());
    assert_eq!(store.load(a).unwrap().unwrap().bytes, vec![123]);
    assert!(!store.fold(doc(9), &[1], &[0]).unwrap());
}

/// Snapshots: kept only for a position the record stands at, newer only,
/// dropped by an erasure or a rebuild.
pub fn snapshots_follow_their_rules(store: &dyn Store) {
    let a = doc(1);
    store.commit(&[write(a, 1), write(a, 2)]).unwrap();
    assert!(!store.keep_snapshot(a, 3, b"ahead").unwrap());
    assert!(!store.keep_snapshot(doc(9), 1, b"unknown").unwrap());
    assert!(store.keep_snapshot(a, 2, b"at 2").unwrap());
    assert!(!store.keep_snapshot(a, 1, b"older").unwrap());
    assert_eq!(store.snapshot(a).unwrap(), Some((2, b"at 2".to_vec())));
    let rebuilt = DocWrite {
        rebuild: true,
        ..write(a, 7)
    };
    assert_eq!(store.commit(&[rebuilt]).unwrap(), vec![3]);
    assert_eq!(store.snapshot(a).unwrap(), None);
    let loaded = store.load(a).unwrap().unwrap();
    assert_eq!((loaded.bytes, loaded.positions), (vec![7], vec![3]));
    // Before the rebuild is not a position it stands at any more.
    assert!(!store.keep_snapshot(a, 2, b"stale").unwrap());
    assert!(store.keep_snapshot(a, 3, b"at 3").unwrap());
    store.commit(&[DocWrite::erasure(a)]).unwrap();
    assert_eq!(store.snapshot(a).unwrap(), None);
    assert!(!store.keep_snapshot(a, 3, b"erased").unwrap());
}

/// The first receipt of a change stands; skews add up; an erasure takes
/// both, leaves a tombstone with the record's access, and a feed entry.
pub fn receipts_skews_and_erasure(store: &dyn Store) {
    let a = doc(1);
    let skew = |times, ahead, claimed| ClockSkew {
        times,
        ahead_ms_max: ahead,
        claimed_ms: claimed,
    };
    let first = DocWrite {
        receipt: Some(Receipt {
            at_ms: 100,
            changes: vec![head(1), head(2)],
            skew: Some(skew(1, 5_000, 9_000)),
        }),
        ..indexed(a, 1, entry(Kind::PatrolNote, "kibera", "ofc", 10))
    };
    let again = DocWrite {
        receipt: Some(Receipt {
            at_ms: 200,
            changes: vec![head(2), head(3)],
            skew: Some(skew(2, 9_000, 20_000)),
        }),
        ..write(a, 2)
    };
    store.commit(&[first]).unwrap();
    store.commit(&[again]).unwrap();
    assert_eq!(
        store.received(a).unwrap(),
        vec![(head(1), 100), (head(2), 100), (head(3), 200)]
    );
    assert_eq!(store.clock_skew(a).unwrap(), Some(skew(3, 9_000, 20_000)));
    let smaller = DocWrite {
        receipt: Some(Receipt {
            at_ms: 300,
            changes: vec![],
            skew: Some(skew(1, 1_000, 1)),
        }),
        ..write(a, 3)
    };
    store.commit(&[smaller]).unwrap();
    assert_eq!(store.clock_skew(a).unwrap(), Some(skew(4, 9_000, 20_000)));
    assert_eq!(store.erased(a).unwrap(), None);

    assert_eq!(store.commit(&[DocWrite::erasure(a)]).unwrap(), vec![4]);
    assert_eq!(store.entries_after(3, 4, 10).unwrap(), vec![(4, a)]);
    assert_eq!(store.load(a).unwrap(), None);
    assert_eq!(store.doc_seq(a).unwrap(), None);
    assert_eq!(store.received(a).unwrap(), vec![]);
    assert_eq!(store.clock_skew(a).unwrap(), None);
    assert_eq!(store.access_of(a).unwrap(), None);
    assert_eq!(store.record_row(a).unwrap(), None);
    let tomb = store.erased(a).unwrap().unwrap();
    assert_eq!(
        (
            tomb.kind.as_str(),
            tomb.area.as_str(),
            tomb.created_by.as_str()
        ),
        ("patrol_note", "kibera", "ofc")
    );
    assert_eq!(store.doc_count().unwrap(), 0);
}

/// Listings filter, scope and order as the read rule says; a submitted
/// time stays until a write sets another; summaries are filled once.
pub fn listings_follow_filter_scope_and_summaries(store: &dyn Store) {
    let (a, b, c, d) = (doc(1), doc(2), doc(3), doc(4));
    let mut submitted = entry(Kind::PatrolNote, "kibera", "ofc", 30);
    submitted.state = ReviewState::Submitted;
    submitted.summary = RecordSummary {
        title: Some("Night patrol".into()),
        submitted_at: Some(31),
        conflicts: true,
        comments: 2,
    };
    store
        .commit(&[
            indexed(a, 1, entry(Kind::PatrolNote, "kibera", "ofc", 20)),
            indexed(b, 2, entry(Kind::Meeting, "kibera", "liaison", 10)),
            indexed(c, 3, entry(Kind::Feedback, "mathare", "ofc", 40)),
            indexed(d, 4, entry(Kind::FeedbackContact, "kibera", "liaison", 5)),
        ])
        .unwrap();
    store.commit(&[indexed(a, 5, submitted.clone())]).unwrap();
    // A later write that does not set the submitted time keeps it.
    let mut later = submitted.clone();
    later.summary.submitted_at = None;
    later.summary.comments = 3;
    store.commit(&[indexed(a, 6, later)]).unwrap();
    let row = store.record_row(a).unwrap().unwrap();
    assert_eq!(row.id, a.to_string());
    assert_eq!(row.entry.state, ReviewState::Submitted);
    assert_eq!(row.entry.summary.submitted_at, Some(31));
    assert_eq!(row.entry.summary.comments, 3);
    assert_eq!(row.entry.created_by, "ofc");

    let everything = ReadScope {
        own: None,
        kinds: Kind::ALL.to_vec(),
        areas: vec!["kibera".into(), "mathare".into()],
    };
    let ids = |rows: Vec<crate::storage::store::RecordRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.id).collect()
    };
    let all = store
        .list_records(&RecordFilter::default(), &everything, 100)
        .unwrap();
    // Index order: kind, area, state, created_at.
    assert_eq!(
        ids(all),
        [c, d, b, a].map(|x| x.to_string()).to_vec(),
        "feedback, feedback_contact, meeting, patrol_note"
    );
    let kibera = RecordFilter {
        area: Some("kibera".into()),
        ..Default::default()
    };
    // Which kind comes first is the backend's; what matches is not.
    let mut in_kibera = ids(store.list_records(&kibera, &everything, 100).unwrap());
    in_kibera.sort();
    assert_eq!(in_kibera, [a, b, d].map(|x| x.to_string()).to_vec());
    assert_eq!(
        store.list_records(&kibera, &everything, 2).unwrap().len(),
        2
    );
    let submitted_only = RecordFilter {
        state: Some(ReviewState::Submitted),
        since: Some(25),
        ..Default::default()
    };
    assert_eq!(
        ids(store
            .list_records(&submitted_only, &everything, 10)
            .unwrap()),
        vec![a.to_string()]
    );
    // An officer of kibera reads patrol notes and meetings there, and
    // their own records anywhere; never the contact record.
    let officer = ReadScope::of(&Principal {
        user: "ofc".into(),
        role: Role::Officer,
        areas: vec!["kibera".into()],
    });
    let seen = ids(store
        .list_records(&RecordFilter::default(), &officer, 100)
        .unwrap());
    for (id, expected) in [(a, true), (b, true), (c, true), (d, false)] {
        let readable = store
            .access_of(id)
            .unwrap()
            .is_some_and(|x| officer.admits(&x.kind, &x.area, &x.created_by));
        assert_eq!(readable, expected, "{id}");
        assert_eq!(seen.contains(&id.to_string()), expected, "{id}");
    }
    assert_eq!(
        store
            .list_records(&RecordFilter::default(), &ReadScope::default(), 100)
            .unwrap(),
        vec![]
    );
    // Every record written here has its summary: none to fill, and a
    // fill does not replace one.
    assert_eq!(store.unsummarised(None, 10).unwrap(), vec![]);
    assert!(!store.fill_summary(a, &RecordSummary::default()).unwrap());
    assert_eq!(store.index_rows_agree(a).unwrap(), None);
}

/// Quarantine holds a record back and lets it go again.
pub fn quarantine_holds_and_releases(store: &dyn Store) {
    let (a, b) = (doc(1), doc(2));
    store.commit(&[write(a, 1)]).unwrap();
    assert_eq!(store.quarantined(a).unwrap(), None);
    store.quarantine(a, "damaged: chunk 1").unwrap();
    store.quarantine(b, "held by admin").unwrap();
    assert_eq!(
        store.quarantined(a).unwrap().as_deref(),
        Some("damaged: chunk 1")
    );
    assert_eq!(
        store.quarantines().unwrap(),
        vec![(a, "damaged: chunk 1".into()), (b, "held by admin".into())]
    );
    assert!(store.release_quarantine(a).unwrap());
    assert!(!store.release_quarantine(a).unwrap());
    assert_eq!(store.quarantined(a).unwrap(), None);
    // What was stored stays.
    assert_eq!(store.load(a).unwrap().unwrap().bytes, vec![1]);
}

/// A catch-up batch, and admission's checks read together, answer each
/// read exactly as the store does alone,
/// for records plain, snapshotted, folded, quarantined, erased, unknown,
/// read from nothing and from a position.
pub fn catch_up_batches_answer_as_single_reads(store: &dyn Store) {
    use crate::storage::catch_up::{BatchReads, DocReads};
    let (plain, snapped, folded, held, gone, unknown) =
        (doc(1), doc(2), doc(3), doc(4), doc(5), doc(9));
    let e = || entry(Kind::Meeting, "north", "amina", 1);
    store
        .commit(&[indexed(plain, 1, e()), write(snapped, 2), write(folded, 3)])
        .unwrap();
    store
        .commit(&[write(plain, 4), write(snapped, 5), write(folded, 6)])
        .unwrap();
    store
        .commit(&[write(folded, 7), indexed(held, 8, e()), write(gone, 9)])
        .unwrap();
    assert!(store.keep_snapshot(snapped, 5, b"saved at 5").unwrap());
    assert!(store.fold(folded, &[3, 6], &[36]).unwrap());
    store.quarantine(held, "damaged in a test").unwrap();
    store.commit(&[DocWrite::erasure(gone)]).unwrap();
    let docs = [plain, snapped, folded, held, gone, unknown];
    let mut wants = Vec::new();
    for d in docs {
        for base in [0, 1, 4, 6, 7] {
            wants.push((d, base));
        }
    }
    let mut asked: Vec<_> = wants.iter().map(|&(d, b)| (d, Some(b))).collect();
    // Checks only, for a record whose bytes the reader has at hand.
    asked.push((held, None));
    asked.push((plain, None));
    let batch = store.catch_up_batch(&asked).unwrap();
    let reads = BatchReads {
        batch: &batch,
        store,
    };
    for (d, base) in wants {
        let single: &dyn Store = store;
        assert_eq!(
            reads.chunks_after(d, base).unwrap(),
            single.chunks_after(d, base).unwrap(),
            "{d} after {base}"
        );
        assert_eq!(
            DocReads::snapshot(&reads, d).unwrap(),
            single.snapshot(d).unwrap(),
            "{d}"
        );
        assert_eq!(
            DocReads::load(&reads, d).unwrap(),
            single.load(d).unwrap(),
            "{d}"
        );
        assert_eq!(
            reads.quarantined(d).unwrap(),
            single.quarantined(d).unwrap(),
            "{d}"
        );
        if let Some(latest) = single.doc_seq(d).unwrap() {
            assert_eq!(
                DocReads::heads_at(&reads, d, latest).unwrap(),
                single.heads_at(d, latest).unwrap(),
                "{d}"
            );
        }
        if let Some(r) = batch.records.get(&d) {
            assert_eq!(r.access, single.access_of(d).unwrap(), "{d}");
        }
    }
    // Admission's checks and loads of a batch, a record named twice among
    // them: in the order asked, each as the single reads give it.
    let asked: Vec<DocId> = docs.iter().copied().chain([plain]).collect();
    let checks = store.write_checks(&asked).unwrap();
    let loads = store.load_many(&asked).unwrap();
    assert_eq!((checks.len(), loads.len()), (asked.len(), asked.len()));
    for ((d, checks), load) in asked.iter().zip(checks).zip(loads) {
        assert_eq!(
            checks,
            crate::storage::store::WriteChecks {
                erased: store.erased(*d).unwrap(),
                access: store.access_of(*d).unwrap(),
                stored: store.doc_seq(*d).unwrap().is_some(),
                quarantined: store.quarantined(*d).unwrap(),
            },
            "{d}"
        );
        assert_eq!(load, store.load(*d).unwrap(), "{d}");
    }
    assert!(store.write_checks(&[]).unwrap().is_empty());
    assert!(store.load_many(&[]).unwrap().is_empty());
    // The feed with its records' checks: the same entries, and checks as
    // single reads give them.
    let top = store.feed_watermark().unwrap();
    let (entries, checks) = store.entries_after_checked(1, top, 100).unwrap();
    assert_eq!(entries, store.entries_after(1, top, 100).unwrap());
    for (d, r) in &checks.records {
        assert_eq!(r.quarantined, store.quarantined(*d).unwrap(), "{d}");
        assert_eq!(r.access, store.access_of(*d).unwrap(), "{d}");
    }
    // A snapshot's chunks after it, as a cold start reads them.
    assert_eq!(
        reads.chunks_after(snapped, 5).unwrap(),
        store.chunks_after(snapped, 5).unwrap()
    );
}

/// Runs every check above, each on a store `fresh` makes.
pub fn every_check(fresh: &dyn Fn() -> Box<dyn Store>) {
    feed_chunks_and_heads(fresh().as_ref());
    folds_keep_what_they_did_not_read(fresh().as_ref());
    snapshots_follow_their_rules(fresh().as_ref());
    receipts_skews_and_erasure(fresh().as_ref());
    listings_follow_filter_scope_and_summaries(fresh().as_ref());
    quarantine_holds_and_releases(fresh().as_ref());
    catch_up_batches_answer_as_single_reads(fresh().as_ref());
}
