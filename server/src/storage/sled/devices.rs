//! [`DeviceStore`] over sled.

use crate::storage::devices::{DeviceRecord, DeviceStore, TokenHash};
use crate::storage::store::StoreError;

fn encode(id: &str, record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
        tree: "devices",
        reason: format!("record {id}: {e}"),
    })
}

/// [`DeviceStore`] over sled trees: `devices` (id → record as JSON),
/// `device_tokens` (token hash → id) and `device_acks` (id/record → heads).
#[derive(Clone)]
pub struct SledDeviceStore {
    db: sled::Db,
    devices: sled::Tree,
    tokens: sled::Tree,
    acks: sled::Tree,
}

impl SledDeviceStore {
    /// Opens (creating if needed) the device trees in `db`.
    pub fn open(db: &sled::Db) -> Result<SledDeviceStore, StoreError> {
        Ok(SledDeviceStore {
            db: db.clone(),
            devices: db.open_tree("devices")?,
            tokens: db.open_tree("device_tokens")?,
            acks: db.open_tree("device_acks")?,
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            tree: "devices",
            reason: format!("record {}: {e}", String::from_utf8_lossy(key)),
        })
    }
}

impl DeviceStore for SledDeviceStore {
    fn insert(&self, record: &DeviceRecord, token_hash: &TokenHash) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

        let json = encode(&record.id, record)?;
        let result = (&self.devices, &self.tokens).transaction(|(devices, tokens)| {
            devices.insert(record.id.as_bytes(), json.as_slice())?;
            tokens.insert(&token_hash.0[..], record.id.as_bytes())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            // The closure never aborts, so this arm cannot be taken; it is
            // mapped rather than unwrapped to keep the function total.
            Err(TransactionError::Abort(())) => {
                Err(StoreError::Db("device insert transaction aborted".into()))
            }
        }
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<DeviceRecord>, StoreError> {
        let Some(id) = self.tokens.get(hash.0)? else {
            return Ok(None);
        };
        match self.devices.get(&id)? {
            Some(bytes) => Self::decode(&id, &bytes).map(Some),
            // An index entry without its record: treat as unknown rather
            // than fail, so a half-deleted device can never authenticate.
            None => Ok(None),
        }
    }

    fn remove_token(&self, hash: &TokenHash) -> Result<(), StoreError> {
        self.tokens.remove(hash.0)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        match self.devices.get(id.as_bytes())? {
            Some(bytes) => Self::decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn note_acks(&self, id: &str, acks: &[(String, Vec<String>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (record, heads) in acks {
            batch.insert(
                format!("{id}/{record}").as_bytes(),
                heads.join(",").as_bytes(),
            );
        }
        self.acks.apply_batch(batch)?;
        Ok(())
    }

    fn acks(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let prefix = format!("{id}/");
        let mut out = Vec::new();
        for item in self.acks.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            let record = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let heads = String::from_utf8_lossy(&v)
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            out.push((record, heads));
        }
        Ok(out)
    }

    fn all(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.devices
            .iter()
            .map(|entry| {
                let (key, bytes) = entry?;
                Self::decode(&key, &bytes)
            })
            .collect()
    }

    fn update(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<bool, StoreError> {
        let Some(bytes) = self.devices.get(id.as_bytes())? else {
            return Ok(false);
        };
        let mut record = Self::decode(id.as_bytes(), &bytes)?;
        change(&mut record);
        let json = encode(id, &record)?;
        self.devices.insert(id.as_bytes(), json)?;
        Ok(true)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_rotated_token_replaces_the_old_one_once_used_and_tokens_expire() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let registry = open_sled(&db).unwrap().with_token_lifetime(100);
        let old = registry.add_for_user("tablet", Some("ofc")).unwrap().token;
        let now = unix_now();
        let first = registry.rotate_at(&old, now).unwrap().unwrap();
        assert_eq!(first.expires_at, now + 100);
        // The reply is lost: the tablet still holds the old token, which
        // still works, and rotates again; the unused one is dropped.
        assert!(registry
            .authenticate_at(&old, now)
            .unwrap()
            .device()
            .is_some());
        let second = registry.rotate_at(&old, now).unwrap().unwrap();
        assert!(matches!(
            registry.authenticate_at(&first.token, now).unwrap(),
            Auth::Unknown
        ));
        // The new token's first use ends the old one.
        assert!(registry
            .authenticate_at(&second.token, now)
            .unwrap()
            .device()
            .is_some());
        assert!(matches!(
            registry.authenticate_at(&old, now).unwrap(),
            Auth::Unknown
        ));
        // A token not rotated within its lifetime expires, and cannot be
        // rotated any more.
        assert!(matches!(
            registry.authenticate_at(&second.token, now + 100).unwrap(),
            Auth::Expired
        ));
        assert!(registry
            .rotate_at(&second.token, now + 100)
            .unwrap()
            .is_none());
    }
    use std::sync::Arc;

    use super::*;
    use crate::clock::unix_now;
    use crate::identity::devices::*;

    fn open_sled(db: &sled::Db) -> Result<DeviceRegistry, StoreError> {
        Ok(DeviceRegistry::new(Arc::new(SledDeviceStore::open(db)?)))
    }

    fn registry() -> (tempfile::TempDir, sled::Db, DeviceRegistry) {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let registry = open_sled(&db).unwrap();
        (tmp, db, registry)
    }

    #[test]
    fn a_registered_tablet_authenticates_with_its_token_and_nothing_else() {
        let (_tmp, _db, registry) = registry();
        let tablet = registry.add("  Kibera station tablet 3 ").unwrap();
        assert!(tablet.token.starts_with(TOKEN_PREFIX));
        assert_eq!(tablet.token.len(), TOKEN_PREFIX.len() + 32 + 1 + 64);
        assert!(tablet.token[TOKEN_PREFIX.len()..].starts_with(&tablet.identity.id.to_hex()));
        assert_eq!(tablet.identity.name, "Kibera station tablet 3");

        let who = registry
            .authenticate(&tablet.token)
            .unwrap()
            .device()
            .unwrap();
        assert_eq!(who.id, tablet.identity.id);
        assert_eq!(
            registry
                .authenticate("bz_wrong")
                .unwrap()
                .device()
                .map(|d| d.id),
            None
        );
        assert_eq!(
            registry.authenticate("").unwrap().device().map(|d| d.id),
            None
        );
    }

    #[test]
    fn only_the_token_hash_is_stored() {
        let (_tmp, db, registry) = registry();
        let tablet = registry.add("t").unwrap();
        let secret = &tablet.token[TOKEN_PREFIX.len()..];
        for name in db.tree_names() {
            for entry in db.open_tree(name).unwrap().iter() {
                let (k, v) = entry.unwrap();
                for bytes in [&k[..], &v[..]] {
                    let text = String::from_utf8_lossy(bytes);
                    assert!(!text.contains(secret), "token stored in clear");
                }
            }
        }
        let listed = registry.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].token_hash,
            hex::encode(TokenHash::of(&tablet.token).0)
        );
    }

    #[test]
    fn a_revoked_device_no_longer_authenticates() {
        let (_tmp, _db, registry) = registry();
        let lost = registry.add("lost tablet").unwrap();
        let kept = registry.add("kept tablet").unwrap();
        registry.revoke(&lost.identity.id.to_hex()).unwrap();
        assert!(matches!(
            registry.authenticate(&lost.token).unwrap(),
            Auth::Revoked
        ));
        assert!(registry
            .authenticate(&kept.token)
            .unwrap()
            .device()
            .is_some());
        assert!(matches!(
            registry.revoke("nope"),
            Err(DeviceError::NotFound(_))
        ));
        let revoked: Vec<bool> = registry.list().unwrap().iter().map(|d| d.revoked).collect();
        assert_eq!(revoked.iter().filter(|r| **r).count(), 1);
    }

    #[test]
    fn devices_survive_reopening_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let token = {
            let db = sled::Config::new().path(tmp.path()).open().unwrap();
            open_sled(&db).unwrap().add("t").unwrap().token
        };
        let db = super::super::reopened(|| Ok(sled::open(tmp.path())?));
        let registry = open_sled(&db).unwrap();
        assert!(registry.authenticate(&token).unwrap().device().is_some());
    }

    #[test]
    fn a_device_record_whose_id_does_not_parse_gets_no_identity() {
        // Such an id once gave an empty actor prefix, which every actor
        // matches: a record with it must authenticate as nothing at all.
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let store = Arc::new(SledDeviceStore::open(&db).unwrap());
        let registry = DeviceRegistry::new(store.clone());
        let token = format!("{TOKEN_PREFIX}zz_secret");
        let hash = TokenHash::of(&token);
        let record = DeviceRecord {
            id: "zz-not-hex".into(),
            name: "odd".into(),
            token_hash: hex::encode(hash.0),
            created_at: unix_now(),
            revoked: false,
            retiring: false,
            retired_at: None,
            expires_at: None,
            previous_token_hash: None,
            scope: None,
            user: Some("ofc".into()),
        };
        store.insert(&record, &hash).unwrap();
        match registry.authenticate(&token) {
            Err(DeviceError::BadId { key }) => assert_eq!(key, "zz-not-hex"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn enrolling_again_keeps_the_device_for_its_own_user_only() {
        let (_tmp, _db, registry) = registry();
        let first = registry.add_for_user("tablet", Some("ofc")).unwrap();
        let id = first.identity.id.to_hex();
        let now = unix_now();
        let Reenrolment::Reissued(again) = registry.reenroll(&id, "ofc", now).unwrap() else {
            panic!("the owner re-enrols their device");
        };
        assert_eq!(again.identity.id.to_hex(), id);
        assert!(matches!(
            registry.authenticate(&first.token).unwrap(),
            Auth::Unknown
        ));
        assert_eq!(
            registry
                .authenticate(&again.token)
                .unwrap()
                .device()
                .map(|d| d.id.to_hex()),
            Some(id.clone())
        );
        let refused = |who: &str| match registry.reenroll(&id, who, now).unwrap() {
            Reenrolment::Refused(why) => Some(why),
            Reenrolment::Reissued(_) => None,
        };
        assert_eq!(refused("someone.else"), Some(ReenrolRefusal::OtherUser));
        assert!(matches!(
            registry.reenroll(&"0".repeat(32), "ofc", now).unwrap(),
            Reenrolment::Refused(ReenrolRefusal::UnknownDevice)
        ));
        registry.revoke(&id).unwrap();
        assert_eq!(refused("ofc"), Some(ReenrolRefusal::Revoked));
        // Still revoked, and the token it had is still refused as such.
        assert!(matches!(
            registry.authenticate(&again.token).unwrap(),
            Auth::Revoked
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let (_tmp, _db, registry) = registry();
        for name in ["", "   ", "a\nb", &"x".repeat(NAME_CHARS_MAX + 1)] {
            assert!(matches!(
                registry.add(name),
                Err(DeviceError::InvalidName(_))
            ));
        }
        assert!(registry.add(&"é".repeat(NAME_CHARS_MAX)).is_ok());
    }
}
