//! Wire messages. Every frame carries exactly one [`Message`]; the codec
//! module turns them into bytes.

use std::fmt;
use std::str::FromStr;

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every version this build can speak, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// A record's stable identity: 16 random bytes, shown as a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DocId(#[serde(with = "serde_bytes")] [u8; 16]);

impl DocId {
    /// Wraps 16 bytes (for example a v4 UUID) as a document id.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DocId(bytes)
    }

    /// The raw 16 bytes, as stored in keys.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

/// A document id that is not 32 hex digits (dashes allowed).
#[derive(Debug, thiserror::Error)]
#[error("not a document id: expected 32 hex digits, optionally with dashes")]
pub struct ParseDocIdError;

impl FromStr for DocId {
    type Err = ParseDocIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        if digits.len() != 32 {
            return Err(ParseDocIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(ParseDocIdError)?;
            let lo = hex_val(pair[1]).ok_or(ParseDocIdError)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(DocId::from_bytes(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One head of a document: the hash of a change nobody depends on yet.
/// Sent as 32 raw bytes rather than automerge's hex string form, to halve
/// the bytes a reconnect spends on heads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Head(#[serde(with = "serde_bytes")] [u8; 32]);

impl Head {
    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ChangeHash::from(*self))
    }
}

impl From<ChangeHash> for Head {
    fn from(h: ChangeHash) -> Self {
        Head(h.0)
    }
}

impl From<Head> for ChangeHash {
    fn from(h: Head) -> Self {
        ChangeHash(h.0)
    }
}

/// Converts automerge heads to wire heads.
pub fn to_heads(hashes: &[ChangeHash]) -> Vec<Head> {
    hashes.iter().copied().map(Head::from).collect()
}

/// Converts wire heads to automerge heads.
pub fn to_hashes(heads: &[Head]) -> Vec<ChangeHash> {
    heads.iter().copied().map(ChangeHash::from).collect()
}

/// Identifies one server store. A client that sees a different id than the
/// one its cursor belongs to (the store was replaced, or restarted after an
/// unclean stop and may have lost unflushed writes) re-offers everything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreId(#[serde(with = "serde_bytes")] [u8; 16]);

impl StoreId {
    /// Wraps 16 random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        StoreId(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A position in the server's changes feed. Sequence numbers only grow.
pub type Seq = u64;

/// Why the peer is refusing something. Stable names: clients match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid CBOR, or not a well-formed message.
    MalformedFrame,
    /// The frame is larger than the receiver accepts.
    FrameTooLarge,
    /// The hello named a protocol version the receiver does not speak.
    UnsupportedVersion,
    /// The message type is not one this version knows.
    UnknownMessageType,
    /// The message is valid but not allowed in the current phase.
    UnexpectedMessage,
    /// Automerge bytes that do not decode.
    CorruptChanges,
    /// The document would grow past the size limit.
    DocTooLarge,
    /// More changes in one message than allowed.
    TooManyChanges,
    /// The device may not do this (e.g. changes under another device's actor).
    Forbidden,
    /// The record does not fit its schema (names the record and field).
    InvalidRecord,
    /// A change adds a field the record's schema does not have (a typo
    /// such as `titel`) to a record of a schema version the server knows.
    /// The message names the record, the field and the fields there are.
    UnknownField,
    /// The server could not store the change; nothing was acknowledged.
    StorageFailure,
    /// The device was reported lost or stolen: it must wipe its store
    /// without uploading anything more.
    Revoked,
    /// Server → client: the device is being retired; upload what is not
    /// acknowledged, then wipe. Client → server (fatal): wiped, goodbye.
    Retired,
    /// An administrator erased this record: delete it, unsent changes too.
    Erased,
    /// The server holds this record back (damaged, or quarantined by an
    /// administrator): keep it and try again later.
    Quarantined,
}

/// Everything that crosses the wire. The first message a client sends is
/// always [`Message::Hello`]; the server answers [`Message::Welcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// Client → server, first frame: who I am in the feed.
    Hello(Hello),
    /// Server → client: the handshake is accepted.
    Welcome(Welcome),
    /// Client → server: my changes to one document since the heads we last
    /// agreed on.
    Push(Push),
    /// Server → client: these heads of this document are durable on the server.
    Ack(Ack),
    /// Server → client: changes to a document the client lacks.
    Changes(Changes),
    /// Server → client: you now have everything up to this feed position.
    Cursor(CursorMsg),
    /// Either way: an automerge sync-protocol message for one document, used
    /// when the two sides do not share known heads.
    Sync(SyncMsg),
    /// Either way: something was refused.
    Error(ErrorMsg),
    /// Server → client, only to a client whose hello asked for names: the
    /// names of devices whose changes it is sent.
    Devices(DevicesMsg),
    /// Server → client, only to a client whose hello offered the packing
    /// the welcome chose: several frames compressed together.
    Packed(Packed),
}

impl Message {
    /// The wire name of this message's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Push(_) => "push",
            Message::Ack(_) => "ack",
            Message::Changes(_) => "changes",
            Message::Cursor(_) => "cursor",
            Message::Sync(_) => "sync",
            Message::Error(_) => "error",
            Message::Devices(_) => "devices",
            Message::Packed(_) => "packed",
        }
    }

    /// Every type name this version knows, for telling unknown types apart
    /// from malformed ones.
    pub const KINDS: &'static [&'static str] = &[
        "hello", "welcome", "push", "ack", "changes", "cursor", "sync", "error", "devices",
        "packed",
    ];
}

/// The client's opening message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u32,
    /// The store the client's cursor belongs to, if it has synced before.
    pub store: Option<StoreId>,
    /// The last feed position the client fully received (0 if none).
    pub cursor: Seq,
    /// True when the client wants [`Message::Devices`] before changes by
    /// devices it has not been told the names of. Left out by clients
    /// that predate it (and ignored by servers that do), so neither side
    /// meets a message type it does not know.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub names: bool,
    /// How the client can take frames packed together, best first; left
    /// out by clients that cannot (and ignored by servers that predate it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packing: Vec<Packing>,
}

/// The server's answer to a hello.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version chosen for this connection.
    pub version: u32,
    /// The server's store id.
    pub store: StoreId,
    /// The feed position at the time of the hello: once the client has a
    /// cursor at least this far, it has everything the server had then.
    pub seq: Seq,
    /// True when the client's cursor belongs to another store (or is ahead of
    /// this one): it must forget its cursor and re-offer all it holds.
    pub reset: bool,
    /// True when the server sends the feed again from the start, because
    /// this client may now read records it could not before (its user's
    /// role or areas changed). The client keeps what it knows the server
    /// holds, and is settled only once the feed has caught up again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refeed: bool,
    /// The packing the server will use for what it sends on this
    /// connection, one the hello offered; none if it packs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<Packing>,
}

/// A client's changes to one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// The document.
    pub doc: DocId,
    /// Heads the server acknowledged before: the changes below are the ones
    /// since these.
    pub base: Vec<Head>,
    /// The client's heads after these changes.
    pub heads: Vec<Head>,
    /// Raw automerge changes, one per element.
    pub changes: Vec<ByteBuf>,
}

/// Durability acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The document.
    pub doc: DocId,
    /// The server's heads for it, all stored durably.
    pub heads: Vec<Head>,
    /// The feed position by which these heads are durable. A client is not
    /// settled until its cursor reaches it, so its next sync does not fetch
    /// its own writes back.
    #[serde(default)]
    pub seq: Seq,
}

/// Changes the client lacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Numbers the `Changes` messages of one connection from 1, so a
    /// [`CursorMsg`] can say how many must have arrived before the client
    /// may move its cursor.
    pub n: u64,
    /// The document.
    pub doc: DocId,
    /// The server's heads after these changes are applied.
    pub heads: Vec<Head>,
    /// Concatenated automerge change chunks or a whole saved document; either
    /// loads with `load_incremental`.
    pub data: ByteBuf,
}

/// Feed position reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CursorMsg {
    /// Everything up to and including this position has been sent.
    pub seq: Seq,
    /// ... in the `Changes` messages numbered up to this one.
    pub n: u64,
}

/// One automerge sync-protocol message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncMsg {
    /// The document.
    pub doc: DocId,
    /// `automerge::sync::Message::encode` output.
    pub data: ByteBuf,
}

/// A device's id: the first [`DeviceId::LEN`] bytes of every automerge
/// actor id it writes under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(#[serde(with = "serde_bytes")] [u8; 16]);

impl DeviceId {
    /// Bytes in a device id.
    pub const LEN: usize = 16;

    /// Wraps 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        DeviceId(bytes)
    }

    /// The device an actor id belongs to; None for one shorter than a
    /// device id (not written by a Baraza device).
    pub fn of_actor(actor: &[u8]) -> Option<DeviceId> {
        let bytes: [u8; 16] = actor.get(..Self::LEN)?.try_into().ok()?;
        Some(DeviceId(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, as the server's registry and actor ids spell it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits.
    pub fn from_hex(hex: &str) -> Option<DeviceId> {
        let digits = hex.as_bytes();
        if digits.len() != 2 * Self::LEN {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(DeviceId(out))
    }
}

/// Lowercase hex, as logs, audit entries and the registry spell it.
impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.to_hex())
    }
}

/// One device and the name it was registered under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceName {
    /// The device.
    pub device: DeviceId,
    /// Its name ("Kibera tablet 3"), at most [`DevicesMsg::NAME_CHARS_MAX`]
    /// characters.
    pub name: String,
}

/// Names of devices, so a tablet can say who made a change rather than
/// print an actor id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevicesMsg {
    /// At most [`DevicesMsg::NAMES_MAX`] entries.
    pub names: Vec<DeviceName>,
}

impl DevicesMsg {
    /// Most names in one message: a document rarely has more than a few
    /// dozen authors, and the codec's bounds on items stay far off.
    pub const NAMES_MAX: usize = 256;
    /// Longest name sent, in characters; longer ones are cut.
    pub const NAME_CHARS_MAX: usize = 128;
}

/// A way of compressing frames together. A name this version does not
/// know is read as [`Packing::Unknown`], so a newer peer's offer does not
/// make the whole hello unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Packing {
    /// Raw DEFLATE (RFC 1951) over the frames.
    Deflate,
    /// A packing this version does not know; never chosen.
    Unknown,
}

impl From<String> for Packing {
    fn from(name: String) -> Self {
        match name.as_str() {
            "deflate" => Packing::Deflate,
            _ => Packing::Unknown,
        }
    }
}

impl From<Packing> for String {
    fn from(p: Packing) -> Self {
        match p {
            Packing::Deflate => "deflate",
            Packing::Unknown => "unknown",
        }
        .to_string()
    }
}

/// Several frames compressed into one. Once inflated, `data` is the
/// frames one after another, each as its length (4 bytes, big-endian) and
/// its bytes; each decodes as a frame on its own would, and none is
/// itself packed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packed {
    /// How `data` is compressed.
    pub packing: Packing,
    /// Bytes `data` inflates to: refused above the frame limit before
    /// anything is inflated, and refused if the inflated bytes differ.
    pub size: u64,
    /// Frames inside.
    pub frames: u64,
    /// The compressed frames.
    pub data: ByteBuf,
}

/// A refusal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// The document concerned, if the error is about one.
    pub doc: Option<DocId>,
    /// Human-readable reason naming the problem.
    pub message: String,
    /// True when the sender closes the connection after this message.
    pub fatal: bool,
    /// The access rule a refused change broke (`review_by_area_supervisor`),
    /// so the tablet can show which rule, not only that it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}
