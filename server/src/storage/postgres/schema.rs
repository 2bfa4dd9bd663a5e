//! The database's schema, as numbered migrations applied in order at
//! start. One node migrates at a time (a session advisory lock on a
//! connection of its own, released when it closes, even if the node dies
//! mid-way); each migration and the version it reaches commit together,
//! so a migration is applied whole or not at all. A database at a newer
//! version than this binary knows is refused, untouched.

use crate::storage::store::StoreError;

/// The advisory lock key nodes take to migrate ("baraza" in ASCII).
const MIGRATION_LOCK: i64 = 0x6261_7261_7a61;

/// Migrations, the first being version 1. Never edit one that has been
/// released: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: users, devices, review sessions, login throttles, the audit log.
    // JSON values are kept as text, byte for byte as serialised: the audit
    // chain hashes entries, and `jsonb` would reorder and renormalise them.
    r#"
    CREATE TABLE users (
        name text PRIMARY KEY,
        body text NOT NULL
    );
    CREATE TABLE devices (
        id text PRIMARY KEY,
        body text NOT NULL
    );
    CREATE TABLE device_tokens (
        hash bytea PRIMARY KEY,
        id text NOT NULL
    );
    CREATE TABLE device_acks (
        id text NOT NULL,
        record text NOT NULL,
        heads text NOT NULL,
        PRIMARY KEY (id, record)
    );
    CREATE TABLE review_sessions (
        key bytea PRIMARY KEY,
        body text NOT NULL
    );
    CREATE TABLE login_attempts (
        addr text NOT NULL,
        at bigint NOT NULL
    );
    CREATE INDEX login_attempts_by_addr ON login_attempts (addr, at);
    CREATE INDEX login_attempts_by_time ON login_attempts (at);
    CREATE TABLE login_refusals (
        addr text PRIMARY KEY,
        at bigint NOT NULL
    );
    CREATE TABLE login_failures (
        name text NOT NULL,
        at bigint NOT NULL
    );
    CREATE INDEX login_failures_by_name ON login_failures (name, at);
    CREATE TABLE audit (
        seq bigint PRIMARY KEY,
        body text NOT NULL
    );
    CREATE TABLE audit_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        seq bigint NOT NULL,
        hash text NOT NULL
    );
    "#,
    // 2: documents, the feed and the record index. A record's index,
    // access and summary are one row, so they cannot disagree.
    r#"
    CREATE TABLE store_meta (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        store_id bytea NOT NULL
    );
    CREATE TABLE docs (
        doc bytea PRIMARY KEY,
        seq bigint NOT NULL,
        heads bytea NOT NULL,
        chunks integer NOT NULL,
        compacted bigint NOT NULL
    );
    CREATE TABLE doc_chunks (
        doc bytea NOT NULL,
        seq bigint NOT NULL,
        bytes bytea NOT NULL,
        PRIMARY KEY (doc, seq)
    );
    CREATE TABLE feed (
        seq bigint PRIMARY KEY,
        doc bytea NOT NULL
    );
    CREATE TABLE doc_log (
        doc bytea NOT NULL,
        seq bigint NOT NULL,
        heads bytea NOT NULL,
        PRIMARY KEY (doc, seq)
    );
    CREATE TABLE change_received (
        doc bytea NOT NULL,
        change bytea NOT NULL,
        at_ms bigint NOT NULL,
        PRIMARY KEY (doc, change)
    );
    CREATE TABLE record_clock (
        doc bytea PRIMARY KEY,
        times bigint NOT NULL,
        ahead_ms_max bigint NOT NULL,
        claimed_ms bigint NOT NULL
    );
    CREATE TABLE record_index (
        doc bytea PRIMARY KEY,
        kind text NOT NULL,
        area text NOT NULL,
        state text NOT NULL,
        created_at bigint NOT NULL,
        created_by text NOT NULL,
        summarised boolean NOT NULL,
        title text,
        submitted_at bigint,
        conflicts boolean NOT NULL,
        comments integer NOT NULL
    );
    CREATE INDEX record_index_listing ON record_index
        (kind COLLATE "C", area COLLATE "C", state COLLATE "C", created_at, doc);
    CREATE TABLE erased (
        doc bytea PRIMARY KEY,
        kind text NOT NULL,
        area text NOT NULL,
        created_by text NOT NULL
    );
    CREATE TABLE quarantine (
        doc bytea PRIMARY KEY,
        reason text NOT NULL
    );
    CREATE TABLE doc_snapshots (
        doc bytea PRIMARY KEY,
        seq bigint NOT NULL,
        bytes bytea NOT NULL
    );
    "#,
    // Which node wrote each change of a record: a node's write judged on
    // a copy that lacks another node's later write is refused.
    r#"
    ALTER TABLE doc_log ADD COLUMN node text;
    "#,
    // 4: attachments' bytes, as the chunks they were uploaded in (each
    // chunk a row, so an append writes only itself), and the digests
    // whose chunks were checked whole.
    r#"
    CREATE TABLE attachment_chunks (
        sha bytea NOT NULL,
        at bigint NOT NULL,
        bytes bytea NOT NULL,
        written_ms bigint NOT NULL,
        PRIMARY KEY (sha, at)
    );
    CREATE TABLE attachments (
        sha bytea PRIMARY KEY,
        size bigint NOT NULL,
        stored_ms bigint NOT NULL
    );
    CREATE TABLE attachment_owners (
        sha bytea NOT NULL,
        doc bytea NOT NULL,
        PRIMARY KEY (sha, doc)
    );
    "#,
];

/// The newest schema version this binary knows.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the database at `config` to [`VERSION`], or refuses it if it is
/// newer.
pub async fn migrate(config: &tokio_postgres::Config) -> Result<(), StoreError> {
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await?;
    // Its own connection, not the pool's: the session lock goes with it.
    let driver = tokio::spawn(connection);
    let result = migrate_on(&mut client).await;
    drop(client);
    let _ = driver.await;
    result
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS baraza_schema (version integer NOT NULL)")
        .await?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0)::integer FROM baraza_schema",
            &[],
        )
        .await?
        .get(0);
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: VERSION,
        });
    }
    for (at, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = at as i32 + 1;
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO baraza_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::{testing, Pg};

    #[test]
    fn a_second_node_finds_the_schema_migrated_and_a_newer_one_is_refused() {
        let url = testing::database_url();
        let first = Pg::connect(&url).unwrap();
        // Several nodes starting at once: each waits its turn and finds
        // the work done.
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || Pg::connect(&url).map(|_| ()))
            })
            .collect();
        for node in nodes {
            node.join().unwrap().unwrap();
        }
        let versions: Vec<i32> = first
            .run(|c| async move {
                Ok(
                    c.query("SELECT version FROM baraza_schema ORDER BY version", &[])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect(),
                )
            })
            .unwrap();
        assert_eq!(versions, (1..=VERSION).collect::<Vec<_>>());

        // A newer server migrated it further: this one must not touch it.
        first
            .run(|c| async move {
                c.execute(
                    "INSERT INTO baraza_schema (version) VALUES ($1)",
                    &[&(VERSION + 1)],
                )
                .await?;
                Ok(())
            })
            .unwrap();
        match Pg::connect(&url) {
            Err(StoreError::SchemaTooNew { found, known }) => {
                assert_eq!((found, known), (VERSION + 1, VERSION));
            }
            Err(other) => panic!("refused for the wrong reason: {other}"),
            Ok(_) => panic!("a newer schema was opened"),
        }
    }
}
