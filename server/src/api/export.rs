//! Exports for reports: CSV, one file per record kind, and GeoJSON of
//! patrol observations with a GPS fix. Times are ISO 8601 in UTC with the
//! offset (`Z`); GeoJSON keeps an observation's ms beside it (`at_ms`). Pure functions over records already
//! read and access-checked; the review API decides what goes in and audits
//! it.

use baraza_records::{FieldSpec, FieldType, Kind};

pub use crate::engine::view::ExportRecord;

/// The clock flag as an export cell says it: empty for a record whose
/// claimed times were plausible.
pub fn clock_flag(clock: Option<&crate::storage::store::ClockSkew>) -> String {
    match clock {
        None => String::new(),
        Some(c) => format!(
            "clock ahead: {} claimed time{} up to {:.1} days ahead of the server",
            c.times,
            if c.times == 1 { "" } else { "s" },
            c.ahead_ms_max as f64 / DAY_MS
        ),
    }
}

/// The contact columns a feedback export gains when contacts are asked for.
const CONTACT_COLUMNS: &[&str] = &["name", "phone", "email", "address"];

/// A time (ms since the epoch) as ISO 8601 in UTC with its offset
/// (`2026-12-01T14:32:11Z`, with milliseconds only when there are any):
/// what spreadsheets and GIS tools read as a time, where epoch numbers
/// are read as plain numbers. Empty if out of chrono's range.
pub fn iso_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// A JSON time value (ms) as [`iso_time`]; anything else as it is.
fn iso_value(value: &serde_json::Value) -> serde_json::Value {
    match value.as_i64() {
        Some(ms) => serde_json::Value::String(iso_time(ms)),
        None => value.clone(),
    }
}

/// One CSV column: its name, the path to its value, and whether the
/// value is a time.
type Column = (String, Vec<&'static str>, bool);

/// One column per scalar field; a list becomes its item count, a list of
/// attachments the desk's links to them, a map one column per part
/// (`headcount.women`).
fn columns(kind: Kind) -> Vec<Column> {
    let mut out = Vec::new();
    for spec in kind.fields() {
        match spec.ty {
            ty if baraza_records::schema::is_attachments(ty) => {
                out.push((format!("{}_links", spec.name), vec![spec.name], false))
            }
            FieldType::List(_) => {
                out.push((format!("{}_count", spec.name), vec![spec.name], false))
            }
            FieldType::Map(parts) => {
                for part in parts.iter() {
                    let part: &FieldSpec = part;
                    out.push((
                        format!("{}.{}", spec.name, part.name),
                        vec![spec.name, part.name],
                        part.ty == FieldType::Time,
                    ));
                }
            }
            _ => out.push((
                spec.name.to_string(),
                vec![spec.name],
                spec.ty == FieldType::Time,
            )),
        }
    }
    out
}

fn cell_of(value: &serde_json::Value, path: &[&str], count: bool) -> String {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) if count => items.len().to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The review desk's links to the attachments of a list, space-separated
/// (each opens behind the desk's sign-in).
fn attachment_links(id: &str, fields: &serde_json::Value, path: &[&str]) -> String {
    let mut v = fields;
    for key in path {
        v = &v[*key];
    }
    v.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["sha256"].as_str())
                .filter(|sha| baraza_records::attachment::is_digest(sha))
                .map(|sha| format!("/review/api/records/{id}/attachments/{sha}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Quotes a CSV cell when needed, and defuses text a spreadsheet would run
/// as a formula (`=`, `+`, `-`, `@` first): exports are opened in Excel.
fn escape(cell: &str) -> String {
    let cell = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// A record's fields as the JSON the columns' paths read.
fn json(fields: &crate::engine::view::FieldValue) -> serde_json::Value {
    serde_json::to_value(fields).unwrap_or(serde_json::Value::Null)
}

/// A CSV of records of one kind: a header row, then one row per record.
pub fn csv(kind: Kind, records: &[ExportRecord], contacts: bool) -> String {
    let cols = columns(kind);
    let with_contacts = contacts && kind == Kind::Feedback;
    let mut head: Vec<String> = [
        "id",
        "area",
        "created_by",
        "created_at",
        "review_state",
        "clock_flag",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(cols.iter().map(|(name, _, _)| name.clone()));
    if with_contacts {
        head.extend(CONTACT_COLUMNS.iter().map(|c| format!("contact.{c}")));
    }
    let mut out = String::new();
    out.push_str(&head.iter().map(|h| escape(h)).collect::<Vec<_>>().join(","));
    out.push_str("\r\n");
    for r in records.iter().filter(|r| r.header.kind == kind) {
        let fields = json(&r.fields);
        let mut row = vec![
            r.id.clone(),
            r.header.area.clone(),
            r.header.created_by_user.clone(),
            iso_time(r.header.created_at),
            r.review_state.name().to_string(),
            clock_flag(r.clock.as_ref()),
        ];
        for (name, path, time) in &cols {
            if name.ends_with("_links") {
                row.push(attachment_links(&r.id, &fields, path));
                continue;
            }
            let cell = cell_of(&fields, path, name.ends_with("_count"));
            row.push(match (*time, cell.parse::<i64>()) {
                (true, Ok(ms)) => iso_time(ms),
                _ => cell,
            });
        }
        if with_contacts {
            for c in CONTACT_COLUMNS {
                row.push(
                    r.contact
                        .as_ref()
                        .map(|v| cell_of(&json(v), &[c], false))
                        .unwrap_or_default(),
                );
            }
        }
        out.push_str(&row.iter().map(|c| escape(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// Patrol observations with a usable GPS fix, as a GeoJSON FeatureCollection.
pub fn geojson(records: &[ExportRecord]) -> serde_json::Value {
    let mut features = Vec::new();
    for r in records.iter().filter(|r| r.header.kind == Kind::PatrolNote) {
        let fields = json(&r.fields);
        let Some(observations) = fields["observations"].as_array() else {
            continue;
        };
        for (i, o) in observations.iter().enumerate() {
            let coord = |k: &str| {
                o["gps"][k]
                    .as_str()
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            let (Some(lat), Some(lon)) = (coord("lat"), coord("lon")) else {
                continue;
            };
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                continue;
            }
            features.push(serde_json::json!({
                "type": "Feature",
                // GeoJSON orders coordinates longitude first.
                "geometry": { "type": "Point", "coordinates": [lon, lat] },
                "properties": {
                    "record": r.id,
                    "observation": i,
                    "area": r.header.area,
                    "officer": fields["officer"],
                    "beat": fields["beat"],
                    "at": iso_value(&o["at"]),
                    "at_ms": o["at"],
                    "text": o["text"],
                    "tags": o["tags"],
                    "accuracy_m": o["gps"]["accuracy_m"],
                    "review_state": r.review_state,
                    "clock_flag": clock_flag(r.clock.as_ref()),
                }
            }));
        }
    }
    serde_json::json!({ "type": "FeatureCollection", "features": features })
}

const DAY_MS: f64 = 86_400_000.0;

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// `YYYY-MM` (UTC) of a time in milliseconds since the epoch.
fn month_of(ms: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate
    // for one conversion.
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}")
}

/// Indicators for reports to command and oversight bodies, over records
/// already read and access-checked: meetings per area and month with
/// attendance, concerns by topic, feedback by category and status, median
/// days from feedback received to acknowledged and to resolved, and the
/// share of decided records that were returned at least once.
pub fn indicators(records: &[ExportRecord]) -> serde_json::Value {
    use std::collections::BTreeMap;
    let mut meetings: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let mut feedback: BTreeMap<(String, String), u64> = BTreeMap::new();
    let (mut to_ack, mut to_resolve) = (Vec::new(), Vec::new());
    let (mut decided, mut returned) = (0u64, 0u64);
    for r in records {
        if !r.decisions.is_empty() {
            decided += 1;
            if r.decisions.contains(&baraza_records::ReviewState::Returned) {
                returned += 1;
            }
        }
        let f = &json(&r.fields);
        match r.header.kind {
            Kind::Meeting => {
                let held = f["held_at"].as_i64().unwrap_or(r.header.created_at);
                let attendance = f["headcount"]["total"]
                    .as_u64()
                    .unwrap_or_else(|| f["attendees"].as_array().map_or(0, |a| a.len() as u64));
                let entry = meetings
                    .entry((r.header.area.clone(), month_of(held)))
                    .or_default();
                entry.0 += 1;
                entry.1 += attendance;
                for c in f["concerns"].as_array().into_iter().flatten() {
                    let topic = c["topic"].as_str().unwrap_or("").trim();
                    let topic = if topic.is_empty() { "(none)" } else { topic };
                    *topics.entry(topic.to_lowercase()).or_default() += 1;
                }
            }
            Kind::Feedback => {
                let category = f["category"].as_str().unwrap_or("(none)").to_string();
                let status = f["status"].as_str().unwrap_or("received").to_string();
                *feedback.entry((category, status)).or_default() += 1;
                let first = |wanted: &str| {
                    f["follow_ups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|u| u["status"] == wanted)
                        .filter_map(|u| u["at"].as_i64())
                        .min()
                };
                let received = r.header.created_at;
                if let Some(at) = first("acknowledged") {
                    to_ack.push((at - received).max(0) as f64 / DAY_MS);
                }
                if let Some(at) = first("resolved") {
                    to_resolve.push((at - received).max(0) as f64 / DAY_MS);
                }
            }
            _ => {}
        }
    }
    serde_json::json!({
        "meetings": meetings.into_iter().map(|((area, month), (held, attendance))| serde_json::json!({
            "area": area, "month": month, "held": held, "attendance": attendance,
        })).collect::<Vec<_>>(),
        "concerns_by_topic": topics,
        "feedback": feedback.into_iter().map(|((category, status), count)| serde_json::json!({
            "category": category, "status": status, "count": count,
        })).collect::<Vec<_>>(),
        "median_days_to_acknowledged": median(to_ack),
        "median_days_to_resolved": median(to_resolve),
        "decided": decided,
        "returned_at_least_once": returned,
        "share_returned": if decided == 0 { None } else { Some(returned as f64 / decided as f64) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a, b"), "\"a, b\"");
        assert_eq!(escape("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(escape("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(escape("-1"), "'-1");
    }

    #[test]
    fn months_and_medians() {
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(1_700_000_000_000), "2023-11");
        assert_eq!(month_of(951_782_400_000), "2000-02"); // 2000-02-29
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn times_are_iso_8601_with_their_offset() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_value(&serde_json::json!(null)), serde_json::json!(null));
    }

    #[test]
    fn lists_count_and_maps_spread_into_columns() {
        let names: Vec<String> = columns(Kind::Meeting).into_iter().map(|c| c.0).collect();
        assert!(names.contains(&"attendees_count".to_string()));
        assert!(names.contains(&"headcount.women".to_string()));
        assert!(names.contains(&"place".to_string()));
        assert!(names.contains(&"photos_links".to_string()));
        assert!(!names.contains(&"photos_count".to_string()));
    }

    #[test]
    fn attachment_lists_become_the_desks_links() {
        let a = "a".repeat(64);
        let fields = serde_json::json!({
            "photos": [{ "sha256": a, "name": "x.jpg" }, { "sha256": "not a digest" }],
        });
        assert_eq!(
            attachment_links("r1", &fields, &["photos"]),
            format!("/review/api/records/r1/attachments/{a}")
        );
        assert_eq!(attachment_links("r1", &fields, &["audio"]), "");
    }
}
