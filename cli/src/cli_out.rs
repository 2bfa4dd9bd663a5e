//! What the `baraza` CLI prints: records in full (nested lists and maps
//! indented as text, real arrays and objects as JSON), times in ISO 8601
//! with the local offset, devices by name. Standard output goes through
//! [`outln!`], so a reader that went away (`baraza list | head -1`) ends
//! the program quietly instead of in a panic.

use std::fmt::Write as _;

use baraza_client::{Attachment, Client, Content, Record, Summary, UploadState};
use chrono::{Local, SecondsFormat, TimeZone};
use serde_json::{json, Map, Value as Json};

/// Standard output could not be written (its reader closed it, say).
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

impl StdoutError {
    /// True when the reader went away: not worth an error message, since
    /// whoever would read it is gone (`| head`).
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `println!` that returns a [`StdoutError`] instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli_out::StdoutError)?
    }};
}
pub(crate) use outln;

/// A time in milliseconds since the epoch, in ISO 8601 with the local
/// offset (`2026-12-01T16:41:53+03:00`); the raw number if out of range.
pub fn iso_ms(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, false),
        None => format!("{ms} ms since 1970"),
    }
}

/// How a device is named to a person: its registered name in quotes, or
/// its id when this tablet was never told the name.
pub fn device_label(client: &Client, actor: &str) -> anyhow::Result<String> {
    let id = actor.get(..32).unwrap_or(actor);
    Ok(match client.device_name(actor)? {
        Some(name) => format!("{name:?}"),
        None => format!("device {id}"),
    })
}

/// The device part of an actor id and its name, for JSON.
fn device_json(client: &Client, actor: &str) -> anyhow::Result<(Json, Json)> {
    let id = actor.get(..32).unwrap_or(actor);
    let name = client.device_name(actor)?;
    Ok((json!(id), json!(name)))
}

/// `record` as indented text.
pub fn record_text(client: &Client, record: &Record) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(out, "record {}", record.id);
    if let Some(h) = &record.header {
        let _ = writeln!(out, "  kind: {}", h.kind.name());
        let _ = writeln!(out, "  area: {}", h.area);
        let _ = writeln!(
            out,
            "  created: {} by {} on {}",
            iso_ms(h.created_at),
            h.created_by_user,
            device_label(client, &h.created_by_device)?
        );
    }
    if let Some(r) = &record.rejected {
        match &r.rule {
            Some(rule) => {
                let _ = writeln!(out, "  REJECTED by rule {rule}: {}", r.message);
            }
            None => {
                let _ = writeln!(out, "  REFUSED ({}): {}", r.code, r.message);
            }
        }
        let _ = writeln!(out, "  (kept on this device; not sent again until edited)");
    } else if record.unacknowledged {
        let _ = writeln!(
            out,
            "  synced: no (changes not yet acknowledged by the server)"
        );
    } else {
        let _ = writeln!(out, "  synced: yes");
    }
    let _ = writeln!(out, "  review: {}", record.review_state);
    for c in &record.review_comments {
        let _ = writeln!(out, "    {} at {}: {}", c.by, iso_ms(c.at), c.text);
    }
    let attached = client.attachments(&record.id)?;
    let lists = attachment_lists(record);
    for f in record
        .fields
        .iter()
        .filter(|f| f.name != "review" && !lists.contains(&f.name.as_str()))
    {
        let kind = if f.text { " (text)" } else { "" };
        render(&mut out, 1, &format!("{}{kind}", f.name), &f.content);
        for other in &f.conflicts {
            let _ = writeln!(out, "    CONFLICT: also set to {other}");
        }
    }
    if attached.is_empty() {
        if !lists.is_empty() {
            let _ = writeln!(out, "  attachments: (none)");
        }
    } else {
        let _ = writeln!(out, "  attachments:");
        for a in &attached {
            let r = &a.reference;
            let _ = writeln!(
                out,
                "    {}: {} ({}, {}) {}",
                r.field,
                r.name,
                r.mime,
                size_text(r.size_bytes),
                upload_text(a)
            );
            let _ = writeln!(out, "      sha256 {}", r.sha256);
        }
    }
    Ok(out)
}

/// The record's fields that are attachment lists, shown as attachments.
fn attachment_lists(record: &Record) -> Vec<&'static str> {
    record
        .header
        .as_ref()
        .map(|h| {
            h.kind
                .fields()
                .iter()
                .filter(|f| baraza_records::schema::is_attachments(f.ty))
                .map(|f| f.name)
                .collect()
        })
        .unwrap_or_default()
}

/// A size for people: bytes, kB or MB (decimal, as phones show them).
pub fn size_text(bytes: u64) -> String {
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

fn upload_text(a: &Attachment) -> String {
    match &a.upload {
        UploadState::Pending => "waiting to upload".into(),
        UploadState::Uploaded => "uploaded".into(),
        UploadState::Refused {
            limit: Some(limit),
            message,
            ..
        } => format!("REFUSED by limit {limit}: {message} (kept here; `baraza detach` deletes it)"),
        UploadState::Refused { code, message, .. } => {
            format!("REFUSED ({code}): {message} (kept here; `baraza detach` deletes it)")
        }
        UploadState::Remote if a.complete => "on the server, fetched".into(),
        UploadState::Remote => "on the server (`baraza fetch` to read it)".into(),
    }
}

/// One `key: value` line, or a key and its nested lines below it.
fn render(out: &mut String, depth: usize, key: &str, content: &Content) {
    let pad = "  ".repeat(depth);
    match content {
        Content::List(items) if items.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: (none)");
        }
        Content::Map(entries) if entries.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: (empty)");
        }
        Content::List(items) => {
            let n = items.len();
            let _ = writeln!(
                out,
                "{pad}{key}: ({n} item{})",
                if n == 1 { "" } else { "s" }
            );
            for item in items {
                render_item(out, depth + 1, item);
            }
        }
        Content::Map(entries) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (k, v) in entries {
                render(out, depth + 1, k, v);
            }
        }
        scalar => {
            let text = scalar_text(scalar);
            // Continuation lines of a multi-line text line up under its start.
            let cont = format!("\n{pad}{}", " ".repeat(key.chars().count() + 2));
            let _ = writeln!(out, "{pad}{key}: {}", text.replace('\n', &cont));
        }
    }
}

/// A list item: `- ` before its first line, its other lines under it.
fn render_item(out: &mut String, depth: usize, item: &Content) {
    let pad = "  ".repeat(depth);
    match item {
        Content::Map(entries) if !entries.is_empty() => {
            let mut inner = String::new();
            for (k, v) in entries {
                render(&mut inner, depth + 1, k, v);
            }
            // The first entry's indent becomes the dash.
            let dashed = inner.replacen(&format!("{pad}  "), &format!("{pad}- "), 1);
            out.push_str(&dashed);
        }
        Content::List(_) | Content::Map(_) => {
            let mut inner = String::new();
            render(&mut inner, depth, "-", item);
            out.push_str(&inner.replacen("-: ", "- ", 1));
        }
        scalar => {
            let _ = writeln!(out, "{pad}- {}", scalar_text(scalar));
        }
    }
}

fn scalar_text(content: &Content) -> String {
    match content {
        Content::Str(s) | Content::Text(s) | Content::Other(s) => s.clone(),
        Content::Int(i) => i.to_string(),
        Content::Bool(b) => b.to_string(),
        Content::Time(ms) => iso_ms(*ms),
        Content::List(items) => format!("[{} items]", items.len()),
        Content::Map(_) => "{...}".into(),
    }
}

/// Puts `key: content` into a JSON object; a time goes in twice, as
/// `KEY_ms` (the number) and `KEY` (ISO 8601).
fn put(obj: &mut Map<String, Json>, key: &str, content: &Content) {
    if let Content::Time(ms) = content {
        obj.insert(format!("{key}_ms"), json!(ms));
        obj.insert(key.to_string(), json!(iso_ms(*ms)));
    } else {
        obj.insert(key.to_string(), content_json(content));
    }
}

/// A value as JSON: lists are arrays, maps objects.
pub fn content_json(content: &Content) -> Json {
    match content {
        Content::Str(s) | Content::Text(s) | Content::Other(s) => json!(s),
        Content::Int(i) => json!(i),
        Content::Bool(b) => json!(b),
        // Only where there is no key to carry the unit (an item of a list).
        Content::Time(ms) => json!({"ms": ms, "iso": iso_ms(*ms)}),
        Content::List(items) => Json::Array(items.iter().map(content_json).collect()),
        Content::Map(entries) => {
            let mut obj = Map::new();
            for (k, v) in entries {
                put(&mut obj, k, v);
            }
            Json::Object(obj)
        }
    }
}

/// `record` as JSON.
pub fn record_json(client: &Client, record: &Record) -> anyhow::Result<Json> {
    let mut obj = Map::new();
    obj.insert("id".into(), json!(record.id));
    if let Some(h) = &record.header {
        let (device, name) = device_json(client, &h.created_by_device)?;
        obj.insert("kind".into(), json!(h.kind.name()));
        obj.insert("area".into(), json!(h.area));
        obj.insert("created_by_user".into(), json!(h.created_by_user));
        obj.insert("created_by_device".into(), device);
        obj.insert("created_by_device_name".into(), name);
        obj.insert("created_at_ms".into(), json!(h.created_at));
        obj.insert("created_at".into(), json!(iso_ms(h.created_at)));
        obj.insert("schema".into(), json!(h.schema));
    }
    obj.insert("synced".into(), json!(!record.unacknowledged));
    obj.insert("rejected".into(), json!(record.rejected));
    obj.insert("review_state".into(), json!(record.review_state));
    obj.insert(
        "review_comments".into(),
        Json::Array(
            record
                .review_comments
                .iter()
                .map(|c| json!({"by": c.by, "at_ms": c.at, "at": iso_ms(c.at), "text": c.text}))
                .collect(),
        ),
    );
    let mut fields = Map::new();
    let mut conflicts = Map::new();
    let lists = attachment_lists(record);
    obj.insert(
        "attachments".into(),
        Json::Array(
            client
                .attachments(&record.id)?
                .iter()
                .map(|a| {
                    json!({
                        "field": a.reference.field,
                        "sha256": a.reference.sha256,
                        "size_bytes": a.reference.size_bytes,
                        "mime": a.reference.mime,
                        "name": a.reference.name,
                        "created_at_ms": a.reference.created_at_ms,
                        "created_at": iso_ms(a.reference.created_at_ms),
                        "created_by": a.reference.created_by,
                        "held_bytes": a.held_bytes,
                        "complete": a.complete,
                        "upload": a.upload,
                    })
                })
                .collect(),
        ),
    );
    for f in record
        .fields
        .iter()
        .filter(|f| f.name != "review" && !lists.contains(&f.name.as_str()))
    {
        put(&mut fields, &f.name, &f.content);
        if !f.conflicts.is_empty() {
            conflicts.insert(f.name.clone(), json!(f.conflicts));
        }
    }
    obj.insert("fields".into(), Json::Object(fields));
    obj.insert("conflicts".into(), Json::Object(conflicts));
    Ok(Json::Object(obj))
}

/// The `list` table: a header, then one line per record.
pub fn list_text(records: &[Summary]) -> String {
    let mut out = String::new();
    let width = |f: &dyn Fn(&Summary) -> usize, min: usize| {
        records.iter().map(f).max().unwrap_or(0).max(min)
    };
    let kind_w = width(&|r| r.kind.len(), 4);
    let area_w = width(&|r| r.area.chars().count(), 4);
    let _ = writeln!(
        out,
        "{:<36}  {:<kind_w$}  {:<area_w$}  {:<9}  {:<6}  TITLE",
        "ID", "KIND", "AREA", "REVIEW", "SYNCED"
    );
    for r in records {
        let synced = match (r.refused, r.synced) {
            (true, _) => "refused",
            (false, true) => "yes",
            (false, false) => "no",
        };
        let area_pad = area_w.saturating_sub(r.area.chars().count());
        let _ = writeln!(
            out,
            "{:<36}  {:<kind_w$}  {}{}  {:<9}  {:<6}  {}",
            r.id,
            r.kind,
            r.area,
            " ".repeat(area_pad),
            r.review_state,
            synced,
            r.title.replace('\n', " ")
        );
    }
    out
}

/// The `list` records as JSON.
pub fn list_json(records: &[Summary]) -> Json {
    Json::Array(
        records
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "kind": r.kind,
                    "area": r.area,
                    "title": r.title,
                    "review_state": r.review_state,
                    "synced": r.synced,
                    "refused": r.refused,
                    "created_at_ms": r.created_at_ms,
                    "created_at": iso_ms(r.created_at_ms),
                })
            })
            .collect(),
    )
}

/// Change times are whole seconds (automerge's); shown as milliseconds
/// like every other time.
fn change_ms(secs: i64) -> i64 {
    secs.saturating_mul(1000)
}

/// `conflicts` as text.
pub fn conflicts_text(
    client: &Client,
    conflicts: &[baraza_records::Conflict],
) -> anyhow::Result<String> {
    let mut out = String::new();
    if conflicts.is_empty() {
        out.push_str("no conflicts\n");
    }
    for c in conflicts {
        let _ = writeln!(out, "{}:", c.path);
        for v in &c.values {
            let user = v
                .user
                .as_deref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            let shown = if v.winner { ", shown" } else { "" };
            let _ = writeln!(
                out,
                "  {:?} set on {}{user} at {}{shown}",
                v.value,
                device_label(client, &v.actor)?,
                iso_ms(change_ms(v.time))
            );
        }
    }
    Ok(out)
}

/// `conflicts` as JSON.
pub fn conflicts_json(
    client: &Client,
    conflicts: &[baraza_records::Conflict],
) -> anyhow::Result<Json> {
    let mut out = Vec::new();
    for c in conflicts {
        let mut values = Vec::new();
        for v in &c.values {
            let (device, name) = device_json(client, &v.actor)?;
            let ms = change_ms(v.time);
            values.push(json!({
                "value": v.value,
                "actor": v.actor,
                "device": device,
                "device_name": name,
                "user": v.user,
                "at_ms": ms,
                "at": iso_ms(ms),
                "winner": v.winner,
            }));
        }
        out.push(json!({"path": c.path, "values": values}));
    }
    Ok(Json::Array(out))
}

/// `history` as text, one change a line.
pub fn history_text(
    client: &Client,
    history: &[baraza_records::HistoryEntry],
) -> anyhow::Result<String> {
    let mut out = String::new();
    for h in history {
        let _ = writeln!(
            out,
            "{}  {}: {} [{}]",
            iso_ms(change_ms(h.time)),
            device_label(client, &h.actor)?,
            h.message.as_deref().unwrap_or("change"),
            h.fields.join(", ")
        );
    }
    Ok(out)
}

/// `history` as JSON.
pub fn history_json(
    client: &Client,
    history: &[baraza_records::HistoryEntry],
) -> anyhow::Result<Json> {
    let mut out = Vec::new();
    for h in history {
        let (device, name) = device_json(client, &h.actor)?;
        let ms = change_ms(h.time);
        out.push(json!({
            "hash": h.hash,
            "actor": h.actor,
            "device": device,
            "device_name": name,
            "user": h.user,
            "message": h.message,
            "fields": h.fields,
            "at_ms": ms,
            "at": iso_ms(ms),
        }));
    }
    Ok(Json::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_and_maps_are_indented_in_full() {
        let attendees = Content::List(vec![
            Content::Map(vec![
                ("name".into(), Content::Str("Otieno".into())),
                ("role".into(), Content::Str("youth leader".into())),
            ]),
            Content::Map(vec![("name".into(), Content::Str("Achieng".into()))]),
        ]);
        let mut out = String::new();
        render(&mut out, 1, "attendees", &attendees);
        assert_eq!(
            out,
            "  attendees: (2 items)\n    - name: Otieno\n      role: youth leader\n    - name: Achieng\n"
        );
        let json = content_json(&attendees);
        assert_eq!(json[0]["role"], "youth leader");
        assert_eq!(json[1]["name"], "Achieng");
    }

    #[test]
    fn a_time_in_a_map_goes_into_json_with_its_unit_and_as_iso() {
        let item = Content::Map(vec![("at".into(), Content::Time(1_700_000_000_000))]);
        let json = content_json(&item);
        assert_eq!(json["at_ms"], 1_700_000_000_000i64);
        let iso = json["at"].as_str().unwrap();
        assert!(iso.starts_with("2023-11-1"), "{iso}");
        assert!(chrono::DateTime::parse_from_rfc3339(iso).is_ok(), "{iso}");
    }
}
