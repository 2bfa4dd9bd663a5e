//! `baraza`: a scriptable command-line tablet over the client SDK.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use baraza_client::{Client, SyncEvent, SyncListener};
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
}

struct Printer;

impl SyncListener for Printer {
    fn on_event(&self, event: SyncEvent) {
        if let SyncEvent::Connecting { .. } | SyncEvent::Connected = event {
            tracing::debug!(?event, "sync");
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
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::open(&cli.data)
        .with_context(|| format!("cannot open tablet data in {}", cli.data.display()))?;
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
            println!("configured {server}");
        }
        Command::New { kind, area, set } => {
            let mut fields = Vec::new();
            for pair in set {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("--set wants FIELD=VALUE, got {pair:?}");
                };
                fields.push((k.to_string(), v.to_string()));
            }
            let id = match area {
                Some(area) => client.create_record(&kind, &area, fields)?,
                None => client.create_record(&kind, &client.area()?, fields)?,
            };
            println!("{id}");
        }
        Command::Set { id, field, value } => client.set(&id, &field, &value)?,
        Command::Splice {
            id,
            field,
            pos,
            delete,
            text,
        } => client.splice(&id, &field, pos, delete, &text)?,
        Command::Show { id } => {
            let record = client.get(&id)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("record {}", record.id);
                if record.unacknowledged {
                    println!("  (changes not yet acknowledged by the server)");
                }
                for f in &record.fields {
                    let kind = if f.text { " (text)" } else { "" };
                    println!("  {}{kind}: {}", f.name, f.value);
                    for other in &f.conflicts {
                        println!("    CONFLICT: also set to {other}");
                    }
                }
            }
        }
        Command::List => {
            let ids = client.list()?;
            if cli.json {
                println!("{}", serde_json::to_string(&ids)?);
            } else {
                for id in ids {
                    println!("{id}");
                }
            }
        }
        Command::Sync => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let report = runtime.block_on(client.sync_once(&Printer))?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "synced: {} sent, {} received, {} reconciled",
                    report.docs_sent, report.docs_received, report.docs_reconciled
                );
            }
            if report.unacknowledged > 0 {
                let status = client.status()?;
                for (id, why) in &status.refused {
                    eprintln!("refused {id}: {why}");
                }
                eprintln!(
                    "{} records not acknowledged by the server",
                    report.unacknowledged
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status => {
            let status = client.status()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!(
                    "server: {}",
                    status.server.as_deref().unwrap_or("(not configured)")
                );
                println!("records: {}", status.records);
                println!("unacknowledged: {}", status.unacknowledged);
                match status.last_sync {
                    Some(t) => println!("last sync: {t} (unix seconds)"),
                    None => println!("last sync: never"),
                }
                println!("cursor: {}", status.cursor);
                for (id, why) in &status.refused {
                    println!("refused {id}: {why}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
