//! The PostgreSQL backend, for several server nodes on one database: the
//! storage traits over tables in one database, the schema and its
//! versioned migrations, and the connection pool. Nothing outside this
//! folder names a PostgreSQL type.
//!
//! Every storage trait is here: documents and the feed (see [`docs`] for
//! how the feed stays in order across nodes), users, devices (tokens,
//! acknowledged heads), review sessions, login throttles, the audit
//! log and attachments' bytes.
//!
//! The storage traits are synchronous, called from blocking contexts of
//! the server's runtime and from plain threads. [`Pg`] owns a small tokio
//! runtime of its own that drives the connections; a call hands its query
//! to that runtime and waits on a channel. So no call ever starts or
//! blocks on a runtime from inside another, whichever thread makes it.
//!
//! Every statement commits before a call returns, with PostgreSQL's
//! `synchronous_commit` as configured (on by default): acknowledged means
//! on the database server's disk. Writes that the traits allow to be lazy
//! (a failed login, so a wrong password is not slower than an unknown
//! name; the heads last acknowledged to a device, noted after each ack)
//! commit with `synchronous_commit` off for that transaction only; they
//! reach the disk with the next commit that waits for it, since the WAL
//! is flushed in order.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::storage::store::StoreError;
use crate::storage::{Backend, Storage};

mod attachments;
mod audit;
mod devices;
mod docs;
pub mod import;
mod notify;
mod schema;
mod sessions;
mod throttles;
mod users;

pub use attachments::PgAttachments;
pub use audit::PgAuditStore;
pub use devices::PgDeviceStore;
pub use docs::PgStore;
pub use sessions::PgSessionStore;
pub use throttles::PgThrottles;
pub use users::PgUserStore;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Db(Box::new(e))
    }
}

/// A failure of the backend itself, not of a query.
#[derive(Debug, thiserror::Error)]
enum PgError {
    #[error("the store URL does not parse as a PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("could not start the database runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("could not make the connection pool: {0}")]
    Pool(String),
    #[error("the database runtime stopped before answering")]
    Stopped,
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Db(Box::new(e))
    }
}

/// Connections at most per node: enough for the committer, the
/// compactor and the blocking work slots, few enough that a few nodes fit
/// PostgreSQL's default `max_connections` of 100.
const POOL_SIZE: usize = 16;

/// Every store in the database at `url`, for a serving node, a tool or
/// an admin command: any number of them at once.
pub fn open(url: &str) -> Result<Storage, StoreError> {
    bundle(Pg::connect(url)?)
}

fn bundle(pg: Arc<Pg>) -> Result<Storage, StoreError> {
    Ok(Storage {
        docs: Arc::new(PgStore::open(pg.clone())?),
        users: Arc::new(PgUserStore::new(pg.clone())),
        devices: Arc::new(PgDeviceStore::new(pg.clone())),
        audit: Arc::new(PgAuditStore::new(pg.clone())),
        sessions: Arc::new(PgSessionStore::new(pg.clone())),
        throttles: Arc::new(PgThrottles::new(pg.clone())),
        attachments: Arc::new(PgAttachments::new(pg.clone())),
        backend: pg,
    })
}

impl Backend for Pg {
    fn flush(&self) -> Result<(), StoreError> {
        // Every call commits before it returns.
        Ok(())
    }

    fn listen(&self) -> Option<std::sync::mpsc::Receiver<crate::storage::notices::Notice>> {
        let runtime = self.runtime.as_ref()?;
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(notify::listen(self.config.clone(), self.node.clone(), tx));
        Some(rx)
    }
}

/// One database: a pool of connections and the runtime that drives them.
pub struct Pg {
    pool: Pool,
    config: tokio_postgres::Config,
    runtime: Option<tokio::runtime::Runtime>,
    /// This handle's id among the database's writers, drawn when it
    /// connects: what it writes is marked with it, and what it says to
    /// other nodes is signed with it so it passes over its own.
    node: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        // A runtime dropped from inside another's worker panics; this may
        // be the last handle, dropped wherever the server lets go of it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Pg {
    /// Connects to the database at `url` (`postgres://USER@HOST[:PORT]/DB`;
    /// the password from the URL or, when it has none, `PGPASSWORD`) and
    /// migrates its schema to this binary's version, refusing a newer one.
    pub fn connect(url: &str) -> Result<Arc<Pg>, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("baraza-server");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("baraza-pg")
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        let pg = Pg {
            pool,
            config,
            runtime: Some(runtime),
            node: hex::encode(rand::random::<[u8; 8]>()),
        };
        pg.migrate()?;
        Ok(Arc::new(pg))
    }

    /// Runs `work` on a pooled connection on the backend's runtime and
    /// waits for its answer.
    fn run<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.block(async move {
            let client = pool.get().await?;
            work(client).await
        })
    }

    /// Runs `work` on the backend's runtime and waits for its answer.
    fn block<T, Fut>(&self, work: Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or(PgError::Stopped)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| PgError::Stopped)?
    }

    /// This handle's id among the database's writers.
    fn node(&self) -> &str {
        &self.node
    }

    /// Brings the schema to this binary's version (see [`schema`]).
    fn migrate(&self) -> Result<(), StoreError> {
        let config = self.config.clone();
        self.block(async move { schema::migrate(&config).await })
    }
}

/// Seconds or milliseconds kept as PostgreSQL's `bigint`: times and
/// positions are far below 2^63, and one beyond it is held at the top
/// rather than wrapped.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` read back as what it was written from (a negative one,
/// which no write makes, reads as 0).
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A database of its own for each test, in the throwaway cluster
    //! `scripts/with-postgres` starts (`scripts/test` runs every test
    //! beside one).

    use std::sync::Arc;

    use super::Pg;

    /// A new, empty database, connected and migrated.
    pub fn database() -> Arc<Pg> {
        Pg::connect(&database_url()).expect("connect to the test database")
    }

    /// The URL of a new, empty database.
    pub fn database_url() -> String {
        let cluster = std::env::var("BARAZA_TEST_PG").expect(
            "BARAZA_TEST_PG is not set: run the tests through scripts/test, \
             or as `scripts/with-postgres cargo test ...`",
        );
        let name = format!("t_{}", hex::encode(rand::random::<[u8; 8]>()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&cluster, tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create a test database");
            drop(client);
            let _ = driver.await;
        });
        match cluster.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("BARAZA_TEST_PG has no database part: {cluster}"),
        }
    }
}
