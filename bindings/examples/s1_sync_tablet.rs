//! S1 through the binding's own [`Tablet`] object, called from Rust: the
//! same steps as `s1_sync.rs` and `bindings/kotlin/SyncBench.kt`, with
//! everything the binding adds (its runtime, the hop onto it, the
//! conversions) but no JVM, JNA or foreign future. `bindings/kotlin/bench`
//! runs it between the two, so a gap shows on which side of the FFI it is.

use std::time::Instant;

use baraza_ffi::Tablet;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow::anyhow!("{name} is not set (run bindings/kotlin/bench)"))
}

fn main() -> anyhow::Result<()> {
    let records: usize = env("BENCH_RECORDS")?.parse()?;
    let edits: usize = env("BENCH_EDITS")?.parse()?;
    let rounds: usize = env("BENCH_ROUNDS")?.parse()?;
    let url = env("BARAZA_URL")?;
    let ca = std::fs::read_to_string(env("BARAZA_CA")?)?;
    let password = env("BENCH_PASSWORD")?;
    let work = tempfile::tempdir()?;
    let dir = |name: &str| work.path().join(name).display().to_string();
    // The caller's thread waits as Kotlin's runBlocking does; the work
    // runs on each tablet's own runtime.
    let caller = tokio::runtime::Builder::new_current_thread().build()?;
    let a = Tablet::open(dir("a"), vec![1; 32])?;
    let b = Tablet::open(dir("b"), vec![2; 32])?;
    caller.block_on(a.enroll(
        url.clone(),
        ca.clone(),
        env("BENCH_USER_A")?,
        password.clone(),
        "tablet bench A".into(),
    ))?;
    caller.block_on(b.enroll(
        url,
        ca,
        env("BENCH_USER_B")?,
        password,
        "tablet bench B".into(),
    ))?;
    let start = Instant::now();
    let mut ids = Vec::with_capacity(records);
    for n in 0..records {
        ids.push(a.create_meeting(
            format!("Tablet bench meeting {n}"),
            Some(format!("Hall {n}")),
            None,
        )?);
    }
    eprintln!(
        "tablet: {records} creates in {} ms",
        start.elapsed().as_millis()
    );
    let start = Instant::now();
    caller.block_on(a.sync(None))?;
    caller.block_on(b.sync(None))?;
    eprintln!(
        "tablet: upload and B's cold start in {} ms",
        start.elapsed().as_millis()
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        for id in ids.iter().step_by(2).take(edits) {
            b.set_field(id.clone(), "place".into(), format!("B r{round}"))?;
        }
        caller.block_on(b.sync(None))?;
        for id in ids.iter().skip(1).step_by(2).take(edits) {
            a.set_field(id.clone(), "place".into(), format!("A r{round}"))?;
        }
        let start = Instant::now();
        let summary = caller.block_on(a.sync(None))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            summary.unacknowledged == 0,
            "left {} unacknowledged",
            summary.unacknowledged
        );
        eprintln!(
            "tablet: round {round} sync {ms:.1} ms inner {:.1} ms (sent {}, received {})",
            summary.elapsed_us as f64 / 1e3,
            summary.records_sent,
            summary.records_received
        );
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "tablet s1 records={records} edits={edits} median_ms={:.1} min_ms={:.1}",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
