//! [`DeviceStore`] in PostgreSQL: tables `devices` (id → the record as
//! JSON), `device_tokens` (token hash → id) and `device_acks` (id,
//! record → heads acknowledged, comma-separated).

use std::sync::Arc;

use crate::storage::devices::{DeviceRecord, DeviceStore, TokenHash};
use crate::storage::postgres::{notify, Pg};
use crate::storage::store::StoreError;

/// Times an update is tried again when another node changed the same
/// device between its read and its write.
const UPDATE_TRIES: usize = 32;

/// Devices in PostgreSQL.
pub struct PgDeviceStore {
    pg: Arc<Pg>,
}

impl PgDeviceStore {
    /// The devices of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgDeviceStore {
        PgDeviceStore { pg }
    }
}

fn encode(record: &DeviceRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|e| StoreError::Corrupt {
        tree: "devices",
        reason: format!("record {}: {e}", record.id),
    })
}

fn decode(id: &str, body: &str) -> Result<DeviceRecord, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        tree: "devices",
        reason: format!("record {id}: {e}"),
    })
}

impl DeviceStore for PgDeviceStore {
    fn insert(&self, record: &DeviceRecord, token_hash: &TokenHash) -> Result<(), StoreError> {
        let body = encode(record)?;
        let id = record.id.clone();
        let hash = token_hash.0.to_vec();
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO devices (id, body) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                )
                .await?,
                &[&id, &body],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO device_tokens (hash, id) VALUES ($1, $2) \
                 ON CONFLICT (hash) DO UPDATE SET id = EXCLUDED.id",
                )
                .await?,
                &[&hash, &id],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<DeviceRecord>, StoreError> {
        let hash = hash.0.to_vec();
        // A token row without its device finds nothing: a half-deleted
        // device can never authenticate.
        self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached(
                        "SELECT d.id, d.body FROM device_tokens t JOIN devices d ON d.id = t.id \
                     WHERE t.hash = $1",
                    )
                    .await?,
                    &[&hash],
                )
                .await?;
            row.map(|r| decode(r.get(0), r.get(1))).transpose()
        })
    }

    fn all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.pg.run(|c| async move {
            c.query(
                &c.prepare_cached("SELECT id, body FROM devices ORDER BY id")
                    .await?,
                &[],
            )
            .await?
            .iter()
            .map(|r| decode(r.get(0), r.get(1)))
            .collect()
        })
    }

    fn remove_token(&self, hash: &TokenHash) -> Result<(), StoreError> {
        let hash = hash.0.to_vec();
        self.pg.run(move |c| async move {
            c.execute(
                &c.prepare_cached("DELETE FROM device_tokens WHERE hash = $1")
                    .await?,
                &[&hash],
            )
            .await?;
            Ok(())
        })
    }

    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let id = id.to_string();
        self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT body FROM devices WHERE id = $1")
                        .await?,
                    &[&id],
                )
                .await?;
            row.map(|r| decode(&id, r.get(0))).transpose()
        })
    }

    fn note_acks(&self, id: &str, acks: &[(String, Vec<String>)]) -> Result<(), StoreError> {
        // One row a record, the last heads named for it: one INSERT may
        // not update a row twice.
        let last: std::collections::BTreeMap<&str, String> = acks
            .iter()
            .map(|(record, heads)| (record.as_str(), heads.join(",")))
            .collect();
        if last.is_empty() {
            return Ok(());
        }
        let (records, heads): (Vec<String>, Vec<String>) =
            last.into_iter().map(|(r, h)| (r.to_string(), h)).unzip();
        let id = id.to_string();
        self.pg.run(move |c| async move {
            // Bookkeeping for the report on a revoked device, not the
            // record: it need not wait for its own disk flush, and becomes
            // durable with the next commit that does (the WAL is flushed in
            // order), as sled's note becomes durable with its next flush.
            // The setting is local to this statement's transaction.
            c.execute(
                &c.prepare_cached(
                    "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)) \
                     INSERT INTO device_acks (id, record, heads) \
                     SELECT $1, a.record, a.heads FROM lazy, \
                         unnest($2::text[], $3::text[]) AS a(record, heads) \
                     ON CONFLICT (id, record) DO UPDATE SET heads = EXCLUDED.heads",
                )
                .await?,
                &[&id, &records, &heads],
            )
            .await?;
            Ok(())
        })
    }

    fn acks(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let id = id.to_string();
        self.pg.run(move |c| async move {
            Ok(c.query(
                &c.prepare_cached(
                    "SELECT record, heads FROM device_acks WHERE id = $1 ORDER BY record",
                )
                .await?,
                &[&id],
            )
            .await?
            .iter()
            .map(|r| {
                let heads: &str = r.get(1);
                let heads = heads
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect();
                (r.get(0), heads)
            })
            .collect())
        })
    }

    fn update(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<bool, StoreError> {
        // Read, change here, and write only if nobody wrote in between
        // (compare and swap on the stored text), so a revocation through
        // one node is never overwritten by a rotation through another.
        for _ in 0..UPDATE_TRIES {
            let key = id.to_string();
            let old: Option<String> = self.pg.run(move |c| async move {
                let row = c
                    .query_opt(
                        &c.prepare_cached("SELECT body FROM devices WHERE id = $1")
                            .await?,
                        &[&key],
                    )
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })?;
            let Some(old) = old else {
                return Ok(false);
            };
            let mut record = decode(id, &old)?;
            change(&mut record);
            let new = encode(&record)?;
            let key = id.to_string();
            let said = notify::device(self.pg.node());
            let swapped = self.pg.run(move |mut c| async move {
                let tx = c.transaction().await?;
                let swapped = tx
                    .execute(
                        &tx.prepare_cached(
                            "UPDATE devices SET body = $3 WHERE id = $1 AND body = $2",
                        )
                        .await?,
                        &[&key, &old, &new],
                    )
                    .await?;
                // Heard by every other node once committed: a device
                // revoked here is cut off there at once.
                notify::say(&tx, &said).await?;
                tx.commit().await?;
                Ok(swapped)
            })?;
            if swapped == 1 {
                return Ok(true);
            }
        }
        Err(StoreError::Db(
            format!("device {id} kept changing under its update").into(),
        ))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every call above commits before it returns.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use crate::identity::devices::{Auth, DeviceRegistry};
    use crate::storage::postgres::testing;

    fn node(url: &str) -> DeviceRegistry {
        DeviceRegistry::new(Arc::new(PgDeviceStore::new(Pg::connect(url).unwrap())))
    }

    #[test]
    fn a_device_enrolled_on_one_node_authenticates_on_another_until_revoked() {
        let url = testing::database_url();
        let (a, b) = (node(&url), node(&url));
        let added = a.add_for_user("tablet 7", Some("ofc.otieno")).unwrap();
        let now = unix_now();
        let Some(device) = b.authenticate_at(&added.token, now).unwrap().device() else {
            panic!("not authenticated on the second node");
        };
        assert_eq!(device.id, added.identity.id);
        assert!(matches!(
            b.authenticate_at("not a token", now).unwrap(),
            Auth::Unknown
        ));
        // A rotation through one node, the new token's first use through
        // the other: the old token ends everywhere.
        let rotated = a.rotate_at(&added.token, now).unwrap().unwrap();
        assert!(b
            .authenticate_at(&rotated.token, now)
            .unwrap()
            .device()
            .is_some());
        assert!(matches!(
            a.authenticate_at(&added.token, now).unwrap(),
            Auth::Unknown
        ));
        // Revoked through one node, refused at once on the other.
        b.revoke(&device.id.to_hex()).unwrap();
        assert!(matches!(
            a.authenticate_at(&rotated.token, now).unwrap(),
            Auth::Revoked
        ));
        assert_eq!(a.list().unwrap().len(), 1);
    }

    #[test]
    fn acknowledged_heads_are_kept_per_device_and_record() {
        let store = PgDeviceStore::new(testing::database());
        let ack = |record: &str, heads: &[&str]| {
            (
                record.to_string(),
                heads.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            )
        };
        store
            .note_acks("d1", &[ack("r1", &["aa", "bb"]), ack("r2", &[])])
            .unwrap();
        // Named twice in one batch: the last heads stay.
        store
            .note_acks("d1", &[ack("r1", &["xx"]), ack("r1", &["cc"])])
            .unwrap();
        store.note_acks("d2", &[ack("r1", &["dd"])]).unwrap();
        store.note_acks("d2", &[]).unwrap();
        assert_eq!(
            store.acks("d1").unwrap(),
            vec![("r1".into(), vec!["cc".into()]), ("r2".into(), vec![])]
        );
    }

    #[test]
    fn concurrent_updates_from_two_nodes_each_land() {
        let url = testing::database_url();
        let stores: Vec<Arc<PgDeviceStore>> = (0..2)
            .map(|_| Arc::new(PgDeviceStore::new(Pg::connect(&url).unwrap())))
            .collect();
        let record = DeviceRecord {
            id: "00112233445566778899aabbccddeeff".into(),
            name: "tablet".into(),
            token_hash: String::new(),
            created_at: 0,
            revoked: false,
            retiring: false,
            retired_at: None,
            expires_at: None,
            previous_token_hash: None,
            scope: None,
            user: None,
        };
        stores[0].insert(&record, &TokenHash([1; 32])).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let store = stores[i % 2].clone();
                let id = record.id.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        assert!(store.update(&id, &|r| r.created_at += 1).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(stores[1].get(&record.id).unwrap().unwrap().created_at, 20);
        assert!(!stores[1].update("nobody", &|r| r.revoked = true).unwrap());
    }
}
