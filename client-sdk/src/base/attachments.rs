//! Attachments on the tablet: a photo, a recording or a scanned page is
//! kept sealed in the store first, then referred to from the record by
//! its digest (one change, synced as any other), and queued for its own
//! upload; the net layer carries the queue out and fetches others'
//! attachments on request.

use baraza_protocol::DocId;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use baraza_records::{ops, AttachmentRef, FieldValue, Header};

use super::client::BaseClient;
use super::store::{AttachmentState, UploadState};
use crate::error::ClientError;

/// One attachment of a record, as the tablet holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The reference in the record: digest, size, type, name, when, who.
    pub reference: AttachmentRef,
    /// Bytes of it on this tablet.
    pub held_bytes: u64,
    /// All of them are here, checked against the digest.
    pub complete: bool,
    /// Where its upload stands.
    pub upload: UploadState,
}

/// Which attachments a tablet fetches by itself after each sync, so they
/// are there when someone opens the record offline (a supervisor's
/// tablet taking the photos of submitted records, say). Every list that
/// is given must match; an empty `kinds` fetches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PrefetchPolicy {
    /// Kinds of record whose attachments are fetched.
    pub kinds: Vec<baraza_records::Kind>,
    /// Review states the record must be in (empty: any).
    #[serde(default)]
    pub states: Vec<baraza_records::ReviewState>,
    /// Media type prefixes (`image/`; empty: any).
    #[serde(default)]
    pub mime_prefixes: Vec<String>,
    /// Largest attachment fetched, in bytes (None: any size).
    #[serde(default)]
    pub size_max_bytes: Option<u64>,
}

impl PrefetchPolicy {
    fn wants(
        &self,
        kind: baraza_records::Kind,
        state: baraza_records::ReviewState,
        r: &AttachmentRef,
    ) -> bool {
        self.kinds.contains(&kind)
            && (self.states.is_empty() || self.states.contains(&state))
            && (self.mime_prefixes.is_empty()
                || self
                    .mime_prefixes
                    .iter()
                    .any(|p| r.mime.starts_with(p.as_str())))
            && self.size_max_bytes.is_none_or(|max| r.size_bytes <= max)
    }
}

/// The setting the policy is kept under.
const PREFETCH: &str = "prefetch";

pub(crate) fn parse_id(id: &str) -> Result<DocId, ClientError> {
    id.parse().map_err(|_| ClientError::BadId(id.to_string()))
}

pub(crate) fn parse_sha(sha: &str) -> Result<[u8; 32], ClientError> {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(sha, &mut out) {
        Ok(()) if baraza_records::attachment::is_digest(sha) => Ok(out),
        _ => Err(ClientError::BadEdit {
            field: "sha256".into(),
            message: format!("{sha:?} is not an attachment's SHA-256 (64 lowercase hex digits)"),
        }),
    }
}

impl BaseClient {
    fn record_and_kind(
        &self,
        id: DocId,
    ) -> Result<(automerge::Automerge, baraza_records::Kind), ClientError> {
        let doc = self
            .store
            .load(id)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        let kind = Header::read(&doc)
            .map_err(|e| ClientError::Corrupt {
                what: "record",
                reason: e.to_string(),
            })?
            .kind;
        Ok((doc, kind))
    }

    /// Attaches `bytes` to list `field` of record `id` (`photos`, `audio`,
    /// `attendance_sheet`, `documents`): the bytes are sealed in the store
    /// and made durable first, then the record gets the reference, and the
    /// upload is queued. Returns the reference.
    pub fn attach(
        &self,
        id: &str,
        field: &str,
        bytes: &[u8],
        mime: &str,
        name: &str,
    ) -> Result<AttachmentRef, ClientError> {
        let doc_id = parse_id(id)?;
        let (_, kind) = self.record_and_kind(doc_id)?;
        if !baraza_records::attachment::is_attachment_list(kind, field) {
            let lists = baraza_records::attachment::attachment_lists(kind);
            return Err(ClientError::BadEdit {
                field: field.to_string(),
                message: format!(
                    "a {} record has no attachment list {field:?}; its attachment lists are {}",
                    kind.name(),
                    lists.join(", ")
                ),
            });
        }
        if mime
            .split_once('/')
            .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
        {
            return Err(ClientError::BadEdit {
                field: format!("{field}.mime"),
                message: format!("{mime:?} is not a media type such as image/jpeg"),
            });
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let sha256 = hex::encode(digest);
        let user = self.store.setting("user")?.unwrap_or_default();
        let reference = AttachmentRef {
            field: field.to_string(),
            sha256: sha256.clone(),
            size_bytes: bytes.len() as u64,
            mime: mime.to_string(),
            name: name.to_string(),
            created_at_ms: super::client::now_ms(),
            created_by: user,
        };
        // Bytes before the reference: a reference on the tablet always
        // has its bytes, whatever stops the app between the two.
        self.store.put_attachment(doc_id, &digest, bytes)?;
        let size = i64::try_from(bytes.len()).map_err(|_| ClientError::BadEdit {
            field: field.to_string(),
            message: "too large".into(),
        })?;
        let values = [
            ("sha256", FieldValue::Str(sha256)),
            ("size_bytes", FieldValue::Int(size)),
            ("mime", FieldValue::Str(reference.mime.clone())),
            ("name", FieldValue::Str(reference.name.clone())),
            ("created_at", FieldValue::Time(reference.created_at_ms)),
            ("created_by", FieldValue::Str(reference.created_by.clone())),
        ];
        self.edit(doc_id, false, |doc, at| {
            ops::append(doc, field, &values, at)?;
            Ok(())
        })?;
        self.attachments_added.notify_one();
        Ok(reference)
    }

    /// Every attachment record `id` refers to, with what the tablet holds
    /// of it and where its upload stands.
    pub fn attachments(&self, id: &str) -> Result<Vec<Attachment>, ClientError> {
        let doc_id = parse_id(id)?;
        let (doc, kind) = self.record_and_kind(doc_id)?;
        baraza_records::attachment::refs(&doc, kind)
            .into_iter()
            .map(|reference| {
                let digest = parse_sha(&reference.sha256)?;
                let state = self.store.attachment_state(doc_id, &digest)?;
                let held_bytes = self.store.attachment_held(doc_id, &digest)?;
                let (upload, complete) = match state {
                    Some(AttachmentState { upload, complete }) => (upload, complete),
                    None => (UploadState::Remote, false),
                };
                Ok(Attachment {
                    reference,
                    held_bytes,
                    complete,
                    upload,
                })
            })
            .collect()
    }

    /// The bytes of an attachment of record `id`, if all of them are on
    /// the tablet (attached here, or fetched).
    pub fn attachment_bytes(&self, id: &str, sha256: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let doc_id = parse_id(id)?;
        let digest = parse_sha(sha256)?;
        match self.store.attachment_state(doc_id, &digest)? {
            Some(state) if state.complete => {}
            _ => return Ok(None),
        }
        let bytes = self.store.read_attachment(doc_id, &digest, 0, usize::MAX)?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != digest {
            return Err(ClientError::Corrupt {
                what: "attachments",
                reason: format!("the bytes of {sha256} do not hash to it"),
            });
        }
        Ok(Some(bytes))
    }

    /// Sets which attachments this tablet fetches by itself after each
    /// sync (kept in the store; `None` fetches only on request).
    pub fn set_prefetch(&self, policy: Option<&PrefetchPolicy>) -> Result<(), ClientError> {
        let text = match policy {
            Some(p) => serde_json::to_string(p).map_err(|e| ClientError::Corrupt {
                what: "setting",
                reason: e.to_string(),
            })?,
            None => String::new(),
        };
        self.store.set_setting(PREFETCH, &text)
    }

    /// The prefetch policy in force, if any.
    pub fn prefetch(&self) -> Result<Option<PrefetchPolicy>, ClientError> {
        match self.store.setting(PREFETCH)? {
            Some(text) if !text.is_empty() => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| ClientError::Corrupt {
                        what: "setting",
                        reason: e.to_string(),
                    })
            }
            _ => Ok(None),
        }
    }

    /// The attachments the prefetch policy wants that are not whole on
    /// the tablet yet: (record id, reference).
    pub(crate) fn prefetch_wanted(&self) -> Result<Vec<(String, AttachmentRef)>, ClientError> {
        let Some(policy) = self.prefetch()? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in self.store.ids()? {
            let Some(doc) = self.store.load(id)? else {
                continue;
            };
            let Ok(header) = Header::read(&doc) else {
                continue;
            };
            if !policy.kinds.contains(&header.kind) {
                continue;
            }
            let state = baraza_records::review_state(&doc);
            for r in baraza_records::attachment::refs(&doc, header.kind) {
                if !policy.wants(header.kind, state, &r) {
                    continue;
                }
                let digest = parse_sha(&r.sha256)?;
                let whole = self
                    .store
                    .attachment_state(id, &digest)?
                    .is_some_and(|s| s.complete);
                if !whole {
                    out.push((id.to_string(), r));
                }
            }
        }
        Ok(out)
    }

    /// Deletes an attachment from record `id`: the reference goes from
    /// the record (one change, synced), the bytes and the queued upload
    /// from the tablet. What an app offers for an attachment the server
    /// refused.
    pub fn delete_attachment(&self, id: &str, sha256: &str) -> Result<(), ClientError> {
        let doc_id = parse_id(id)?;
        let digest = parse_sha(sha256)?;
        let (doc, kind) = self.record_and_kind(doc_id)?;
        // Every list that names the bytes: refs names each digest once,
        // so the kind's root lists are looked in as well.
        let mut paths: Vec<String> = Vec::new();
        for r in baraza_records::attachment::refs(&doc, kind) {
            if r.sha256 == sha256 && !paths.contains(&r.field) {
                paths.push(r.field);
            }
        }
        for field in baraza_records::attachment::attachment_lists(kind) {
            if !field.contains(".N.") && !paths.contains(&field) {
                paths.push(field);
            }
        }
        let places: Vec<(String, Vec<usize>)> = paths
            .into_iter()
            .map(|p| {
                let at = baraza_records::attachment::positions(&doc, &p, sha256);
                (p, at)
            })
            .filter(|(_, at)| !at.is_empty())
            .collect();
        if !places.is_empty() {
            self.edit(doc_id, false, |doc, at| {
                for (field, positions) in &places {
                    for index in positions {
                        ops::remove(doc, field, *index, at)?;
                    }
                }
                Ok(())
            })?;
        }
        self.store.remove_attachment(doc_id, &digest)
    }
}
