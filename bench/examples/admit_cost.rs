//! What admitting one pushed record costs the server, stage by stage, in
//! process (no sockets, no storage): the records crate's share of S3.
//! `cargo run --release -p baraza-bench --example admit_cost [records]`

use std::time::{Duration, Instant};

use automerge::{Automerge, Change};
use baraza_bench::light::{self, LightRecord};
use baraza_bench::records::{self, Gen};
use baraza_protocol::DocId;
use baraza_records::{access::Role, Header, Principal, Snapshot};

/// The server's judgement of a pushed record (`admit` in the server's
/// engine): the schema, what the changes added, the write rules, and the
/// listing row, all read from one snapshot.
fn judge(
    who: &Principal,
    doc: &Automerge,
    changes: &[Change],
    before: Option<&Header>,
) -> anyhow::Result<()> {
    let view = Snapshot::read(doc);
    let header = baraza_records::validate(&view)?;
    if let Some(old) = before {
        anyhow::ensure!(old.differs_from(&header).is_none(), "header changed");
    }
    baraza_records::validate_additions(&view, changes)?;
    who.check_write(&header, before.is_none(), &view, changes)
        .map_err(|r| anyhow::anyhow!(r.reason))?;
    std::hint::black_box((
        baraza_records::review_state(&view),
        baraza_records::title(&view, header.kind),
        baraza_records::submitted_at(&view),
        baraza_records::has_conflict(&view),
        baraza_records::review_comments(&view).len(),
    ));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(2000), |s| s.parse())?;
    let mut gen = Gen::new(7);
    let device = "00112233445566778899aabbccddeeff";
    let actor = light::actor_for(device, &mut gen)?;
    let who = Principal {
        user: baraza_bench::server::BENCH_USER.into(),
        role: Role::Supervisor,
        areas: vec![baraza_bench::server::BENCH_AREA.into()],
    };
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let id = DocId::from_bytes(light::id_bytes(&mut gen));
        made.push(LightRecord::create(
            id,
            device,
            &actor,
            &records::fields(&mut gen, i),
        )?);
    }
    let names = [
        "apply (new record)",
        "judge (new record)",
        "fork (clone)",
        "apply (edit)",
        "judge (edit)",
    ];
    let mut t = [Duration::ZERO; 5];
    for r in &made {
        let changes = r.doc.get_changes(&[]);
        let s = Instant::now();
        let mut doc = Automerge::new();
        doc.apply_changes(changes.clone())?;
        t[0] += s.elapsed();
        let s = Instant::now();
        judge(&who, &doc, &changes, None)?;
        t[1] += s.elapsed();

        // An edit of it, as S3's second half pushes.
        let mut edited = LightRecord {
            id: r.id,
            doc: r.doc.clone(),
            acked: Vec::new(),
        };
        edited.set("place", "visited")?;
        let header = Header::read(&doc)?;
        let change = edited.doc.get_changes(&doc.get_heads());
        let s = Instant::now();
        let mut fork = doc.clone();
        t[2] += s.elapsed();
        let s = Instant::now();
        fork.apply_changes(change.clone())?;
        t[3] += s.elapsed();
        let s = Instant::now();
        judge(&who, &fork, &change, Some(&header))?;
        t[4] += s.elapsed();
    }
    let changes = made
        .iter()
        .map(|r| r.doc.get_changes(&[]).len())
        .sum::<usize>()
        / n;
    println!("{n} records of {changes} changes each");
    for (name, d) in names.iter().zip(t) {
        println!("{name:>20}: {:7.1} µs", d.as_secs_f64() * 1e6 / n as f64);
    }
    Ok(())
}
