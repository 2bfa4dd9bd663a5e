//! S1 in Rust, the same steps as `bindings/kotlin/SyncBench.kt` through
//! the SDK's `Client` directly, so `bindings/kotlin/bench` can put the
//! Kotlin binding's `sync()` beside the Rust call it wraps. Settings come
//! from the environment the script sets.

use std::time::Instant;

use baraza_client::{Client, NoListener};

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow::anyhow!("{name} is not set (run bindings/kotlin/bench)"))
}

fn main() -> anyhow::Result<()> {
    let records: usize = env("BENCH_RECORDS")?.parse()?;
    let edits: usize = env("BENCH_EDITS")?.parse()?;
    let rounds: usize = env("BENCH_ROUNDS")?.parse()?;
    let url = env("BARAZA_URL")?;
    let ca = std::path::PathBuf::from(env("BARAZA_CA")?);
    let password = env("BENCH_PASSWORD")?;
    let work = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let a = Client::open(&work.path().join("a"), &[1; 32])?;
    let b = Client::open(&work.path().join("b"), &[2; 32])?;
    runtime.block_on(a.enroll(&url, &ca, &env("BENCH_USER_A")?, &password, "rust bench A"))?;
    runtime.block_on(b.enroll(&url, &ca, &env("BENCH_USER_B")?, &password, "rust bench B"))?;
    let area = a.area()?;
    let start = Instant::now();
    let mut ids = Vec::with_capacity(records);
    for n in 0..records {
        ids.push(a.create_record(
            "meeting",
            &area,
            vec![
                ("title".into(), format!("Rust bench meeting {n}")),
                ("place".into(), format!("Hall {n}")),
            ],
        )?);
    }
    eprintln!(
        "rust: {records} creates in {} ms",
        start.elapsed().as_millis()
    );
    let start = Instant::now();
    runtime.block_on(a.sync_once(&NoListener))?;
    runtime.block_on(b.sync_once(&NoListener))?;
    eprintln!(
        "rust: upload and B's cold start in {} ms",
        start.elapsed().as_millis()
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        for id in ids.iter().step_by(2).take(edits) {
            b.set(id, "place", &format!("B r{round}"))?;
        }
        runtime.block_on(b.sync_once(&NoListener))?;
        for id in ids.iter().skip(1).step_by(2).take(edits) {
            a.set(id, "place", &format!("A r{round}"))?;
        }
        let start = Instant::now();
        let report = runtime.block_on(a.sync_once(&NoListener))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            report.unacknowledged == 0,
            "left {} unacknowledged",
            report.unacknowledged
        );
        eprintln!(
            "rust: round {round} sync {ms:.1} ms inner {:.1} ms (sent {}, received {})",
            report.elapsed.as_secs_f64() * 1e3,
            report.docs_sent,
            report.docs_received
        );
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "rust s1 records={records} edits={edits} median_ms={:.1} min_ms={:.1}",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
