//! Property: three tablets make random offline operations on one record
//! (attendees, action items and their status, typing in the notes, the
//! place), then sync through a real server in a random order. They end
//! with identical records holding every list item and every typed
//! character. One server and three tablets serve every case; each case
//! works on a record of its own.

use baraza_tests::{ServerProcess, Tablet};
use proptest::prelude::*;

struct World {
    _tmp: tempfile::TempDir,
    _server: ServerProcess,
    tablets: Vec<Tablet>,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn start() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&tmp.path().join("server"));
        let tablets = (0..3)
            .map(|i| Tablet::new(&server, &format!("tablet {i}")))
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        World {
            _tmp: tmp,
            _server: server,
            tablets,
            rt,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Attend(u8),
    Action(u8),
    Status(usize),
    Type(usize, u8),
    Place(u8),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Attend),
        any::<u8>().prop_map(Op::Action),
        any::<usize>().prop_map(Op::Status),
        (any::<usize>(), any::<u8>()).prop_map(|(p, c)| Op::Type(p, c)),
        any::<u8>().prop_map(Op::Place),
    ]
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn count(tablet: &Tablet, id: &str, list: &str) -> usize {
    let shown = tablet.field(id, list).value;
    shown
        .trim_start_matches('[')
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn three_tablets_converge_whatever_they_do_offline() {
    // One server and three tablets for every case, stopped when the test ends.
    let w = World::start();
    let strategy = (
        proptest::collection::vec(proptest::collection::vec(arb_op(), 0..10), 3),
        Just(vec![0usize, 1, 2]).prop_shuffle(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&strategy, |(ops, order)| {
        let t = &w.tablets;
        let id = t[0]
            .create_record("meeting", "eastleigh", vec![kv("title", "Property baraza")])
            .unwrap();
        w.rt.block_on(async {
            for tablet in t {
                tablet.sync().await;
            }
        });
        let (mut attendees, mut actions, mut typed) = (0usize, 0usize, 0usize);
        for (tablet, ops) in t.iter().zip(&ops) {
            for op in ops {
                match op {
                    Op::Attend(n) => {
                        tablet
                            .add_item(&id, "attendees", vec![kv("name", &format!("p{n}"))])
                            .unwrap();
                        attendees += 1;
                    }
                    Op::Action(n) => {
                        tablet
                            .add_item(&id, "action_items", vec![kv("text", &format!("a{n}"))])
                            .unwrap();
                        actions += 1;
                    }
                    Op::Status(i) => {
                        let len = count(tablet, &id, "action_items");
                        if len > 0 {
                            tablet
                                .set_item(&id, "action_items", (*i % len) as u64, "status", "done")
                                .unwrap();
                        }
                    }
                    Op::Type(p, c) => {
                        let len = tablet.field(&id, "notes").value.chars().count();
                        let ch = char::from(b'a' + c % 26).to_string();
                        tablet
                            .splice(&id, "notes", (p % (len + 1)) as u64, 0, &ch)
                            .unwrap();
                        typed += 1;
                    }
                    Op::Place(n) => tablet.set(&id, "place", &format!("hall {n}")).unwrap(),
                }
            }
        }
        // Sync in the random order, twice round, so everyone has everything.
        w.rt.block_on(async {
            for _ in 0..2 {
                for &i in &order {
                    let report = t[i].sync().await;
                    assert_eq!(report.unacknowledged, 0, "{report:?}");
                }
            }
        });
        let heads = t[0].heads(&id).unwrap();
        for tablet in t {
            prop_assert_eq!(tablet.heads(&id).unwrap(), heads.clone());
            prop_assert_eq!(
                tablet.get(&id).unwrap().fields,
                t[0].get(&id).unwrap().fields
            );
        }
        prop_assert_eq!(count(&t[0], &id, "attendees"), attendees);
        prop_assert_eq!(count(&t[0], &id, "action_items"), actions);
        prop_assert_eq!(t[0].field(&id, "notes").value.chars().count(), typed);
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
