//! `baraza`: a scriptable command-line tablet over the client SDK.
//!
//! A crate of its own (`baraza-cli`) so the SDK an app embeds pulls in no
//! clap, terminal or passphrase code; it uses only the SDK's public API.

use std::io::IsTerminal;
use std::path::PathBuf;

mod cli_key;
mod cli_out;
use std::process::ExitCode;

use cli_out::outln;

use anyhow::{bail, Context};
use baraza_client::{Client, ClientError, SyncEvent, SyncListener};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baraza",
    version,
    about = "A command-line Baraza tablet: records kept offline, synced on demand"
)]
struct Cli {
    /// The tablet's data directory.
    #[arg(
        long,
        global = true,
        env = "BARAZA_TABLET_DATA",
        default_value = "./baraza-tablet"
    )]
    data: PathBuf,
    /// File holding the key that seals the tablet's store: 32 raw bytes or
    /// 64 hex digits. `init` and `enroll` create it (random, mode 0600) if
    /// it is missing and the data dir is new. Without it, a passphrase is
    /// asked for on the terminal (or read as the first line of standard
    /// input) and stretched with argon2id.
    #[arg(long, global = true, env = "BARAZA_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Seconds to wait for the tablet's store to open before calling it
    /// damaged (a damaged store can leave the storage engine stuck).
    #[arg(
        long,
        global = true,
        env = "BARAZA_OPEN_TIMEOUT",
        default_value_t = baraza_client::DEFAULT_OPEN_DEADLINE.as_secs(),
        value_name = "SECS"
    )]
    open_timeout: u64,
    /// Print machine-readable JSON (read verbs and sync).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sets the server, the CA to trust and this device's token.
    Init {
        /// Server URL, e.g. https://127.0.0.1:8443
        #[arg(long)]
        server: String,
        /// PEM file of the CA (for the development server: DATA/tls/ca.pem).
        #[arg(long)]
        ca: PathBuf,
        /// The token printed by `baraza-server device add`.
        #[arg(long, env = "BARAZA_TOKEN", hide_env_values = true)]
        token: String,
        /// Who uses this tablet (recorded as the creator of new records).
        #[arg(long)]
        user: Option<String>,
        /// The area (beat, ward, district) new records are filed under.
        #[arg(long)]
        area: Option<String>,
    },
    /// Enrols this tablet: logs in as a user (password from standard input,
    /// after the store passphrase if there is no key file) and receives the
    /// device's own token.
    Enroll {
        /// Server URL, e.g. https://127.0.0.1:8443
        #[arg(long)]
        server: String,
        /// PEM file of the CA (for the development server: DATA/tls/ca.pem).
        #[arg(long)]
        ca: PathBuf,
        /// The user's login name.
        #[arg(long)]
        user: String,
        /// A name for this device, e.g. "Kibera tablet 3".
        #[arg(long)]
        device_name: String,
    },
    /// Creates a record; prints its id.
    New {
        /// Kind of record: meeting, patrol_note, feedback, feedback_contact.
        #[arg(long, default_value = "meeting")]
        kind: String,
        /// Area to file it under (default: the one given at init).
        #[arg(long)]
        area: Option<String>,
        /// Initial field values, FIELD=VALUE; repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Sets a field of a record.
    Set {
        /// Record id.
        id: String,
        /// Field name.
        field: String,
        /// New value.
        value: String,
    },
    /// Edits a text field: at POS, deletes DELETE characters and inserts TEXT.
    Splice {
        /// Record id.
        id: String,
        /// Text field name (created if absent).
        field: String,
        /// Character position.
        pos: u64,
        /// Characters to delete.
        delete: i64,
        /// Text to insert.
        text: String,
    },
    /// Shows a record; conflicting values are marked.
    Show {
        /// Record id.
        id: String,
    },
    /// Lists the records on this tablet.
    List,
    /// Syncs with the server; exits 0 once everything local is acknowledged
    /// and everything remote received.
    Sync,
    /// Shows unacknowledged changes, the last sync and the cursor.
    Status,
    /// Adds an item to a list field: `add ID attendees name=Otieno role=youth`.
    Add {
        /// Record id.
        id: String,
        /// List field (attendees, concerns, action_items, observations, follow_ups).
        list: String,
        /// The item's fields, FIELD=VALUE.
        values: Vec<String>,
    },
    /// Sets a field of a list item: `item ID action_items 0 status done`.
    Item {
        /// Record id.
        id: String,
        /// List field.
        list: String,
        /// Position in the list, from 0.
        index: u64,
        /// Field of the item.
        field: String,
        /// New value.
        value: String,
    },
    /// Sets keys of a map field: `map ID headcount women=12 men=9 total=21`.
    Map {
        /// Record id.
        id: String,
        /// Map field (headcount).
        field: String,
        /// Keys and values, KEY=VALUE.
        values: Vec<String>,
    },
    /// Removes a list item.
    Remove {
        /// Record id.
        id: String,
        /// List field.
        list: String,
        /// Position in the list, from 0.
        index: u64,
    },
    /// Meetings: start one, record who came, concerns and action items.
    #[command(subcommand)]
    Meeting(MeetingCmd),
    /// Patrol notes: start one, add observations (with GPS).
    #[command(subcommand)]
    Patrol(PatrolCmd),
    /// Citizens' feedback: record it, add follow-ups.
    #[command(subcommand)]
    Feedback(FeedbackCmd),
    /// Submits a record for a supervisor's review.
    Submit {
        /// Record id.
        id: String,
    },
    /// A supervisor's decision on a record: approved, or returned with a
    /// comment saying what to fix. The server refuses it from anyone but a
    /// supervisor of the record's area.
    Review {
        /// Record id.
        id: String,
        /// approved or returned.
        #[arg(value_enum)]
        decision: Decision,
        /// What the author should do (for a return).
        #[arg(long)]
        comment: Option<String>,
    },
    /// Lists fields set differently on several devices, with who and when.
    Conflicts {
        /// Record id.
        id: String,
    },
    /// Lists every change to a record: who, when, which fields.
    History {
        /// Record id.
        id: String,
    },
    /// Attaches a file (a photo, a recording, a scanned page) to an
    /// attachment list of a record: `attach ID photos scene.jpg`. The
    /// bytes are kept sealed on this tablet and uploaded after the next
    /// sync, resuming where a cut left off.
    Attach {
        /// Record id.
        id: String,
        /// Attachment list (meeting: photos, audio, attendance_sheet;
        /// patrol note: photos, or an observation's, observations.N.photos;
        /// feedback: photos, documents; contact: documents).
        field: String,
        /// The file.
        file: PathBuf,
        /// Its media type (default: guessed from the file name).
        #[arg(long)]
        mime: Option<String>,
    },
    /// Writes an attachment's bytes to a file, fetching them from the
    /// server first if they are not on this tablet: `fetch ID photos
    /// out.jpg` (the list's only attachment, or the one --index names).
    Fetch {
        /// Record id.
        id: String,
        /// Attachment list.
        field: String,
        /// Where to write the bytes.
        out: PathBuf,
        /// Which attachment of the list, from 0, when it holds several.
        #[arg(long)]
        index: Option<usize>,
    },
    /// Deletes an attachment from a record and from this tablet (for one
    /// the server refused, say): `detach ID SHA256`.
    Detach {
        /// Record id.
        id: String,
        /// The attachment's SHA-256, as `show` lists it.
        sha256: String,
    },
}

#[derive(Subcommand)]
enum MeetingCmd {
    /// Starts a meeting record; prints its id.
    New {
        /// Title.
        title: String,
        /// Where it is held.
        #[arg(long)]
        place: Option<String>,
        /// Area (default: the one given at init).
        #[arg(long)]
        area: Option<String>,
    },
    /// Records an attendee.
    Attend {
        /// Record id.
        id: String,
        /// Name.
        name: String,
        /// Role (elder, youth leader, ...).
        #[arg(long)]
        role: Option<String>,
    },
    /// Records a concern raised.
    Concern {
        /// Record id.
        id: String,
        /// Topic.
        topic: String,
        /// What was said.
        text: String,
    },
    /// Adds an action item.
    Action {
        /// Record id.
        id: String,
        /// What is to be done.
        text: String,
        /// Who is to do it.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Changes an action item's status (open, in_progress, done, dropped).
    ActionStatus {
        /// Record id.
        id: String,
        /// Position of the action item, from 0.
        index: u64,
        /// New status.
        status: String,
    },
}

#[derive(Subcommand)]
enum PatrolCmd {
    /// Starts a patrol note; prints its id.
    New {
        /// Beat.
        beat: String,
        /// Officer.
        #[arg(long)]
        officer: Option<String>,
        /// Area (default: the one given at init).
        #[arg(long)]
        area: Option<String>,
    },
    /// Adds an observation, with a GPS point if given as LAT,LON,ACCURACY_M.
    Observe {
        /// Record id.
        id: String,
        /// What was observed.
        text: String,
        /// GPS point: LAT,LON,ACCURACY_M in decimal degrees and whole
        /// metres, e.g. -1.3127,36.7850,8.
        // A southern latitude starts with '-', which clap would otherwise
        // read as a flag.
        #[arg(long, allow_hyphen_values = true, value_name = "LAT,LON,ACCURACY_M")]
        gps: Option<String>,
        /// Tags, comma-separated.
        #[arg(long)]
        tags: Option<String>,
    },
}

#[derive(Subcommand)]
enum FeedbackCmd {
    /// Records feedback; prints its id.
    New {
        /// complaint, commendation, concern or suggestion.
        category: String,
        /// What it is about (a unit, a place).
        about: String,
        /// in_person, phone, meeting, letter or other.
        #[arg(long, default_value = "in_person")]
        channel: String,
        /// Area (default: the one given at init).
        #[arg(long)]
        area: Option<String>,
    },
    /// Adds a follow-up and moves the status.
    FollowUp {
        /// Record id.
        id: String,
        /// received, acknowledged, referred or resolved.
        status: String,
        /// What was done.
        note: String,
    },
}

fn pairs(values: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("expected FIELD=VALUE, got {pair:?}"),
        })
        .collect()
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn now_ms() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string()
}

/// What `baraza sync` shows while it runs: on a terminal, a progress bar
/// of the records received against those the server said were waiting
/// (an upper bound: one per feed entry since the tablet's cursor), with
/// the bytes so far of those expected and a time estimate; nothing when
/// stderr is not a terminal (indicatif's stderr target hides itself), so
/// scripts and logs see only the summary.
struct Printer {
    bar: indicatif::ProgressBar,
}

/// Fewest records waiting before a bar is drawn: a sync of a few records
/// is over before a bar could say anything.
const BAR_RECORDS_MIN: u64 = 100;

impl Printer {
    fn new() -> Printer {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "receiving {bar:30} {pos}/{len} records, {msg}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Printer { bar }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

impl SyncListener for Printer {
    fn on_event(&self, event: SyncEvent) {
        match event {
            SyncEvent::Progress {
                to_receive,
                received,
                bytes_received,
                bytes_expected,
                ..
            } if to_receive >= BAR_RECORDS_MIN => {
                if self.bar.is_hidden() && self.bar.length().is_none() {
                    self.bar
                        .set_draw_target(indicatif::ProgressDrawTarget::stderr());
                }
                self.bar.set_length(to_receive);
                self.bar.set_position(received.min(to_receive));
                let bytes = indicatif::HumanBytes(bytes_received);
                self.bar.set_message(match bytes_expected {
                    Some(all) => format!("{bytes} of about {}", indicatif::HumanBytes(all)),
                    None => bytes.to_string(),
                });
            }
            SyncEvent::Connecting { .. } | SyncEvent::Connected => {
                tracing::debug!(?event, "sync");
            }
            SyncEvent::AttachmentRefused {
                record, message, ..
            } => {
                self.bar.suspend(|| {
                    eprintln!(
                        "attachment of record {record} refused: {message} (kept on this tablet; \
                         `baraza detach` deletes it)"
                    )
                });
            }
            _ => {}
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BARAZA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes are for a person at a terminal, not for a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // A panic of the storage engine while opening the store is caught by
    // the SDK and reported below as a damaged store; printed by the default
    // hook as well, it would read as a crash of this program.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(baraza_client::STORE_OPEN_THREAD) {
            default_hook(info);
        }
    }));
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err)
            if err
                .downcast_ref::<cli_out::StdoutError>()
                .is_some_and(|e| e.is_broken_pipe()) =>
        {
            // The reader is gone (`baraza list | head -1`): nobody is left
            // to tell, and what it wanted it has.
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(ClientError::DamagedStore { path, .. }) = err.downcast_ref::<ClientError>()
            {
                eprintln!(
                    "the store was left as it is; keep a copy of {} before moving it aside. \
                     Records the server acknowledged come back when a new data dir syncs; \
                     changes never acknowledged are only in the damaged store",
                    path.display()
                );
            }
            // A store open given up on may still be running on its own
            // thread; returning ends the process, and it with it.
            ExitCode::FAILURE
        }
    }
}

/// What was on disk before `init` or `enroll` began, so that a failed one
/// removes what it created and nothing else: a tablet set up half way
/// would later refuse a new attempt ("not set up", or a key file without
/// a store), and a pre-existing store or key file is never touched.
struct BeforeSetUp {
    data_dir: bool,
    store: bool,
    salt: bool,
    key_file: Option<(PathBuf, bool)>,
}

impl BeforeSetUp {
    fn note(data: &std::path::Path, key_file: Option<&std::path::Path>) -> BeforeSetUp {
        BeforeSetUp {
            data_dir: data.exists(),
            store: data.join("store").exists(),
            salt: data.join(cli_key::SALT_FILE).exists(),
            key_file: key_file.map(|k| (k.to_path_buf(), k.exists())),
        }
    }

    /// Removes what the failed command created. Best effort: what cannot
    /// be removed is named, so the person can remove it.
    fn undo(&self, data: &std::path::Path) {
        let remove = |path: &std::path::Path, dir: bool| {
            let removed = if dir {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("could not remove {}: {e}", path.display()),
            }
        };
        if let Some((key, false)) = &self.key_file {
            remove(key, false);
        }
        if !self.data_dir {
            remove(data, true);
            return;
        }
        if !self.store {
            remove(&data.join("store"), true);
        }
        if !self.salt {
            remove(&data.join(cli_key::SALT_FILE), false);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let setting_up = matches!(cli.command, Command::Init { .. } | Command::Enroll { .. });
    let before = setting_up.then(|| BeforeSetUp::note(&cli.data, cli.key_file.as_deref()));
    let data = cli.data.clone();
    // The command owns the store and closes it on return, before any undo.
    let outcome = run_command(cli);
    if let (Err(_), Some(before)) = (&outcome, &before) {
        before.undo(&data);
    }
    outcome
}

fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    let source = match &cli.key_file {
        Some(path) => cli_key::KeySource::File(path),
        None => cli_key::KeySource::Passphrase,
    };
    let setting_up = matches!(cli.command, Command::Init { .. } | Command::Enroll { .. });
    let key = cli_key::store_key(&cli.data, source, setting_up)?;
    let deadline = std::time::Duration::from_secs(cli.open_timeout);
    let client = Client::open_within(&cli.data, &key, deadline)
        .with_context(|| format!("cannot open tablet data in {}", cli.data.display()))?;
    drop(key);
    match cli.command {
        Command::Init {
            server,
            ca,
            token,
            user,
            area,
        } => {
            client.configure(&server, Some(&ca), &token)?;
            if user.is_some() || area.is_some() {
                client.set_identity(
                    user.as_deref().unwrap_or("unknown"),
                    area.as_deref().unwrap_or("unassigned"),
                )?;
            }
            outln!("configured {server}");
        }
        Command::Enroll {
            server,
            ca,
            user,
            device_name,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let enrolment =
                runtime.block_on(client.enroll(&server, &ca, &user, password, &device_name))?;
            let again = if enrolment.reenrolled { " again" } else { "" };
            outln!(
                "enrolled device {}{again} for {} ({}; areas: {}){}",
                enrolment.device_id,
                enrolment.user,
                enrolment.role,
                enrolment.areas.join(", "),
                if enrolment.reenrolled {
                    ": changes not yet synced go with the next sync"
                } else {
                    ""
                }
            );
        }
        Command::New { kind, area, set } => {
            let mut fields = Vec::new();
            for pair in set {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--set wants FIELD=VALUE, got {pair:?}");
                };
                fields.push((k.to_string(), v.to_string()));
            }
            let area = match area {
                Some(area) => area,
                None => client.area()?,
            };
            let id = client.create_record(&kind, &area, fields)?;
            created(&kind, &area, &id);
            // Only the id on standard output: scripts take it with $(...).
            outln!("{id}");
        }
        Command::Set { id, field, value } => {
            client.set(&id, &field, &value)?;
            done(&format!("set {field} of record {id} to {value:?}"));
        }
        Command::Splice {
            id,
            field,
            pos,
            delete,
            text,
        } => {
            client.splice(&id, &field, pos, delete, &text)?;
            done(&format!(
                "edited {field} of record {id}: at character {pos}, deleted {delete}, inserted {}",
                text.chars().count()
            ));
        }
        Command::Show { id } => {
            let record = client.get(&id)?;
            if cli.json {
                let json = cli_out::record_json(&client, &record)?;
                outln!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let text = cli_out::record_text(&client, &record)?;
                outln!("{}", text.trim_end());
            }
        }
        Command::List => {
            let records = client.records()?;
            if cli.json {
                outln!("{}", serde_json::to_string(&cli_out::list_json(&records))?);
            } else {
                // Line by line, so a reader that stops early stops us too.
                for line in cli_out::list_text(&records).lines() {
                    outln!("{line}");
                }
            }
        }
        Command::Sync => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let printer = Printer::new();
            let report = runtime.block_on(client.sync_once(&printer));
            printer.done();
            let report = report?;
            if cli.json {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                outln!(
                    "synced: {} sent, {} received, {} reconciled",
                    report.docs_sent,
                    report.docs_received,
                    report.docs_reconciled
                );
                let a = &report.attachments;
                if a.uploaded + a.waiting + a.refused > 0 {
                    outln!(
                        "attachments: {} uploaded, {} waiting, {} refused",
                        a.uploaded,
                        a.waiting,
                        a.refused
                    );
                }
            }
            if report.unacknowledged > 0 {
                let status = client.status()?;
                for r in &status.refused {
                    eprintln!("{}", describe_refusal(r));
                }
                eprintln!(
                    "{} records not acknowledged by the server",
                    report.unacknowledged
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Add { id, list, values } => {
            let index = client.add_item(&id, &list, pairs(&values)?)?;
            done(&format!("added item {index} to {list} of record {id}"));
            outln!("{index}");
        }
        Command::Item {
            id,
            list,
            index,
            field,
            value,
        } => {
            client.set_item(&id, &list, index, &field, &value)?;
            done(&format!(
                "set {field} of {list} item {index} of record {id} to {value:?}"
            ));
        }
        Command::Map { id, field, values } => {
            let values = pairs(&values)?;
            let keys: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
            let keys = keys.join(", ");
            client.set_map(&id, &field, values)?;
            done(&format!("set {keys} of {field} of record {id}"));
        }
        Command::Attach {
            id,
            field,
            file,
            mime,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mime = mime.unwrap_or_else(|| {
                mime_guess::from_path(&file)
                    .first_or_octet_stream()
                    .essence_str()
                    .to_string()
            });
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let reference = client.attach(&id, &field, &bytes, &mime, &name)?;
            done(&format!(
                "attached {name} ({mime}, {}) to {field} of record {id}; it uploads after the next sync",
                cli_out::size_text(reference.size_bytes)
            ));
            outln!("{}", reference.sha256);
        }
        Command::Fetch {
            id,
            field,
            out,
            index,
        } => {
            let listed: Vec<_> = client
                .attachments(&id)?
                .into_iter()
                .filter(|a| a.reference.field == field)
                .collect();
            let chosen = match (index, listed.len()) {
                (_, 0) => bail!("record {id} has no attachment in {field}"),
                (None, 1) => &listed[0],
                (None, n) => bail!(
                    "{field} of record {id} holds {n} attachments; pick one with --index 0..{}",
                    n - 1
                ),
                (Some(i), n) if i >= n => {
                    bail!("{field} of record {id} holds {n} attachments; --index {i} is past them")
                }
                (Some(i), _) => &listed[i],
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let printer = Printer::new();
            let bytes =
                runtime.block_on(client.fetch_attachment(&id, &chosen.reference.sha256, &printer));
            printer.done();
            let bytes = bytes?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            done(&format!(
                "wrote {} ({}) to {}",
                chosen.reference.name,
                cli_out::size_text(bytes.len() as u64),
                out.display()
            ));
        }
        Command::Detach { id, sha256 } => {
            client.delete_attachment(&id, &sha256)?;
            done(&format!(
                "deleted attachment {sha256} from record {id} and this tablet"
            ));
        }
        Command::Remove { id, list, index } => {
            client.remove_item(&id, &list, index)?;
            done(&format!("removed item {index} from {list} of record {id}"));
        }
        Command::Meeting(cmd) => match cmd {
            MeetingCmd::New { title, place, area } => {
                let mut fields = vec![kv("title", &title), kv("held_at", &now_ms())];
                if let Some(place) = place {
                    fields.push(kv("place", &place));
                }
                let area = match area {
                    Some(a) => a,
                    None => client.area()?,
                };
                let id = client.create_record("meeting", &area, fields)?;
                created("meeting", &area, &id);
                outln!("{id}");
            }
            MeetingCmd::Attend { id, name, role } => {
                let mut item = vec![kv("name", &name)];
                if let Some(role) = role {
                    item.push(kv("role", &role));
                }
                let index = client.add_item(&id, "attendees", item)?;
                done(&format!(
                    "added attendee {name:?} (item {index}) to record {id}"
                ));
                outln!("{index}");
            }
            MeetingCmd::Concern { id, topic, text } => {
                let item = vec![kv("topic", &topic), kv("text", &text)];
                let index = client.add_item(&id, "concerns", item)?;
                done(&format!("added concern {index} ({topic}) to record {id}"));
                outln!("{index}");
            }
            MeetingCmd::Action { id, text, owner } => {
                let mut item = vec![kv("text", &text), kv("status", "open")];
                if let Some(owner) = owner {
                    item.push(kv("owner", &owner));
                }
                let index = client.add_item(&id, "action_items", item)?;
                done(&format!("added action item {index} to record {id}"));
                outln!("{index}");
            }
            MeetingCmd::ActionStatus { id, index, status } => {
                client.set_item(&id, "action_items", index, "status", &status)?;
                done(&format!(
                    "set action item {index} of record {id} to {status}"
                ));
            }
        },
        Command::Patrol(cmd) => match cmd {
            PatrolCmd::New {
                beat,
                officer,
                area,
            } => {
                let mut fields = vec![kv("beat", &beat), kv("started_at", &now_ms())];
                if let Some(officer) = officer {
                    fields.push(kv("officer", &officer));
                }
                let area = match area {
                    Some(a) => a,
                    None => client.area()?,
                };
                let id = client.create_record("patrol_note", &area, fields)?;
                created("patrol_note", &area, &id);
                outln!("{id}");
            }
            PatrolCmd::Observe {
                id,
                text,
                gps,
                tags,
            } => {
                // The point is checked before the observation is made, so a
                // bad one leaves no observation without it behind.
                let point = match &gps {
                    Some(gps) => {
                        let parts: Vec<&str> = gps.split(',').collect();
                        let [lat, lon, acc] = parts.as_slice() else {
                            bail!("--gps wants LAT,LON,ACCURACY_M, got {gps:?}");
                        };
                        let acc: i64 = acc
                            .trim()
                            .parse()
                            .with_context(|| format!("accuracy {acc:?} is not whole metres"))?;
                        baraza_client::BaseClient::check_gps(lat, lon, acc)?;
                        Some((lat.trim(), lon.trim(), acc))
                    }
                    None => None,
                };
                let mut item = vec![kv("text", &text), kv("at", &now_ms())];
                if let Some(tags) = tags {
                    item.push(kv("tags", &tags));
                }
                let index = client.add_item(&id, "observations", item)?;
                if let Some((lat, lon, acc)) = point {
                    client.set_gps(&id, index, lat, lon, acc)?;
                }
                done(&format!("added observation {index} to record {id}"));
                outln!("{index}");
            }
        },
        Command::Feedback(cmd) => match cmd {
            FeedbackCmd::New {
                category,
                about,
                channel,
                area,
            } => {
                let fields = vec![
                    kv("category", &category),
                    kv("about", &about),
                    kv("channel", &channel),
                    kv("status", "received"),
                ];
                let area = match area {
                    Some(a) => a,
                    None => client.area()?,
                };
                let id = client.create_record("feedback", &area, fields)?;
                created("feedback", &area, &id);
                outln!("{id}");
            }
            FeedbackCmd::FollowUp { id, status, note } => {
                client.follow_up(&id, &status, &note)?;
                done(&format!(
                    "added a follow-up to record {id}; its status is now {status}"
                ));
            }
        },
        Command::Submit { id } => {
            client.submit(&id)?;
            done(&format!("submitted record {id} for review"));
        }
        Command::Review {
            id,
            decision,
            comment,
        } => {
            let commented = if comment.is_some() {
                " with a comment"
            } else {
                ""
            };
            let decision = decision.state();
            client.review(&id, decision, comment)?;
            done(&format!("marked record {id} {decision}{commented}"));
        }
        Command::Conflicts { id } => {
            let conflicts = client.conflicts(&id)?;
            if cli.json {
                let json = cli_out::conflicts_json(&client, &conflicts)?;
                outln!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                let text = cli_out::conflicts_text(&client, &conflicts)?;
                outln!("{}", text.trim_end());
            }
        }
        Command::History { id } => {
            let history = client.history(&id)?;
            if cli.json {
                let json = cli_out::history_json(&client, &history)?;
                outln!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                for line in cli_out::history_text(&client, &history)?.lines() {
                    outln!("{line}");
                }
            }
        }
        Command::Status => {
            let status = client.status()?;
            if cli.json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                outln!(
                    "server: {}",
                    status.server.as_deref().unwrap_or("(not configured)")
                );
                outln!("records: {}", status.records);
                outln!("unacknowledged: {}", status.unacknowledged);
                match status.last_sync {
                    Some(t) => outln!(
                        "last sync: {}",
                        cli_out::iso_ms(i64::try_from(t).unwrap_or(i64::MAX).saturating_mul(1000))
                    ),
                    None => outln!("last sync: never"),
                }
                outln!("cursor: {}", status.cursor);
                for r in &status.refused {
                    outln!("{}", describe_refusal(r));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on standard error what a write did: standard output stays for
/// what scripts capture (a new record's id, an item's position).
fn done(what: &str) {
    eprintln!("{what} (on this tablet; `baraza sync` sends it to the server)");
}

/// Says on standard error which record a `new` made.
fn created(kind: &str, area: &str, id: &str) {
    done(&format!("created {kind} record {id} in area {area}"));
}

/// One line per refused record: which rule, and the server's reason.
fn describe_refusal(r: &baraza_client::RefusedRecord) -> String {
    match &r.rejection.rule {
        Some(rule) => format!("rejected {} by rule {rule}: {}", r.id, r.rejection.message),
        None => format!(
            "refused {} ({}): {}",
            r.id, r.rejection.code, r.rejection.message
        ),
    }
}

/// A supervisor's decision, as `review` takes it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Decision {
    Approved,
    Returned,
}

impl Decision {
    fn state(self) -> baraza_records::ReviewState {
        match self {
            Decision::Approved => baraza_records::ReviewState::Approved,
            Decision::Returned => baraza_records::ReviewState::Returned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(to_receive: u64, received: u64, bytes_received: u64) -> SyncEvent {
        SyncEvent::Progress {
            to_send: 0,
            sent: 0,
            to_receive,
            received,
            bytes_sent: 0,
            bytes_received,
            bytes_expected: (received > 0).then(|| bytes_received / received * to_receive),
            receive_ms_left: None,
        }
    }

    /// The bar follows the records received of those waiting, with the
    /// bytes so far of those expected; a sync of a few records draws none.
    #[test]
    fn the_sync_bar_counts_records_of_those_waiting_and_skips_small_syncs() {
        let small = Printer::new();
        small.on_event(progress(BAR_RECORDS_MIN - 1, 10, 4_000));
        assert_eq!(small.bar.length(), None);

        let cold = Printer::new();
        cold.on_event(progress(10_000, 0, 0));
        cold.on_event(progress(10_000, 2_500, 880_000));
        assert_eq!(cold.bar.length(), Some(10_000));
        assert_eq!(cold.bar.position(), 2_500);
        assert_eq!(cold.bar.message(), "859.38 KiB of about 3.36 MiB");
        // An upper bound that was too high is never passed.
        cold.on_event(progress(10_000, 10_100, 3_500_000));
        assert_eq!(cold.bar.position(), 10_000);
        cold.done();
        assert!(cold.bar.is_finished());
    }
}
