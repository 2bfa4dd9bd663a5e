//! Deterministic record contents: a few text fields, about 300 bytes of
//! keys and values, shaped like a patrol note.

/// A small deterministic generator (xorshift64*), so runs are comparable
/// without pulling in a random number crate.
pub struct Gen(u64);

impl Gen {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

const PLACES: &[&str] = &[
    "Market hall",
    "Kibera chief's camp",
    "Mathare bus stage",
    "Gikomba market",
    "Kawangware school",
    "Dandora water point",
    "Eastleigh mosque",
];

const OFFICERS: &[&str] = &[
    "Cpl. Achieng",
    "Sgt. Mwangi",
    "PC Otieno",
    "Insp. Wanjiru",
    "PC Kiprotich",
];

const WORDS: &[&str] = &[
    "residents",
    "raised",
    "street",
    "lighting",
    "near",
    "the",
    "stage",
    "after",
    "dark",
    "youth",
    "group",
    "asked",
    "for",
    "regular",
    "patrols",
    "water",
    "point",
    "dispute",
    "resolved",
    "elders",
    "meeting",
    "next",
    "week",
    "follow",
    "up",
    "with",
    "chief",
    "reported",
    "theft",
    "of",
    "bicycles",
];

/// Length the summary field is filled to.
const NOTES_CHARS: usize = 220;

/// The fields of record number `n` (about 300 bytes of keys and values).
pub fn fields(gen: &mut Gen, n: usize) -> Vec<(String, String)> {
    let mut notes = String::with_capacity(NOTES_CHARS + 16);
    while notes.len() < NOTES_CHARS {
        if !notes.is_empty() {
            notes.push(' ');
        }
        notes.push_str(gen.pick(WORDS));
    }
    let day = 1 + gen.next_u64() % 28;
    vec![
        // The summary goes in the title: `notes` is a collaborative text
        // field, which `Client::create` cannot set whole, and the server
        // refuses fields the meeting schema does not have.
        ("title".into(), format!("Patrol note #{n:06}: {notes}")),
        ("place".into(), gen.pick(PLACES).into()),
        ("facilitator".into(), gen.pick(OFFICERS).into()),
        (
            "held_at".into(),
            (1_709_251_200_000 + day * 86_400_000).to_string(),
        ),
    ]
}

/// Bytes of keys and values in a record's fields.
pub fn size(fields: &[(String, String)]) -> usize {
    fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_about_300_bytes_and_deterministic() {
        let a = fields(&mut Gen::new(7), 1);
        let b = fields(&mut Gen::new(7), 1);
        assert_eq!(a, b);
        let n = size(&a);
        assert!((280..=340).contains(&n), "{n}");
    }
}
