//! A tablet as the tests hold it: a real SDK [`Client`] in its own
//! directory, sealed under its own random key, registered on the server as
//! its own device, with syncs that fail the test instead of hanging it.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use baraza_client::{Client, Field, SyncReport};

use crate::server_process::{user_for, ServerProcess};

/// How long one `sync_once` of a few hundred records may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// A tablet: an SDK [`Client`] with its own data directory, registered on
/// the server as its own device. Derefs to the `Client`.
pub struct Tablet {
    name: String,
    client: Client,
    token: String,
    _dir: tempfile::TempDir,
}

/// A random store key, as an app would keep in the platform keystore.
pub fn new_key() -> [u8; 32] {
    rand::random()
}

impl Tablet {
    /// A new device acting for a supervisor of [`TEST_AREAS`]: registers
    /// it on `server` and configures a fresh store sealed under a random key.
    pub fn new(server: &ServerProcess, name: &str) -> Tablet {
        let token = server.add_device(name);
        let tablet = Tablet::with_token(server, name, token);
        tablet
            .client
            .set_identity(&user_for(name), "unassigned")
            .expect("set the tablet's user");
        tablet
    }

    /// A new device acting for `user` (who must exist), filing new records
    /// in `area`.
    pub fn for_user(server: &ServerProcess, name: &str, user: &str, area: &str) -> Tablet {
        let token = server.add_device_for(name, user);
        let tablet = Tablet::with_token(server, name, token);
        tablet
            .client
            .set_identity(user, area)
            .expect("set the tablet's user");
        tablet
    }

    fn with_token(server: &ServerProcess, name: &str, token: String) -> Tablet {
        let dir = tempfile::tempdir().expect("a tablet directory");
        let client = Client::open(dir.path(), &new_key()).expect("open the tablet store");
        let tablet = Tablet {
            name: name.to_string(),
            client,
            token,
            _dir: dir,
        };
        tablet.point_at(server);
        tablet
    }

    /// Configures the tablet for `server`'s current address (after a
    /// restart the port changes) with its existing token.
    pub fn point_at(&self, server: &ServerProcess) {
        self.client
            .configure(&server.url(), Some(&server.ca_path()), &self.token)
            .expect("configure the tablet");
    }

    /// The device's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Syncs once, failing the test if the sync fails or takes longer than
    /// [`SYNC_TIMEOUT`].
    pub async fn sync(&self) -> SyncReport {
        self.sync_within(SYNC_TIMEOUT).await
    }

    /// Syncs once with an explicit time limit.
    pub async fn sync_within(&self, limit: Duration) -> SyncReport {
        self.sync_heard_by(&baraza_client::NoListener, limit).await
    }

    /// Syncs once with an explicit time limit, its events going to
    /// `listener`.
    pub async fn sync_heard_by(
        &self,
        listener: &dyn baraza_client::SyncListener,
        limit: Duration,
    ) -> SyncReport {
        match tokio::time::timeout(limit, self.client.sync_once(listener)).await {
            Ok(Ok(report)) => report,
            Ok(Err(err)) => panic!("{} could not sync: {err}", self.name),
            Err(_) => panic!("{}'s sync did not finish within {limit:?}", self.name),
        }
    }

    /// One field of a record, which must exist.
    pub fn field(&self, id: &str, name: &str) -> Field {
        let record = self.client.get(id).expect("the record is on the tablet");
        record
            .fields
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} has no field {name:?} in {id}", self.name))
    }

    /// The value a field shows, or None if the record or field is not
    /// (yet) on this tablet.
    pub fn value(&self, id: &str, name: &str) -> Option<String> {
        let record = self.client.get(id).ok()?;
        record
            .fields
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    /// Every record held, with its heads.
    pub fn all_heads(&self) -> BTreeMap<String, Vec<String>> {
        self.client
            .list()
            .expect("list records")
            .into_iter()
            .map(|id| {
                let heads = self.client.heads(&id).expect("heads of a listed record");
                (id, heads)
            })
            .collect()
    }
}

impl Deref for Tablet {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
