//! A `baraza-server` child process: start, register devices, read its
//! memory and CPU use from `/proc`, stop gracefully.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// How long the server may take to announce its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The user every bench device acts for: a supervisor of [`BENCH_AREA`].
pub const BENCH_USER: &str = "bench.supervisor";
/// The password of every bench user.
pub const BENCH_PASSWORD: &str = "bench marks the beat 7";
/// The area bench records are filed under.
pub const BENCH_AREA: &str = "unassigned";

const SERVER_ENV: [&str; 6] = [
    "BARAZA_DATA",
    "BARAZA_STORE",
    "BARAZA_LISTEN",
    "BARAZA_TLS_CERT",
    "BARAZA_TLS_KEY",
    "BARAZA_CONFIG",
];

/// Finds the `baraza-server` binary: `explicit` if given, else next to the
/// running executable (or one level up, for test binaries in `deps/`).
pub fn find_server_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.is_file(), "no server binary at {}", path.display());
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let name = format!("baraza-server{}", std::env::consts::EXE_SUFFIX);
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "cannot find {name} next to {}: build it with the same profile first, e.g. \
         `cargo build --release -p baraza-server -p baraza-bench`, or pass --server-bin",
        exe.display()
    )
}

fn command(bin: &Path, store: Option<&str>) -> Command {
    let mut command = Command::new(bin);
    for var in SERVER_ENV {
        command.env_remove(var);
    }
    if let Some(url) = store {
        command.env("BARAZA_STORE", url);
    }
    command
}

/// Runs one SQL statement with `psql` against `url` and returns what it
/// printed (unaligned, no headers), trimmed; `what` names the purpose in
/// errors.
fn psql(url: &str, sql: &str, what: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(sql)
        .output()
        .with_context(|| format!("cannot run psql to {what}"))?;
    ensure!(
        out.status.success(),
        "psql could not {what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// With `BARAZA_BENCH_POSTGRES` set to a PostgreSQL URL (a database the
/// bench may create others from), each server the bench starts keeps its
/// data in a new database there instead of sled.
fn fresh_store() -> anyhow::Result<Option<String>> {
    let Ok(cluster) = std::env::var("BARAZA_BENCH_POSTGRES") else {
        return Ok(None);
    };
    // Unique enough for databases made one after another by one bench run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("bench_{}_{nanos}", std::process::id());
    psql(
        &cluster,
        &format!("CREATE DATABASE {name}"),
        "make the bench database",
    )?;
    let (server, _) = cluster
        .rsplit_once('/')
        .context("BARAZA_BENCH_POSTGRES must end in a database name")?;
    Ok(Some(format!("{server}/{name}")))
}

/// A running server. Killed on drop if not stopped, so a failed scenario
/// leaves no process behind.
pub struct Server {
    child: Option<Child>,
    bin: PathBuf,
    addr: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    /// `BARAZA_STORE` for the server and its commands; None for sled.
    store: Option<String>,
}

impl Server {
    /// Starts `bin serve --data DATA --listen 127.0.0.1:0`, logging to
    /// `log`, and waits for its `listening on` line.
    pub fn start(bin: &Path, data: &Path, log: &Path) -> anyhow::Result<Server> {
        Server::start_on(bin, data, log, fresh_store()?)
    }

    /// Starts another node on this server's database (its own data
    /// directory, so its own development certificate), as a second
    /// process behind a load balancer would run. Sled keeps its data dir
    /// locked, so only a PostgreSQL store can be shared.
    pub fn start_node(&self, data: &Path, log: &Path) -> anyhow::Result<Server> {
        ensure!(
            self.store.is_some(),
            "a second node needs a shared PostgreSQL store (set BARAZA_BENCH_POSTGRES)"
        );
        Server::start_on(&self.bin, data, log, self.store.clone())
    }

    fn start_on(
        bin: &Path,
        data: &Path,
        log: &Path,
        store: Option<String>,
    ) -> anyhow::Result<Server> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = command(bin, store.as_deref());
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (lines_tx, lines_rx) = mpsc::channel();
        // Drains stdout for the server's whole life so it never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            bin: bin.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
            store,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        server.addr = addr.trim().parse().with_context(|| {
                            format!("server announced an unreadable address {addr:?}")
                        })?;
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => bail!(
                    "the server did not announce its address; log {}:\n{}",
                    server.log.display(),
                    server.log_text()
                ),
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR`, for `Client::configure`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The development CA the clients must trust.
    pub fn ca(&self) -> PathBuf {
        self.data.join("tls").join("ca.pem")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until the server logs that no record waits for a snapshot
    /// (after the last one logged so far), at most `limit`; returns how long.
    pub fn wait_for_snapshots(&self, limit: Duration) -> anyhow::Result<Duration> {
        const DONE: &str = "snapshots taken; none waiting";
        let seen = self.log_text().matches(DONE).count();
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.log_text().matches(DONE).count() > seen {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the server took no snapshots in {:.0} s; log {}",
            limit.as_secs_f64(),
            self.log.display()
        )
    }

    /// Bytes the server keeps: the PostgreSQL database's size
    /// (`pg_database_size`), or the sled data directory's files (the
    /// development certificate included, a few KiB).
    pub fn store_bytes(&self) -> anyhow::Result<u64> {
        match &self.store {
            Some(url) => psql(
                url,
                "SELECT pg_database_size(current_database())",
                "read the database size",
            )?
            .parse()
            .context("psql printed an unreadable database size"),
            None => dir_bytes(&self.data),
        }
    }

    /// Which store it runs on: `postgres` or `sled`.
    pub fn store_kind(&self) -> &'static str {
        if self.store.is_some() {
            "postgres"
        } else {
            "sled"
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Adds a user with the bench password (an existing one is fine).
    pub fn add_user(&self, name: &str, role: &str, areas: &[String]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut cmd = command(&self.bin, self.store.as_deref());
        cmd.args(["user", "add", "--name", name, "--role", role]);
        for area in areas {
            cmd.args(["--area", area]);
        }
        let mut child = cmd
            .arg("--data")
            .arg(&self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run `baraza-server user add`")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{BENCH_PASSWORD}\n").as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() || stderr.contains("exists"),
            "`user add` failed: {}",
            stderr.trim()
        );
        Ok(())
    }

    /// Runs `baraza-server user ARGS --data DATA` (disable, list, ...) and
    /// returns its standard output.
    pub fn user_command(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = command(&self.bin, self.store.as_deref())
            .arg("user")
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .context("cannot run `baraza-server user`")?;
        ensure!(
            out.status.success(),
            "`user {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers a device acting for `user` and returns its token.
    pub fn add_device_for(&self, name: &str, user: &str) -> anyhow::Result<String> {
        let out = command(&self.bin, self.store.as_deref())
            .args(["device", "add", "--name", name, "--user", user, "--data"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .context("cannot run `baraza-server device add`")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "`device add` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let mut lines = stdout.lines();
        let token = lines.next().unwrap_or_default().trim().to_string();
        ensure!(
            !token.is_empty() && lines.next().is_none(),
            "`device add` printed {stdout:?}, not one token"
        );
        Ok(token)
    }

    /// Adds [`BENCH_USER`], a supervisor of [`BENCH_AREA`] every bench
    /// device acts for (so each device reads every other's records, as
    /// before access control); an existing one is fine.
    fn ensure_bench_user(&self) -> anyhow::Result<()> {
        self.add_user(BENCH_USER, "supervisor", &[BENCH_AREA.to_string()])
    }

    /// Registers a device for [`BENCH_USER`] with `baraza-server device
    /// add` (through the running server's admin socket) and returns its token.
    pub fn add_device(&self, name: &str) -> anyhow::Result<String> {
        self.ensure_bench_user()?;
        self.add_device_for(name, BENCH_USER)
    }

    /// Registers `count` devices named `PREFIX-i`, running up to `parallel`
    /// `device add` commands at once. Tokens in index order.
    pub fn add_devices(
        &self,
        prefix: &str,
        count: usize,
        parallel: usize,
    ) -> anyhow::Result<Vec<String>> {
        let next = AtomicUsize::new(0);
        let tokens: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; count]);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..parallel.clamp(1, count.max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count || failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    match self.add_device(&format!("{prefix}-{i}")) {
                        Ok(token) => {
                            if let Ok(mut t) = tokens.lock() {
                                t[i] = Some(token);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        tokens
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a device add thread panicked"))?
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.with_context(|| format!("no token for device {i}")))
            .collect()
    }

    /// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        proc_status_kib(self.pid(), field)
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS, so a later read
    /// gives the peak of what happened in between. False if the kernel
    /// refused.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        proc_cpu_time(self.pid())
    }

    /// Sends SIGTERM and waits (bounded) for a graceful exit; kills the
    /// process if it does not exit in time.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the server was already stopped");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!(
                    "the server did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed ({status})"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// A `kB` field of `/proc/PID/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// User + system CPU time of a process, from `/proc/PID/stat`.
pub fn proc_cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_second();
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_figures() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").unwrap_or(1) > 0);
        assert!(proc_cpu_time(pid).is_some() || !Path::new("/proc/self/stat").exists());
    }
}
