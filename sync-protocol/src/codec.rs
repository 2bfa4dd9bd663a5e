//! The only module that knows the wire encoding.
//!
//! serde_cbor is unmaintained (RUSTSEC-2021-0127); everything else in the
//! workspace goes through [`encode`] and [`decode`], so swapping it for
//! ciborium touches this file alone. The golden vectors in the tests pin
//! the bytes, so such a swap cannot change the wire format unnoticed.
//!
//! Decoding costs memory in proportion to what a frame *claims* unless the
//! claims are checked first: serde builds every element of an array before
//! a length check after it could run, and the internally tagged `Message`
//! buffers the whole map before it looks at a field. So [`decode`] walks
//! the frame's structure before serde sees it. The walk allocates nothing
//! and costs one pass over the bytes; it checks well-formedness, nesting
//! depth, the length of every array and map and the number of items in
//! all, and reads the top-level `"t"` (and `"doc"`) in place, so an unknown
//! type is told from garbage without a second parse. Only a frame within
//! every bound reaches serde, once.

use std::io::{Read, Write};

use serde_bytes::ByteBuf;

use crate::limits::Limits;
use crate::message::{DocId, Message, Packed, Packing};

/// Most levels of arrays, maps and tags around any item. Our messages use
/// three (the push's map, its `changes` array, one change); the rest is
/// room for fields a later version adds. Bounds the walk's recursion too.
pub const DEPTH_MAX: usize = 16;

/// Most entries in any one map. Our largest message has six fields.
pub const MAP_ENTRIES_MAX: u64 = 64;

/// Most elements in any one array except a push's `changes` (bounded by
/// [`Limits::changes_per_message_max`]). The other arrays are heads, one
/// per concurrent unmerged branch of one record: a handful in practice.
pub const ARRAY_LEN_MAX: u64 = 4096;

/// Most data items in one frame besides the elements of `changes`: room
/// for two full heads arrays and the fields around them. serde buffers a
/// few dozen bytes per item, so this and the changes limit bound what the
/// typed decode can hold beyond the frame's own bytes.
pub const ITEMS_BESIDES_CHANGES_MAX: u64 = 16_384;

/// Why a frame could not be turned into a message. Decoding never panics.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame is larger than the limit; it was not parsed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// Not CBOR at all, or truncated.
    #[error("malformed CBOR: {0}")]
    MalformedCbor(String),
    /// Well-formed CBOR (as far as it was read) whose shape goes past one of
    /// the bounds above; refused before anything was built from it.
    #[error("frame refused: more than {limit} {what}")]
    TooComplex {
        /// Which bound, in words ("levels of nesting").
        what: &'static str,
        /// The bound.
        limit: u64,
    },
    /// A push with more changes than one message may carry. The rest of the
    /// frame is well-formed, so this refuses that one document alone.
    #[error("push of {count} changes exceeds the limit of {limit} per message")]
    TooManyChanges {
        /// The push's document, when its `doc` field could be read.
        doc: Option<DocId>,
        /// Elements in the `changes` array.
        count: u64,
        /// [`Limits::changes_per_message_max`].
        limit: usize,
    },
    /// CBOR, but with a type field this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// CBOR with a known type but missing or mistyped fields.
    #[error("invalid {kind} message: {reason}")]
    Invalid {
        /// The type field, if there was one.
        kind: String,
        /// What serde reported.
        reason: String,
    },
    /// The message could not be serialised (should not happen for our types).
    #[error("could not encode message: {0}")]
    Encode(String),
    /// A packed frame declares more inflated bytes than a frame may hold;
    /// refused before anything was inflated.
    #[error("packed frame declares {declared} bytes inflated, over the limit of {limit} bytes")]
    PackedTooLarge {
        /// Bytes the frame says it inflates to.
        declared: u64,
        /// [`Limits::frame_bytes_max`].
        limit: usize,
    },
    /// A packed frame that does not hold what it declares: it does not
    /// inflate, inflates to other than its declared size (inflating stops
    /// one byte past it), or its frames do not add up.
    #[error("packed frame refused: {0}")]
    Unpack(&'static str),
}

/// Most bytes of frames [`pack`]'s callers put in one packed frame: enough
/// for a catch-up batch to compress well (deflate's window is 32 KiB, and
/// records of one area share field names, places and authors), little
/// enough that a link cut mid-frame costs under a second of a 2G link
/// (about 12 KB packed; 256 KiB saved 5% of the bytes but needed a link
/// that stayed up for 40 KB to make any progress).
pub const PACK_BYTES_TARGET: usize = 64 * 1024;

/// Fewest bytes of frames worth packing: a lone ack or a live change is
/// sent as it is, so a busy server does not compress every trickle for
/// every connection.
pub const PACK_BYTES_MIN: usize = 4 * 1024;

/// Bytes a frame takes inside a packed frame.
pub fn packed_len(frame: &[u8]) -> usize {
    4 + frame.len()
}

/// Packs `frames` (each already a frame) into one [`Message::Packed`]
/// frame. Fails for [`Packing::Unknown`] and for frames over 4 GiB.
pub fn pack(frames: &[Vec<u8>], packing: Packing) -> Result<Vec<u8>, CodecError> {
    if packing != Packing::Deflate {
        return Err(CodecError::Encode("no such packing".into()));
    }
    let size: usize = frames.iter().map(|f| packed_len(f)).sum();
    let mut z = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(size / 3),
        flate2::Compression::default(),
    );
    for frame in frames {
        let len = u32::try_from(frame.len())
            .map_err(|_| CodecError::Encode("frame over 4 GiB".into()))?;
        z.write_all(&len.to_be_bytes())
            .and_then(|()| z.write_all(frame))
            .map_err(|e| CodecError::Encode(e.to_string()))?;
    }
    let data = z.finish().map_err(|e| CodecError::Encode(e.to_string()))?;
    encode(&Message::Packed(Packed {
        packing,
        size: size as u64,
        frames: frames.len() as u64,
        data: ByteBuf::from(data),
    }))
}

/// The frames a packed frame holds, in order. Its declared size is checked
/// against `limits.frame_bytes_max` before inflating, and inflating stops
/// one byte past it, so a frame costs at most the limit whatever it claims
/// or inflates to. The frames are returned undecoded: each goes through
/// [`decode`] as a frame of its own.
pub fn unpack(packed: &Packed, limits: &Limits) -> Result<Vec<Vec<u8>>, CodecError> {
    if packed.packing != Packing::Deflate {
        return Err(CodecError::Unpack("a packing this version does not know"));
    }
    let size = usize::try_from(packed.size)
        .ok()
        .filter(|&s| s <= limits.frame_bytes_max)
        .ok_or(CodecError::PackedTooLarge {
            declared: packed.size,
            limit: limits.frame_bytes_max,
        })?;
    let mut inflated = Vec::with_capacity(size);
    flate2::read::DeflateDecoder::new(&packed.data[..])
        .take(packed.size + 1)
        .read_to_end(&mut inflated)
        .map_err(|_| CodecError::Unpack("it does not inflate"))?;
    if inflated.len() != size {
        return Err(CodecError::Unpack(
            "it inflates to other than the size it declares",
        ));
    }
    let mut frames = Vec::new();
    let mut rest = &inflated[..];
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len > after.len() {
            return Err(CodecError::Unpack("a frame inside runs past its end"));
        }
        let (frame, after) = after.split_at(len);
        frames.push(frame.to_vec());
        rest = after;
    }
    if !rest.is_empty() || frames.len() as u64 != packed.frames {
        return Err(CodecError::Unpack(
            "its frames do not add up to what it declares",
        ));
    }
    Ok(frames)
}

/// Serialises one message into one frame.
pub fn encode(message: &Message) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(message).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Parses one frame: refuses frames over `limits.frame_bytes_max` before
/// looking inside them, then walks the structure against the bounds above
/// and `limits.changes_per_message_max`, then decodes it once.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Message, CodecError> {
    if frame.len() > limits.frame_bytes_max {
        return Err(CodecError::TooLarge {
            size: frame.len(),
            limit: limits.frame_bytes_max,
        });
    }
    let shape = walk(frame, limits.changes_per_message_max)?;
    if let Some(count) = shape.changes_over {
        return Err(CodecError::TooManyChanges {
            doc: shape.doc,
            count,
            limit: limits.changes_per_message_max,
        });
    }
    if !shape.map {
        return Err(CodecError::Invalid {
            kind: String::new(),
            reason: "a message must be a CBOR map".into(),
        });
    }
    let Some(kind) = shape.kind else {
        return Err(CodecError::Invalid {
            kind: String::new(),
            reason: "missing text field \"t\" naming the message type".into(),
        });
    };
    if !Message::KINDS.contains(&kind) {
        return Err(CodecError::UnknownType(kind.to_string()));
    }
    serde_cbor::from_slice::<Message>(frame).map_err(|err| {
        // The walk accepts only what serde_cbor's parser accepts, so a
        // syntax error here would be a disagreement between the two; it is
        // still reported as malformed (fatal), as it was before the walk.
        if err.is_data() {
            CodecError::Invalid {
                kind: kind.to_string(),
                reason: err.to_string(),
            }
        } else {
            CodecError::MalformedCbor(err.to_string())
        }
    })
}

/// What the walk learnt about the frame's top level, borrowed from it.
#[derive(Debug, Default)]
struct Shape<'a> {
    /// The top-level item is a map, as every message is.
    map: bool,
    /// The first top-level `"t"` entry, if it is a definite text string.
    kind: Option<&'a str>,
    /// The first top-level `"doc"` entry, if it is a 16-byte string.
    doc: Option<DocId>,
    /// The element count of a top-level `"changes"` array over the limit.
    changes_over: Option<u64>,
}

/// Why the walk stopped: where the frame broke CBOR's rules (or serde_cbor's
/// narrower ones), or which bound it went past.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    Malformed(&'static str, usize),
    Limit(&'static str, u64),
}

impl From<Fault> for CodecError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Malformed(why, at) => CodecError::MalformedCbor(format!("{why} (at byte {at})")),
            Fault::Limit(what, limit) => CodecError::TooComplex { what, limit },
        }
    }
}

/// A data item's argument: a value (length, count, integer) or "indefinite".
enum Arg {
    Value(u64),
    Indefinite,
}

/// What one walked item was, as much as the top level needs to know.
enum Item<'a> {
    Text(&'a [u8]),
    Bytes(&'a [u8]),
    Other,
}

/// Walks `frame` as one CBOR data item. Costs O(frame bytes) time, a stack
/// of at most [`DEPTH_MAX`] calls, and no allocation.
fn walk(frame: &[u8], changes_max: usize) -> Result<Shape<'_>, Fault> {
    let changes_max = u64::try_from(changes_max).unwrap_or(u64::MAX);
    let mut walker = Walker {
        frame,
        pos: 0,
        items: 0,
        items_max: changes_max.saturating_add(ITEMS_BESIDES_CHANGES_MAX),
        counting: true,
        changes_max,
    };
    let mut shape = Shape::default();
    if frame.first().map(|b| b >> 5) == Some(5) {
        shape.map = true;
        walker.top_map(&mut shape)?;
    } else {
        walker.item(0)?;
    }
    if walker.pos != frame.len() {
        return Err(walker.malformed("trailing bytes after the message"));
    }
    Ok(shape)
}

struct Walker<'a> {
    frame: &'a [u8],
    /// Next byte to read; never past `frame.len()`.
    pos: usize,
    /// Items counted so far.
    items: u64,
    items_max: u64,
    /// Off while walking an over-long `changes` array: that frame is
    /// refused whatever it holds, so its elements cost serde nothing, and
    /// the walk goes on only to judge the rest well-formed and find `doc`.
    counting: bool,
    changes_max: u64,
}

impl<'a> Walker<'a> {
    fn malformed(&self, why: &'static str) -> Fault {
        Fault::Malformed(why, self.pos)
    }

    fn remaining(&self) -> u64 {
        // `pos` never passes the end, so this cannot wrap.
        (self.frame.len() - self.pos) as u64
    }

    fn count(&mut self) -> Result<(), Fault> {
        if self.counting {
            self.items += 1;
            if self.items > self.items_max {
                return Err(Fault::Limit("data items in one frame", self.items_max));
            }
        }
        Ok(())
    }

    /// Checks that a container at `depth` may hold items one level deeper.
    fn enter(&self, depth: usize) -> Result<(), Fault> {
        if depth >= DEPTH_MAX {
            return Err(Fault::Limit("levels of nesting", DEPTH_MAX as u64));
        }
        Ok(())
    }

    /// Refuses a count of items that cannot fit in what is left, each
    /// item taking at least `bytes_each` bytes: a lie about the length is
    /// malformed, found before walking a single element.
    fn fits(&self, count: u64, bytes_each: u64) -> Result<(), Fault> {
        if count.saturating_mul(bytes_each) > self.remaining() {
            return Err(self.malformed("a length claims more items than bytes remain"));
        }
        Ok(())
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], Fault> {
        if len > self.remaining() {
            return Err(self.malformed("a length claims more bytes than remain"));
        }
        // `len` fits in what remains, so it fits in usize and the end
        // cannot pass the frame's.
        let end = self.pos + len as usize;
        let bytes = self
            .frame
            .get(self.pos..end)
            .ok_or_else(|| self.malformed("a length claims more bytes than remain"))?;
        self.pos = end;
        Ok(bytes)
    }

    /// True (and consumed) if the next byte is the break ending an
    /// indefinite-length item.
    fn at_break(&mut self) -> Result<bool, Fault> {
        match self.frame.get(self.pos) {
            None => Err(self.malformed("the frame ends inside an indefinite-length item")),
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Reads an item's initial byte and argument: (major type, additional
    /// information, argument).
    fn head(&mut self) -> Result<(u8, u8, Arg), Fault> {
        let Some(&initial) = self.frame.get(self.pos) else {
            return Err(self.malformed("the frame ends where a data item should start"));
        };
        self.pos += 1;
        let info = initial & 0x1f;
        let arg = match info {
            0..=23 => Arg::Value(u64::from(info)),
            24..=27 => {
                let bytes = self.take(1 << (info - 24))?;
                Arg::Value(bytes.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
            }
            28..=30 => return Err(self.malformed("reserved additional information")),
            _ => Arg::Indefinite,
        };
        Ok((initial >> 5, info, arg))
    }

    /// Walks one data item at `depth` (the containers around it).
    fn item(&mut self, depth: usize) -> Result<Item<'a>, Fault> {
        self.count()?;
        let (major, info, arg) = self.head()?;
        match (major, arg) {
            (0 | 1, Arg::Value(_)) => Ok(Item::Other),
            (2, Arg::Value(len)) => Ok(Item::Bytes(self.take(len)?)),
            (3, Arg::Value(len)) => {
                let text = self.take(len)?;
                self.utf8(text)?;
                Ok(Item::Text(text))
            }
            (2 | 3, Arg::Indefinite) => {
                // Chunks are definite strings of the same type; serde joins
                // them into one buffer no larger than the frame.
                while !self.at_break()? {
                    match self.head()? {
                        (chunk, _, Arg::Value(len)) if chunk == major => {
                            let bytes = self.take(len)?;
                            if major == 3 {
                                self.utf8(bytes)?;
                            }
                        }
                        _ => {
                            return Err(self.malformed(
                                "an indefinite-length string holds something other than a chunk of its type",
                            ))
                        }
                    }
                }
                Ok(Item::Other)
            }
            (4, arg) => {
                self.enter(depth)?;
                self.elements(depth, arg, ARRAY_LEN_MAX)?;
                Ok(Item::Other)
            }
            (5, arg) => {
                self.enter(depth)?;
                let mut entries = 0u64;
                if let Arg::Value(len) = arg {
                    self.fits(len, 2)?;
                    if len > MAP_ENTRIES_MAX {
                        return Err(Fault::Limit("entries in one map", MAP_ENTRIES_MAX));
                    }
                }
                while self.more(&arg, entries)? {
                    entries += 1;
                    if entries > MAP_ENTRIES_MAX {
                        return Err(Fault::Limit("entries in one map", MAP_ENTRIES_MAX));
                    }
                    self.item(depth + 1)?;
                    self.item(depth + 1)?;
                }
                Ok(Item::Other)
            }
            (6, Arg::Value(_)) => {
                // A tag wraps one item: it nests like a container, so a run
                // of tags cannot recurse past the depth bound either.
                self.enter(depth)?;
                self.item(depth + 1)?;
                Ok(Item::Other)
            }
            // false, true, null, undefined, and the three float widths.
            (7, _) if matches!(info, 20..=23 | 25..=27) => Ok(Item::Other),
            (7, _) if info == 31 => {
                Err(self.malformed("a break code outside an indefinite-length item"))
            }
            // serde_cbor refuses the other simple values; refusing them here
            // keeps such a frame malformed (fatal), as the parser would say.
            (7, _) => Err(self.malformed("a simple value the decoder does not accept")),
            _ => Err(self.malformed("an indefinite length on an integer or a tag")),
        }
    }

    /// Walks an array's elements, at most `max` of them.
    fn elements(&mut self, depth: usize, arg: Arg, max: u64) -> Result<(), Fault> {
        if let Arg::Value(len) = arg {
            self.fits(len, 1)?;
            if len > max {
                return Err(Fault::Limit("elements in one array", max));
            }
        }
        let mut n = 0u64;
        while self.more(&arg, n)? {
            n += 1;
            if n > max {
                return Err(Fault::Limit("elements in one array", max));
            }
            self.item(depth + 1)?;
        }
        Ok(())
    }

    /// Whether a container with argument `arg` that has yielded `done`
    /// elements (or entries) has another.
    fn more(&mut self, arg: &Arg, done: u64) -> Result<bool, Fault> {
        match arg {
            Arg::Value(len) => Ok(done < *len),
            Arg::Indefinite => Ok(!self.at_break()?),
        }
    }

    fn utf8(&self, text: &[u8]) -> Result<(), Fault> {
        match std::str::from_utf8(text) {
            Ok(_) => Ok(()),
            Err(_) => Err(self.malformed("a text string that is not UTF-8")),
        }
    }

    /// Walks the top-level map, noting `"t"`, `"doc"` and an over-long
    /// `"changes"`.
    fn top_map(&mut self, shape: &mut Shape<'a>) -> Result<(), Fault> {
        self.count()?;
        let (_, _, arg) = self.head()?;
        if let Arg::Value(len) = arg {
            self.fits(len, 2)?;
            if len > MAP_ENTRIES_MAX {
                return Err(Fault::Limit("entries in one map", MAP_ENTRIES_MAX));
            }
        }
        let (mut entries, mut seen_t, mut seen_doc) = (0u64, false, false);
        while self.more(&arg, entries)? {
            entries += 1;
            if entries > MAP_ENTRIES_MAX {
                return Err(Fault::Limit("entries in one map", MAP_ENTRIES_MAX));
            }
            let key = match self.item(1)? {
                Item::Text(key) => key,
                _ => &[],
            };
            match key {
                b"changes" => {
                    if let Some(count) = self.changes()? {
                        shape.changes_over =
                            Some(shape.changes_over.map_or(count, |c| c.max(count)));
                    }
                }
                // Only the first of a repeated field counts; serde refuses
                // the repeat anyway.
                b"t" => {
                    let value = self.item(1)?;
                    if !std::mem::replace(&mut seen_t, true) {
                        if let Item::Text(text) = value {
                            shape.kind = std::str::from_utf8(text).ok();
                        }
                    }
                }
                b"doc" => {
                    let value = self.item(1)?;
                    if !std::mem::replace(&mut seen_doc, true) {
                        if let Item::Bytes(bytes) = value {
                            shape.doc = <[u8; 16]>::try_from(bytes).ok().map(DocId::from_bytes);
                        }
                    }
                }
                _ => {
                    self.item(1)?;
                }
            }
        }
        Ok(())
    }

    /// Walks the value of a top-level `"changes"`: an array may hold up to
    /// `changes_max` elements. A longer one is walked to its end without
    /// counting (the frame is refused either way) and its length returned.
    fn changes(&mut self) -> Result<Option<u64>, Fault> {
        if self.frame.get(self.pos).map(|b| b >> 5) != Some(4) {
            self.item(1)?;
            return Ok(None);
        }
        self.count()?;
        let (_, _, arg) = self.head()?;
        let max = self.changes_max;
        if let Arg::Value(len) = arg {
            self.fits(len, 1)?;
            if len > max {
                self.counting = false;
            }
        }
        let mut n = 0u64;
        while self.more(&arg, n)? {
            n += 1;
            if n > max {
                self.counting = false;
            }
            self.item(2)?;
        }
        self.counting = true;
        Ok((n > max).then_some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use proptest::prelude::*;
    use serde_bytes::ByteBuf;

    const MAX: usize = 1 << 20;

    fn limits(frame_bytes_max: usize) -> Limits {
        Limits {
            frame_bytes_max,
            ..Limits::DEFAULT
        }
    }

    #[test]
    fn golden_hello_bytes_are_stable() {
        let hello = Message::Hello(Hello {
            version: 1,
            store: None,
            cursor: 7,
            names: false,
            packing: Vec::new(),
        });
        let bytes = encode(&hello).unwrap();
        // {"t":"hello","version":1,"store":null,"cursor":7}
        let expected: &[u8] = &[
            0xa4, 0x61, b't', 0x65, b'h', b'e', b'l', b'l', b'o', 0x67, b'v', b'e', b'r', b's',
            b'i', b'o', b'n', 0x01, 0x65, b's', b't', b'o', b'r', b'e', 0xf6, 0x66, b'c', b'u',
            b'r', b's', b'o', b'r', 0x07,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(decode(expected, &limits(MAX)).unwrap(), hello);
    }

    #[test]
    fn a_hello_asking_for_names_still_decodes_as_an_old_hello_and_back() {
        // What a server that predates names reads: the same struct without
        // the field. serde ignores the field it does not know.
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct OldHello {
            t: String,
            version: u32,
            store: Option<StoreId>,
            cursor: u64,
        }
        let new = encode(&Message::Hello(Hello {
            version: 1,
            store: None,
            cursor: 7,
            names: true,
            packing: Vec::new(),
        }))
        .unwrap();
        let old: OldHello = serde_cbor::from_slice(&new).unwrap();
        assert_eq!((old.t.as_str(), old.version, old.cursor), ("hello", 1, 7));
        // An old client's hello (no field) asks for no names.
        let old_bytes = encode(&Message::Hello(Hello {
            version: 1,
            store: None,
            cursor: 7,
            names: false,
            packing: Vec::new(),
        }))
        .unwrap();
        assert!(!old_bytes.windows(5).any(|w| w == b"names"));
        match decode(&old_bytes, &limits(MAX)).unwrap() {
            Message::Hello(h) => assert!(!h.names),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn golden_devices_bytes_are_stable() {
        let msg = Message::Devices(DevicesMsg {
            names: vec![DeviceName {
                device: DeviceId::from_bytes([0xab; 16]),
                name: "t1".into(),
            }],
        });
        let bytes = encode(&msg).unwrap();
        // {"t":"devices","names":[{"device":h'abab..',"name":"t1"}]}
        let mut expected = vec![0xa2, 0x61, b't', 0x67];
        expected.extend(b"devices");
        expected.extend([0x65]);
        expected.extend(b"names");
        expected.extend([0x81, 0xa2, 0x66]);
        expected.extend(b"device");
        expected.extend([0x50]);
        expected.extend([0xab; 16]);
        expected.extend([0x64]);
        expected.extend(b"name");
        expected.extend([0x62, b't', b'1']);
        assert_eq!(bytes, expected);
        assert_eq!(decode(&expected, &limits(MAX)).unwrap(), msg);
    }

    #[test]
    fn golden_ack_encodes_ids_and_heads_as_byte_strings() {
        let ack = Message::Ack(Ack {
            doc: DocId::from_bytes([0xab; 16]),
            heads: vec![Head::from(automerge::ChangeHash([0x11; 32]))],
            seq: 9,
        });
        let bytes = encode(&ack).unwrap();
        let mut expected = vec![0xa4, 0x61, b't', 0x63, b'a', b'c', b'k'];
        expected.extend([0x63, b'd', b'o', b'c', 0x50]);
        expected.extend([0xab; 16]);
        expected.extend([0x65, b'h', b'e', b'a', b'd', b's', 0x81, 0x58, 0x20]);
        expected.extend([0x11; 32]);
        expected.extend([0x63, b's', b'e', b'q', 0x09]);
        assert_eq!(bytes, expected);
        assert_eq!(decode(&expected, &limits(MAX)).unwrap(), ack);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(
            decode(&[0xff, 0x00, 0x13], &limits(MAX)),
            Err(CodecError::MalformedCbor(_) | CodecError::Invalid { .. })
        ));
        assert!(matches!(
            decode(&[], &limits(MAX)),
            Err(CodecError::MalformedCbor(_))
        ));
    }

    #[test]
    fn unknown_type_is_named() {
        let frame = serde_cbor::to_vec(&serde_cbor::Value::Map(
            [(
                serde_cbor::Value::Text("t".into()),
                serde_cbor::Value::Text("teleport".into()),
            )]
            .into_iter()
            .collect(),
        ))
        .unwrap();
        match decode(&frame, &limits(MAX)) {
            Err(CodecError::UnknownType(t)) => assert_eq!(t, "teleport"),
            other => panic!("expected unknown type, got {other:?}"),
        }
    }

    #[test]
    fn known_type_with_wrong_fields_is_invalid() {
        let frame = serde_cbor::to_vec(&serde_cbor::Value::Map(
            [(
                serde_cbor::Value::Text("t".into()),
                serde_cbor::Value::Text("push".into()),
            )]
            .into_iter()
            .collect(),
        ))
        .unwrap();
        assert!(matches!(
            decode(&frame, &limits(MAX)),
            Err(CodecError::Invalid { kind, .. }) if kind == "push"
        ));
    }

    #[test]
    fn oversized_frames_are_refused_unparsed() {
        let frame = vec![0u8; 101];
        assert!(matches!(
            decode(&frame, &limits(100)),
            Err(CodecError::TooLarge {
                size: 101,
                limit: 100
            })
        ));
    }

    fn arb_doc() -> impl Strategy<Value = DocId> {
        any::<[u8; 16]>().prop_map(DocId::from_bytes)
    }

    fn arb_heads() -> impl Strategy<Value = Vec<Head>> {
        proptest::collection::vec(
            any::<[u8; 32]>().prop_map(|b| Head::from(automerge::ChangeHash(b))),
            0..4,
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..64).prop_map(ByteBuf::from);
        prop_oneof![
            (
                any::<u32>(),
                any::<Option<[u8; 16]>>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(v, s, c, names)| {
                    Message::Hello(Hello {
                        version: v,
                        store: s.map(StoreId::from_bytes),
                        cursor: c,
                        names,
                        packing: Vec::new(),
                    })
                }),
            proptest::collection::vec((any::<[u8; 16]>(), ".{0,20}"), 0..4).prop_map(|names| {
                Message::Devices(DevicesMsg {
                    names: names
                        .into_iter()
                        .map(|(d, name)| DeviceName {
                            device: DeviceId::from_bytes(d),
                            name,
                        })
                        .collect(),
                })
            }),
            (
                arb_doc(),
                arb_heads(),
                arb_heads(),
                proptest::collection::vec(bytes.clone(), 0..3)
            )
                .prop_map(|(doc, base, heads, changes)| Message::Push(Push {
                    doc,
                    base,
                    heads,
                    changes
                })),
            (arb_doc(), arb_heads(), bytes.clone()).prop_map(
                |(doc, heads, data)| Message::Changes(Changes {
                    n: 1,
                    doc,
                    heads,
                    data
                })
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, n)| Message::Cursor(CursorMsg { seq, n })),
            (arb_doc(), bytes).prop_map(|(doc, data)| Message::Sync(SyncMsg { doc, data })),
            (any::<Option<[u8; 16]>>(), ".{0,40}", any::<bool>()).prop_map(|(d, m, fatal)| {
                Message::Error(ErrorMsg {
                    code: ErrorCode::CorruptChanges,
                    doc: d.map(DocId::from_bytes),
                    message: m,
                    fatal,
                    rule: None,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in arb_message()) {
            let bytes = encode(&m).unwrap();
            prop_assert_eq!(decode(&bytes, &limits(usize::MAX)).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &limits(MAX));
        }
    }

    // --- the structure walk ---

    /// A CBOR head with the shortest argument, for frames built by hand.
    fn head(major: u8, n: u64) -> Vec<u8> {
        let m = major << 5;
        match n {
            0..=23 => vec![m | n as u8],
            24..=0xff => vec![m | 24, n as u8],
            0x100..=0xffff => [vec![m | 25], (n as u16).to_be_bytes().to_vec()].concat(),
            0x1_0000..=0xffff_ffff => [vec![m | 26], (n as u32).to_be_bytes().to_vec()].concat(),
            _ => [vec![m | 27], n.to_be_bytes().to_vec()].concat(),
        }
    }

    fn text(s: &str) -> Vec<u8> {
        [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
    }

    fn bytes(b: &[u8]) -> Vec<u8> {
        [head(2, b.len() as u64), b.to_vec()].concat()
    }

    /// A map of the given entries, definite length.
    fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = head(5, entries.len() as u64);
        for (k, v) in entries {
            out.extend(k);
            out.extend(v);
        }
        out
    }

    /// `changes` with `n` empty changes, definite or indefinite.
    fn empty_changes(n: u64, indefinite: bool) -> Vec<u8> {
        let mut out = if indefinite { vec![0x9f] } else { head(4, n) };
        out.extend(std::iter::repeat_n(0x40, n as usize));
        if indefinite {
            out.push(0xff);
        }
        out
    }

    fn push_frame(doc: Option<DocId>, changes: Vec<u8>, doc_last: bool) -> Vec<u8> {
        let mut entries = vec![
            (text("t"), text("push")),
            (text("base"), head(4, 0)),
            (text("heads"), head(4, 0)),
            (text("changes"), changes),
        ];
        if let Some(doc) = doc {
            let entry = (text("doc"), bytes(doc.as_bytes()));
            if doc_last {
                entries.push(entry);
            } else {
                entries.insert(1, entry);
            }
        }
        map(&entries)
    }

    fn is_malformed(frame: &[u8]) -> bool {
        matches!(
            decode(frame, &limits(MAX)),
            Err(CodecError::MalformedCbor(_))
        )
    }

    fn too_complex(frame: &[u8]) -> Option<&'static str> {
        match decode(frame, &limits(usize::MAX)) {
            Err(CodecError::TooComplex { what, .. }) => Some(what),
            _ => None,
        }
    }

    #[test]
    fn indefinite_lengths_and_tags_decode_like_their_definite_forms() {
        // {"t":"hello","version":1,"store":null,"cursor":7} with an
        // indefinite map, an indefinite key in two chunks, and the cursor
        // under a tag (serde_cbor reads through tags).
        let mut frame = vec![0xbf];
        frame.extend(text("t"));
        frame.extend(text("hello"));
        frame.extend([0x7f]);
        frame.extend(text("ver"));
        frame.extend(text("sion"));
        frame.extend([0xff, 0x01]);
        frame.extend(text("store"));
        frame.push(0xf6);
        frame.extend(text("cursor"));
        frame.extend([0xc1, 0x07, 0xff]);
        assert_eq!(
            decode(&frame, &limits(MAX)).unwrap(),
            Message::Hello(Hello {
                version: 1,
                store: None,
                cursor: 7,
                names: false,
                packing: Vec::new(),
            })
        );
    }

    #[test]
    fn every_major_type_is_walked() {
        // One unknown field holding an indefinite array of every kind of
        // item; serde ignores the field, the walk must still cross it.
        let mut zoo = vec![0x9f];
        zoo.extend([0x00, 0x17, 0x18, 0xff, 0x19, 0x01, 0x00, 0x1a, 0, 0, 1, 0]);
        zoo.extend([0x1b, 0, 0, 0, 1, 0, 0, 0, 0]);
        zoo.extend([
            0x20, 0x38, 0xff, 0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        zoo.extend(bytes(&[1, 2, 3]));
        zoo.extend([0x5f, 0x41, 0x01, 0x40, 0xff]);
        zoo.extend(text("é"));
        zoo.extend([0x7f, 0x61, b'a', 0xff]);
        zoo.extend([0x82, 0x01, 0x80]);
        zoo.extend([0xbf, 0x01, 0x02, 0xff, 0xa1, 0x01, 0xa0]);
        zoo.extend([0xd8, 0x20, 0x61, b'u', 0xdb, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        zoo.extend([0xf4, 0xf5, 0xf6, 0xf7, 0xf9, 0x3c, 0x00, 0xfa, 0, 0, 0, 0]);
        zoo.extend([0xfb, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        let frame = map(&[
            (text("t"), text("cursor")),
            (text("seq"), head(0, 3)),
            (text("n"), head(0, 4)),
            (text("zoo"), zoo),
        ]);
        assert_eq!(
            decode(&frame, &limits(MAX)).unwrap(),
            Message::Cursor(CursorMsg { seq: 3, n: 4 })
        );
        // A negative integer below i64 is well-formed; serde's buffering
        // cannot hold it, which makes the message invalid, not malformed.
        let frame = map(&[
            (text("t"), text("cursor")),
            (text("x"), [vec![0x3b], vec![0xff; 8]].concat()),
        ]);
        assert!(matches!(
            decode(&frame, &limits(MAX)),
            Err(CodecError::Invalid { .. })
        ));
    }

    #[test]
    fn every_cut_of_a_frame_is_malformed() {
        let frame = encode(&Message::Push(Push {
            doc: DocId::from_bytes([3; 16]),
            base: vec![Head::from(automerge::ChangeHash([1; 32]))],
            heads: vec![Head::from(automerge::ChangeHash([2; 32]))],
            changes: vec![ByteBuf::from(vec![9; 300]), ByteBuf::from(vec![])],
        }))
        .unwrap();
        for end in 0..frame.len() {
            assert!(is_malformed(&frame[..end]), "cut at {end}");
        }
        let mut longer = frame.clone();
        longer.push(0x00);
        assert!(is_malformed(&longer), "trailing bytes");
    }

    #[test]
    fn lengths_past_the_end_are_malformed_without_allocating() {
        let huge = [0xff; 8];
        for major in [2u8, 3, 4, 5] {
            let mut frame = vec![(major << 5) | 27];
            frame.extend(huge);
            assert!(is_malformed(&frame), "major {major}");
            // Inside a message too.
            let frame = map(&[(text("t"), text("push")), (text("changes"), frame)]);
            assert!(is_malformed(&frame), "major {major} inside a push");
        }
        assert!(is_malformed(&[0x5a, 0xff, 0xff, 0xff, 0xff, 0x00]));
        assert!(is_malformed(&[0x19, 0x01]));
        // An indefinite string whose chunk overruns.
        assert!(is_malformed(&[
            0x5f, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]));
    }

    #[test]
    fn what_the_parser_refuses_is_malformed() {
        let cases: &[&[u8]] = &[
            &[0x1c],                   // reserved additional information
            &[0x5d],                   // ... on a byte string
            &[0x9e],                   // ... on an array
            &[0xbc],                   // ... on a map
            &[0xdd, 0x00],             // ... on a tag
            &[0xfc],                   // ... on a simple value
            &[0x1f],                   // indefinite integer
            &[0x3f],                   // indefinite negative integer
            &[0xdf, 0x00],             // indefinite tag
            &[0xff],                   // break at the top
            &[0x81, 0xff],             // break inside a definite array
            &[0xbf, 0x01, 0xff],       // break where a map value belongs
            &[0xe0],                   // unassigned simple value
            &[0xf8, 0x20],             // one-byte simple value
            &[0x5f, 0x61, b'a', 0xff], // text chunk in a byte string
            &[0x7f, 0x7f, 0xff, 0xff], // nested indefinite chunk
            &[0x62, 0xc3, 0x28],       // not UTF-8
            &[0x9f],                   // unterminated indefinite array
            &[0xbf, 0x01],             // unterminated indefinite map
        ];
        for case in cases {
            assert!(
                is_malformed(case),
                "{case:02x?}: {:?}",
                decode(case, &limits(MAX))
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        // DEPTH_MAX arrays inside one another walk; one more does not.
        let nest = |n: usize| [vec![0x81; n - 1], vec![0x80]].concat();
        assert!(matches!(
            decode(&nest(DEPTH_MAX), &limits(MAX)),
            Err(CodecError::Invalid { .. })
        ));
        assert_eq!(too_complex(&nest(DEPTH_MAX + 1)), Some("levels of nesting"));
        assert_eq!(too_complex(&vec![0x9f; 100_000]), Some("levels of nesting"));
        assert_eq!(too_complex(&vec![0xc6; 100_000]), Some("levels of nesting"));
        assert_eq!(too_complex(&vec![0xa1; 100_000]), Some("levels of nesting"));
        // Inside a message the map counts as one level.
        let frame = map(&[(text("t"), text("push")), (text("x"), nest(DEPTH_MAX))]);
        assert_eq!(too_complex(&frame), Some("levels of nesting"));
    }

    #[test]
    fn maps_are_bounded() {
        let field = |i: u64| (text(&format!("f{i}")), head(0, i));
        let mut entries = vec![
            (text("t"), text("cursor")),
            (text("seq"), head(0, 1)),
            (text("n"), head(0, 2)),
        ];
        entries.extend((3..MAP_ENTRIES_MAX).map(field));
        // Fields a later version adds are still ignored, up to the bound.
        assert_eq!(
            decode(&map(&entries), &limits(MAX)).unwrap(),
            Message::Cursor(CursorMsg { seq: 1, n: 2 })
        );
        entries.push(field(MAP_ENTRIES_MAX));
        assert_eq!(too_complex(&map(&entries)), Some("entries in one map"));
        let mut indefinite = vec![0xbf];
        for (k, v) in &entries {
            indefinite.extend(k);
            indefinite.extend(v);
        }
        indefinite.push(0xff);
        assert_eq!(too_complex(&indefinite), Some("entries in one map"));
        let inner = [
            head(5, MAP_ENTRIES_MAX + 1),
            vec![0; 2 * (MAP_ENTRIES_MAX as usize + 1)],
        ]
        .concat();
        let frame = map(&[(text("t"), text("push")), (text("x"), inner)]);
        assert_eq!(too_complex(&frame), Some("entries in one map"));
    }

    #[test]
    fn arrays_other_than_changes_are_bounded() {
        let heads = |n: u64| {
            let mut out = head(4, n);
            for _ in 0..n {
                out.extend(bytes(&[7; 32]));
            }
            out
        };
        let push = |n: u64| {
            map(&[
                (text("t"), text("push")),
                (text("doc"), bytes(&[1; 16])),
                (text("base"), heads(n)),
                (text("heads"), head(4, 0)),
                (text("changes"), head(4, 0)),
            ])
        };
        match decode(&push(ARRAY_LEN_MAX), &limits(usize::MAX)) {
            Ok(Message::Push(p)) => assert_eq!(p.base.len() as u64, ARRAY_LEN_MAX),
            other => panic!("expected a push, got {other:?}"),
        }
        assert_eq!(
            too_complex(&push(ARRAY_LEN_MAX + 1)),
            Some("elements in one array")
        );
        // The top level counts too, definite or not.
        assert_eq!(
            too_complex(&[head(4, 5000), vec![0; 5000]].concat()),
            Some("elements in one array")
        );
        assert_eq!(
            too_complex(&[vec![0x9f], vec![0; 5000], vec![0xff]].concat()),
            Some("elements in one array")
        );
    }

    #[test]
    fn items_in_all_are_bounded() {
        // 40 fields of 1,000 integers: every array and map within its
        // bound, the frame past the total.
        let mut entries = vec![(text("t"), text("push"))];
        for i in 0..40 {
            entries.push((
                text(&format!("x{i}")),
                [head(4, 1000), vec![0; 1000]].concat(),
            ));
        }
        let frame = map(&entries);
        let small = Limits {
            frame_bytes_max: usize::MAX,
            changes_per_message_max: 10,
            ..Limits::DEFAULT
        };
        assert!(matches!(
            decode(&frame, &small),
            Err(CodecError::TooComplex { what: "data items in one frame", limit }) if limit == 10 + ITEMS_BESIDES_CHANGES_MAX
        ));
    }

    #[test]
    fn too_many_changes_names_the_document() {
        let limit = Limits::DEFAULT.changes_per_message_max as u64;
        let id = DocId::from_bytes([0x5a; 16]);
        for indefinite in [false, true] {
            for doc_last in [false, true] {
                let frame = push_frame(Some(id), empty_changes(limit + 1, indefinite), doc_last);
                match decode(&frame, &limits(MAX)) {
                    Err(CodecError::TooManyChanges {
                        doc,
                        count,
                        limit: l,
                    }) => {
                        assert_eq!((doc, count, l as u64), (Some(id), limit + 1, limit))
                    }
                    other => panic!("indefinite {indefinite}, doc last {doc_last}: {other:?}"),
                }
                // Exactly at the limit it is an ordinary push.
                let frame = push_frame(Some(id), empty_changes(limit, indefinite), doc_last);
                match decode(&frame, &limits(MAX)) {
                    Ok(Message::Push(p)) => assert_eq!(p.changes.len() as u64, limit),
                    other => panic!("indefinite {indefinite}, doc last {doc_last}: {other:?}"),
                }
            }
        }
        // Without a readable doc the refusal names none.
        let frame = push_frame(None, empty_changes(limit + 1, false), false);
        assert!(matches!(
            decode(&frame, &limits(MAX)),
            Err(CodecError::TooManyChanges { doc: None, .. })
        ));
        // A frame broken after the changes is malformed, not a refusal of
        // one document: the connection cannot be trusted past it.
        let mut frame = push_frame(Some(id), empty_changes(limit + 1, false), true);
        frame.truncate(frame.len() - 1);
        assert!(is_malformed(&frame));
    }

    #[test]
    fn the_type_is_read_in_place() {
        let frame = push_frame(Some(DocId::from_bytes([1; 16])), head(4, 0), true);
        let shape = walk(&frame, 10).unwrap();
        assert!(shape.map);
        assert_eq!(shape.kind, Some("push"));
        assert_eq!(shape.doc, Some(DocId::from_bytes([1; 16])));
        // Not a map; "t" not text; "t" missing.
        for frame in [
            [head(4, 2), text("hello"), head(0, 1)].concat(),
            map(&[(text("t"), head(0, 1))]),
            map(&[(text("version"), head(0, 1))]),
        ] {
            assert!(
                matches!(decode(&frame, &limits(MAX)), Err(CodecError::Invalid { ref kind, .. }) if kind.is_empty()),
                "{frame:02x?}"
            );
        }
        // The first "t" names the type; serde refuses the repeat.
        let frame = map(&[(text("t"), text("cursor")), (text("t"), text("teleport"))]);
        assert!(matches!(
            decode(&frame, &limits(MAX)),
            Err(CodecError::Invalid { ref kind, .. }) if kind == "cursor"
        ));
    }

    /// Any CBOR value tree serde_cbor can write (small enough for the
    /// bounds).
    fn arb_value() -> impl Strategy<Value = serde_cbor::Value> {
        use serde_cbor::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Integer(i.into())),
            any::<u64>().prop_map(|i| Value::Integer(i.into())),
            any::<f64>().prop_map(Value::Float),
            ".{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(inner.clone(), inner, 0..8).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_walk_accepts_all_serde_cbor_writes(value in arb_value()) {
            let frame = serde_cbor::to_vec(&value).unwrap();
            prop_assert!(walk(&frame, 10).is_ok(), "{:02x?}", frame);
        }

        #[test]
        fn the_walk_and_the_parser_agree_on_well_formedness(
            bytes in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            // Where the walk calls bytes malformed, serde_cbor must refuse
            // them too (else a frame the parser takes would close the
            // connection); the converse may differ only by a bound.
            let parsed = serde_cbor::from_slice::<serde_cbor::Value>(&bytes);
            match walk(&bytes, 10) {
                Err(Fault::Malformed(..)) => prop_assert!(parsed.is_err()),
                Ok(_) => prop_assert!(parsed.is_ok(), "{:?}", parsed),
                Err(Fault::Limit(..)) => {}
            }
        }
    }
}
