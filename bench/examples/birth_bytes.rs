//! Where a typed record's bytes go: the same meeting record built several
//! ways, saved as a snapshot is and packed as a cold start sends it.
//! `cargo run --release -p baraza-bench --example birth_bytes [records]`

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ObjType, ROOT};
use baraza_bench::light::{self, LightRecord};
use baraza_bench::records::{self, Gen};
use baraza_protocol::{codec, Changes, DocId, Message, Packing};

fn packed(docs: &[(DocId, Automerge)], heads: bool) -> anyhow::Result<usize> {
    let frames: Vec<Vec<u8>> = docs
        .iter()
        .enumerate()
        .map(|(i, (id, doc))| {
            codec::encode(&Message::Changes(Changes {
                n: i as u64 + 1,
                doc: *id,
                heads: if heads {
                    baraza_protocol::to_heads(&doc.get_heads())
                } else {
                    Vec::new()
                },
                data: serde_bytes::ByteBuf::from(doc.save_nocompress()),
            }))
        })
        .collect::<Result<_, _>>()?;
    // About what one packed frame holds (PACK_BYTES_TARGET of plain frames).
    let batch = 300;
    Ok(frames
        .chunks(batch)
        .map(|b| codec::pack(b, Packing::Deflate).map(|f| f.len()))
        .sum::<Result<usize, _>>()?)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(3000), |s| s.parse())?;
    let mut gen = Gen::new(7);
    let device = "00112233445566778899aabbccddeeff";
    let actor = light::actor_for(device, &mut gen)?;
    let mut variants: Vec<(&str, Vec<(DocId, Automerge)>)> = vec![
        ("as made today", Vec::new()),
        ("no pre-made objects", Vec::new()),
        ("no messages", Vec::new()),
        ("one change", Vec::new()),
        ("no review block", Vec::new()),
    ];
    let mut content = 0;
    for i in 0..n {
        let id = DocId::from_bytes(light::id_bytes(&mut gen));
        let fields = records::fields(&mut gen, i);
        content += records::size(&fields);
        let made = LightRecord::create(id, device, &actor, &fields)?;
        let header = baraza_records::Header::read(&made.doc)?;
        let time = header.created_at / 1000;
        variants[0].1.push((id, made.doc.clone()));
        for (v, premade, message, one, review) in [
            (1, false, true, false, true),
            (2, true, false, false, true),
            (3, true, true, true, true),
            (4, true, true, false, false),
        ] {
            let mut doc = Automerge::new();
            doc.set_actor(actor.clone());
            let opts = |op: &str| {
                let o = CommitOptions::default().with_time(time);
                if message {
                    o.with_message(format!("{op} by {}", baraza_bench::server::BENCH_USER))
                } else {
                    o
                }
            };
            let mut tx = doc.transaction();
            header.write(&mut tx)?;
            if review {
                let r = tx.put_object(ROOT, "review", ObjType::Map)?;
                tx.put(&r, "state", "draft")?;
                tx.put_object(&r, "comments", ObjType::List)?;
            }
            if premade {
                for f in ["attendees", "concerns", "action_items"] {
                    tx.put_object(ROOT, f, ObjType::List)?;
                }
                tx.put_object(ROOT, "headcount", ObjType::Map)?;
                tx.put_object(ROOT, "notes", ObjType::Text)?;
            }
            if one {
                for (k, val) in &fields {
                    match k.as_str() {
                        "held_at" => tx.put(ROOT, k.as_str(), val.parse::<i64>()?)?,
                        _ => tx.put(ROOT, k.as_str(), val.as_str())?,
                    }
                }
                tx.commit_with(opts("create meeting"));
            } else {
                tx.commit_with(opts("create meeting"));
                for (k, val) in &fields {
                    let mut tx = doc.transaction();
                    match k.as_str() {
                        "held_at" => tx.put(ROOT, k.as_str(), val.parse::<i64>()?)?,
                        _ => tx.put(ROOT, k.as_str(), val.as_str())?,
                    }
                    tx.commit_with(opts(&format!("set {k}")));
                }
            }
            variants[v].1.push((id, doc));
        }
    }
    println!(
        "{n} records, content {:.0} B/record",
        content as f64 / n as f64
    );
    println!(
        "{:>22} {:>10} {:>12} {:>14}",
        "", "saved", "packed", "packed, no heads"
    );
    for (name, docs) in &variants {
        let saved: usize = docs.iter().map(|(_, d)| d.save_nocompress().len()).sum();
        let per = |v: usize| v as f64 / n as f64;
        println!(
            "{name:>22} {:>10.0} {:>12.0} {:>14.0}",
            per(saved),
            per(packed(docs, true)?),
            per(packed(docs, false)?)
        );
    }
    Ok(())
}
