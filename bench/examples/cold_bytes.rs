//! What a cold start's records cost on the wire in each form: change
//! chunks as stored, a saved document (compressed or not), and either
//! deflated over a batch of records, as a packed frame would carry them.
//! `cargo run --release -p baraza-bench --example cold_bytes [records] [batch]`

use std::io::Write;

use baraza_bench::light::{self, LightRecord};
use baraza_bench::records::{self, Gen};
use baraza_protocol::DocId;

fn deflate(parts: &[Vec<u8>], batch: usize) -> anyhow::Result<usize> {
    let mut total = 0;
    for group in parts.chunks(batch) {
        let mut z = flate2::write::DeflateEncoder::new(
            Vec::new(),
            flate2::Compression::new(
                std::env::var("LEVEL")
                    .ok()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(6),
            ),
        );
        for p in group {
            z.write_all(p)?;
        }
        total += z.finish()?.len();
    }
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(1000), |s| s.parse())?;
    let batch: usize = std::env::args().nth(2).map_or(Ok(200), |s| s.parse())?;
    let mut gen = Gen::new(7);
    let device = "00112233445566778899aabbccddeeff";
    let actor = light::actor_for(device, &mut gen)?;
    let mut content = 0;
    let (mut changes, mut saved, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut heads = Vec::new();
    for i in 0..n {
        let id = DocId::from_bytes(light::id_bytes(&mut gen));
        let fields = records::fields(&mut gen, i);
        content += records::size(&fields);
        let r = LightRecord::create(id, device, &actor, &fields)?;
        let bytes: Vec<u8> = r
            .doc
            .get_changes(&[])
            .iter()
            .flat_map(|c| c.raw_bytes().to_vec())
            .collect();
        changes.push(bytes);
        saved.push(r.doc.save());
        plain.push(r.doc.save_nocompress());
        heads.push(baraza_protocol::to_heads(&r.doc.get_heads()));
    }
    let per = |v: usize| v as f64 / n as f64;
    let sum = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
    println!(
        "{n} records, content {:.0} B/record; deflate batches of {batch}",
        per(content)
    );
    for (name, v) in [
        ("changes", &changes),
        ("save", &saved),
        ("save_nocompress", &plain),
    ] {
        println!(
            "{name:>16}: {:7.0} B/record raw, {:7.0} B/record deflated",
            per(sum(v)),
            per(deflate(v, batch)?)
        );
    }
    // As catch-up sends them: one Changes frame each, packed in batches.
    let frames: Vec<Vec<u8>> = plain
        .iter()
        .enumerate()
        .map(|(i, data)| {
            baraza_protocol::codec::encode(&baraza_protocol::Message::Changes(
                baraza_protocol::Changes {
                    n: i as u64 + 1,
                    doc: DocId::from_bytes(light::id_bytes(&mut gen)),
                    heads: heads[i].clone(),
                    data: serde_bytes::ByteBuf::from(data.clone()),
                },
            ))
        })
        .collect::<Result<_, _>>()?;
    let packed: usize = frames
        .chunks(batch)
        .map(|b| {
            baraza_protocol::codec::pack(b, baraza_protocol::Packing::Deflate).map(|f| f.len())
        })
        .sum::<Result<usize, _>>()?;
    println!("  packed frames: {:7.0} B/record", per(packed));
    Ok(())
}
