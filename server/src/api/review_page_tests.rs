//! The desk page's catalogues against each other, against what the page
//! asks for, and against the records' schema. (That `page()` serves them
//! hardened is checked against a running server in the browser tests.)

use std::collections::{BTreeMap, BTreeSet};

use baraza_records::schema::REVIEW_STATES;
use baraza_records::{FieldType, Kind};

use super::{APP_JS, CATALOGUES, INDEX_HTML};

fn catalogue(lang: &str) -> BTreeMap<String, String> {
    let (_, text) = CATALOGUES
        .iter()
        .find(|(l, _)| *l == lang)
        .unwrap_or_else(|| panic!("no catalogue {lang}"));
    let value: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{lang}.json is not JSON: {e}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{lang}.json is not a flat object"));
    object
        .iter()
        .map(|(k, v)| {
            let text = v
                .as_str()
                .unwrap_or_else(|| panic!("{lang}.json: {k} is not a string"));
            (k.clone(), text.to_string())
        })
        .collect()
}

/// The `{name}` placeholders in a text.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                found.insert(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    found
}

/// The keys `app.js` asks for as a whole literal: `t("a.b")`,
/// `t("a.b", {...})` or `tn(...)` alike; `t("kind." + k)` builds its key
/// (checked against the schema below).
fn keys_in_script(script: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = script[from..].find("(\"") {
        let open = from + found;
        from = open + 2;
        let head = &script[..open];
        let name_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .map_or(0, |i| {
                i + head[i..].chars().next().map_or(1, char::len_utf8)
            });
        let name = &head[name_start..];
        let called_on = head[..name_start].chars().next_back();
        if !matches!(name, "t" | "tn") || called_on == Some('.') {
            continue;
        }
        let Some(len) = script[from..].find('"') else {
            break;
        };
        let key = &script[from..from + len];
        let next = script[from + len + 1..].trim_start().chars().next();
        if matches!(next, Some(')') | Some(',')) {
            keys.insert(key.to_string());
        }
    }
    keys
}

/// The keys in `data-i18n="..."` and `data-i18n-placeholder="..."`.
fn keys_in_html(html: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for attribute in ["data-i18n=\"", "data-i18n-placeholder=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            let after = &rest[start + attribute.len()..];
            let end = after.find('"').expect("a closed attribute");
            keys.insert(after[..end].to_string());
            rest = &after[end..];
        }
    }
    keys
}

#[test]
fn every_catalogue_has_exactly_the_english_keys() {
    let en = catalogue("en");
    assert!(en.len() > 100, "en.json has only {} keys", en.len());
    let mut problems = Vec::new();
    for (lang, _) in CATALOGUES.iter().filter(|(l, _)| *l != "en") {
        let other = catalogue(lang);
        for key in en.keys().filter(|k| !other.contains_key(*k)) {
            problems.push(format!("{lang}.json lacks {key}"));
        }
        for key in other.keys().filter(|k| !en.contains_key(*k)) {
            problems.push(format!("{lang}.json has {key}, which en.json lacks"));
        }
        for (key, text) in &other {
            if text.trim().is_empty() {
                problems.push(format!("{lang}.json: {key} is empty"));
            }
            if let Some(english) = en.get(key) {
                if placeholders(english) != placeholders(text) {
                    problems.push(format!(
                        "{lang}.json: {key} has placeholders {:?}, en.json {:?}",
                        placeholders(text),
                        placeholders(english)
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_page_asks_only_for_keys_english_has() {
    let en = catalogue("en");
    let used = keys_in_script(APP_JS);
    assert!(used.len() > 50, "only {} keys found in app.js", used.len());
    assert!(used.contains("review.why_conflicts"), "{used:?}");
    let html = keys_in_html(INDEX_HTML);
    assert!(html.contains("nav.signout"), "{html:?}");
    let missing: Vec<_> = used
        .iter()
        .chain(html.iter())
        .filter(|k| !en.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "en.json lacks {missing:?}");
}

#[test]
fn the_scanner_finds_whole_keys_only() {
    let keys = keys_in_script(
        "t(\"a.b\"); t(\"c\", {n}); t(\"kind.\" + k); params.get(\"poll\"); x.t(\"no\"); (t(\"d\")) tn(\"e\", {}) btn(\"f\")",
    );
    let expected: BTreeSet<String> = ["a.b", "c", "d", "e"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(keys, expected);
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Str => "str",
        FieldType::Text => "text",
        FieldType::Int => "int",
        FieldType::Bool => "bool",
        FieldType::Time => "time",
        FieldType::Digest => "digest",
        FieldType::Enum(_) => "enum",
        FieldType::List(_) => "list",
        FieldType::Map(_) => "map",
    }
}

/// Every kind, field, list or map part and enum value of the schema has
/// a label in English (so in every language), and the page's copy of the
/// schema names each field with its type.
#[test]
fn every_field_and_value_of_the_schema_has_a_label() {
    let en = catalogue("en");
    let mut wanted: Vec<String> = REVIEW_STATES.iter().map(|s| format!("enum.{s}")).collect();
    let mut declared = Vec::new();
    let enum_values = |ty: FieldType, wanted: &mut Vec<String>| {
        if let FieldType::Enum(values) = ty {
            wanted.extend(values.iter().map(|v| format!("enum.{v}")));
        }
    };
    for kind in Kind::ALL {
        wanted.push(format!("kind.{}", kind.name()));
        for field in kind.fields() {
            wanted.push(format!("field.{}", field.name));
            declared.push(format!("S(\"{}\", \"{}\"", field.name, type_name(field.ty)));
            enum_values(field.ty, &mut wanted);
            for part in field.parts() {
                wanted.push(format!("part.{}.{}", field.name, part.name));
                declared.push(format!("S(\"{}\", \"{}\"", part.name, type_name(part.ty)));
                enum_values(part.ty, &mut wanted);
                for inner in part.parts() {
                    wanted.push(format!("part.{}.{}", part.name, inner.name));
                    declared.push(format!("S(\"{}\", \"{}\"", inner.name, type_name(inner.ty)));
                    enum_values(inner.ty, &mut wanted);
                }
            }
        }
    }
    let missing: Vec<_> = wanted.iter().filter(|k| !en.contains_key(*k)).collect();
    assert!(missing.is_empty(), "en.json lacks {missing:?}");
    let undeclared: Vec<_> = declared.iter().filter(|d| !APP_JS.contains(*d)).collect();
    assert!(
        undeclared.is_empty(),
        "app.js's SCHEMA lacks {undeclared:?}"
    );
}

#[test]
fn the_page_links_its_favicon() {
    assert!(INDEX_HTML.contains("href=\"/review/favicon.svg\""));
    assert!(super::FAVICON_SVG.starts_with("<svg"));
}
