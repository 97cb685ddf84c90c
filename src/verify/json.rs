//! The strict JSON reader for headers and payloads.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::reason::{Reason, VerifyError};

fn malformed(why: &'static str) -> VerifyError {
    VerifyError::Invalid(Reason::Malformed(why))
}
// ---- Strict JSON reading --------------------------------------------------
//
// One pass over each JSON object with serde_json: members are read into
// typed slots without copying strings that need no unescaping, every member
// name is checked for duplicates (serde_json itself lets the last one win),
// and a value of the wrong JSON type is recorded rather than failing, so the
// error can name the claim. Nesting depth is bounded by serde_json's
// recursion limit (128).

/// A JSON value expected to be a string.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) enum StrVal<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// A JSON value expected to be a number.
#[derive(Clone, Copy)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) enum NumVal {
    Num(f64),
    Other,
}

/// `aud`: a string or an array of strings.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) enum AudVal<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
    Other,
}

#[derive(Default)]
pub(crate) struct RawHeader<'a> {
    pub(crate) alg: Option<StrVal<'a>>,
    pub(crate) kid: Option<StrVal<'a>>,
    pub(crate) typ: Option<StrVal<'a>>,
    pub(crate) crit: bool,
    pub(crate) duplicate: bool,
}

#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct RawClaims<'a> {
    pub(crate) iss: Option<StrVal<'a>>,
    pub(crate) sub: Option<StrVal<'a>>,
    pub(crate) aud: Option<AudVal<'a>>,
    pub(crate) exp: Option<NumVal>,
    pub(crate) iat: Option<NumVal>,
    pub(crate) nbf: Option<NumVal>,
    pub(crate) jti: Option<StrVal<'a>>,
    /// Access tokens: the granted scopes, space-separated.
    pub(crate) scope: Option<StrVal<'a>>,
    /// Access tokens: the machine key whose assertion it was issued for.
    pub(crate) key_id: Option<StrVal<'a>>,
    /// Access tokens: that key's sequence in the store (decimal).
    pub(crate) key_sequence: Option<StrVal<'a>>,
    pub(crate) duplicate: bool,
}

pub(crate) fn parse_header(bytes: &[u8]) -> Result<RawHeader<'_>, VerifyError> {
    let header =
        read_object::<RawHeader>(bytes).map_err(|_| malformed("header is not a JSON object"))?;
    if header.duplicate {
        return Err(malformed("duplicate member in header"));
    }
    Ok(header)
}

pub(crate) fn parse_claims(bytes: &[u8]) -> Result<RawClaims<'_>, VerifyError> {
    let claims = match quick::object::<RawClaims>(bytes) {
        Some(claims) => claims,
        None => read_object(bytes).map_err(|_| malformed("payload is not a JSON object"))?,
    };
    if claims.duplicate {
        return Err(malformed("duplicate member in payload"));
    }
    // `jti` is read for replay protection; only its type is checked here.
    if let Some(StrVal::Other) = claims.jti {
        return Err(malformed("jti is not a string"));
    }
    Ok(claims)
}

/// One JSON object (and nothing after it but whitespace) into `T`'s
/// slots, with serde_json.
fn read_object<'a, T: Slots<'a>>(bytes: &'a [u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let object = de.deserialize_map(ObjectVisitor::<T>::default())?;
    de.end()?;
    Ok(object)
}

/// Tracks the members seen in one object: known members by their slot's
/// bit, the rest by name.
#[derive(Default)]
struct Seen<'a> {
    known: u32,
    /// The first names, in a list: objects in real tokens have few unknown
    /// members, and most have none (no allocation then).
    few: Vec<Cow<'a, str>>,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Seen<'a> {
    const FEW: usize = 16;

    /// Records a member with slot `slot` (or, without one, its `name`);
    /// false when it was seen before in this object.
    fn first(&mut self, slot: Option<u8>, name: Cow<'a, str>) -> bool {
        match slot {
            Some(i) => {
                let first = self.known & (1 << i) == 0;
                self.known |= 1 << i;
                first
            }
            None => self.insert(name),
        }
    }

    /// Records `name`; false when it was seen before.
    fn insert(&mut self, name: Cow<'a, str>) -> bool {
        if self.few.contains(&name) || self.many.contains(&name) {
            return false;
        }
        if self.few.len() < Self::FEW {
            self.few.push(name);
        } else {
            self.many.insert(name);
        }
        true
    }
}

/// Reads the members of one JSON object into `T`'s slots.
trait Slots<'de>: Default {
    /// The one slot whose value may be an array of strings (kept as a
    /// list); every other array is read as "not the expected type".
    const LIST: Option<u8> = None;
    /// Slots whose value is not read, only skipped (one bit per slot):
    /// serde_json checks that it is well-formed JSON and nothing more, as
    /// for unknown members (a number past f64's range or a lone surrogate
    /// escape is not refused there). `put` must not depend on their value:
    /// serde_json's reader passes `Value::Other`, the quick reader the
    /// plain value it read.
    const SKIPPED: u32 = 0;
    /// The slot of member `name`, if it has one (at most 32 slots).
    fn slot(name: &str) -> Option<u8>;
    /// Stores the value of the member whose slot is `slot`.
    fn put(&mut self, slot: u8, value: Value<'de>);
    fn mark_duplicate(&mut self);
}

impl<'de> Slots<'de> for RawHeader<'de> {
    const SKIPPED: u32 = 1 << 3;
    fn slot(name: &str) -> Option<u8> {
        // jwk, jku, x5u, x5c and the rest have none: the key always comes
        // from the store.
        Some(match name {
            "alg" => 0,
            "kid" => 1,
            "typ" => 2,
            "crit" => 3,
            _ => return None,
        })
    }
    fn put(&mut self, slot: u8, value: Value<'de>) {
        match slot {
            0 => self.alg = Some(value.into_str()),
            1 => self.kid = Some(value.into_str()),
            2 => self.typ = Some(value.into_str()),
            _ => self.crit = true,
        }
    }
    fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }
}

/// A name of at most 7 bytes as the integer [`RawClaims::slot`] compares:
/// its bytes, zero-padded, and its length in the last byte, so names of
/// different lengths never pack alike (`"iss"` and `"iss\0"` differ).
const fn packed(name: &str) -> u64 {
    // Shifted into a register: bytes stored to an array and read back as
    // one word stall the load.
    let bytes = name.as_bytes();
    let mut word = (bytes.len() as u64) << 56;
    let mut i = 0;
    while i < bytes.len() {
        word |= (bytes[i] as u64) << (8 * i);
        i += 1;
    }
    word
}
const ISS: u64 = packed("iss");
const SUB: u64 = packed("sub");
const JTI: u64 = packed("jti");
const SCOPE: u64 = packed("scope");
const KEY_ID: u64 = packed("key_id");
const AUD: u64 = packed("aud");
const EXP: u64 = packed("exp");
const IAT: u64 = packed("iat");
const NBF: u64 = packed("nbf");

impl<'de> Slots<'de> for RawClaims<'de> {
    const LIST: Option<u8> = Some(5);
    const SKIPPED: u32 = 1 << 9 | 1 << 10;
    fn slot(name: &str) -> Option<u8> {
        // Short names compared as one integer each (a string match
        // compares bytes with a call per candidate).
        if name.len() <= 7 {
            return Some(match packed(name) {
                ISS => 0,
                SUB => 1,
                JTI => 2,
                SCOPE => 3,
                KEY_ID => 4,
                AUD => 5,
                EXP => 6,
                IAT => 7,
                NBF => 8,
                _ => return None,
            });
        }
        Some(match name {
            // Claims of our own access tokens, not read (tracked, so a
            // duplicate is still found, without a name list).
            "client_id" => 9,
            crate::token::RESOURCE_OWNER_CLAIM => 10,
            crate::token::KEY_SEQUENCE_CLAIM => 11,
            _ => return None,
        })
    }
    fn put(&mut self, slot: u8, value: Value<'de>) {
        match slot {
            0 => self.iss = Some(value.into_str()),
            1 => self.sub = Some(value.into_str()),
            2 => self.jti = Some(value.into_str()),
            3 => self.scope = Some(value.into_str()),
            4 => self.key_id = Some(value.into_str()),
            5 => {
                self.aud = Some(match value {
                    Value::Str(s) => AudVal::One(s),
                    Value::StrList(list) => AudVal::Many(list),
                    _ => AudVal::Other,
                })
            }
            6 => self.exp = Some(value.into_num()),
            7 => self.iat = Some(value.into_num()),
            8 => self.nbf = Some(value.into_num()),
            11 => self.key_sequence = Some(value.into_str()),
            _ => {}
        }
    }
    fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<T> Default for ObjectVisitor<T> {
    fn default() -> Self {
        ObjectVisitor(std::marker::PhantomData)
    }
}

impl<'de, T: Slots<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        let mut seen = Seen::default();
        while let Some(NameSeed(name)) = map.next_key::<NameSeed>()? {
            let slot = T::slot(&name);
            let first = seen.first(slot, name);
            match slot {
                _ if !first => {
                    out.mark_duplicate();
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) if T::SKIPPED & (1 << i) != 0 => {
                    map.next_value::<IgnoredAny>()?;
                    out.put(i, Value::Other);
                }
                Some(i) => {
                    let value = map.next_value_seed(ValueSeed {
                        lists: T::LIST == Some(i),
                    })?;
                    out.put(i, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A member name, borrowed from the input when it has no escapes.
struct NameSeed<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for NameSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameSeed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(NameSeed(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NameSeed(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, classified: a string, a number, an array of strings, or
/// something else. The one visitor behind every claim slot.
enum Value<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    /// An array whose elements are all strings (read only where a list is
    /// expected).
    StrList(Vec<Cow<'a, str>>),
    Other,
}

/// Reads one value; `lists` says whether an array of strings is kept
/// (`aud`) or skipped. Elements of a kept array are read with `lists`
/// false, so nesting is skipped by serde_json's non-recursive skipper, never
/// recursed into here.
#[derive(Clone, Copy)]
struct ValueSeed {
    lists: bool,
}

impl<'de> de::DeserializeSeed<'de> for ValueSeed {
    type Value = Value<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(Value::Num(v as f64))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Value::Num(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value<'de>, E> {
        Ok(Value::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        if !self.lists {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Value::Other);
        }
        let mut list = Vec::new();
        let mut all_strings = true;
        while let Some(item) = seq.next_element_seed(ValueSeed { lists: false })? {
            match item {
                Value::Str(s) if all_strings => list.push(s),
                _ => all_strings = false,
            }
        }
        Ok(if all_strings {
            Value::StrList(list)
        } else {
            Value::Other
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Other)
    }
}

impl<'a> Value<'a> {
    /// The value of a string slot.
    fn into_str(self) -> StrVal<'a> {
        match self {
            Value::Str(s) => StrVal::Str(s),
            _ => StrVal::Other,
        }
    }
    /// The value of a number slot.
    fn into_num(self) -> NumVal {
        match self {
            Value::Num(n) => NumVal::Num(n),
            _ => NumVal::Other,
        }
    }
}

/// The quick reader: one pass over a payload in the plain shape that
/// tokens have in practice (printable ASCII without backslashes, so no
/// escapes, no control characters and no whitespace but spaces; a flat
/// object; numbers that are non-negative integers of at most 15 digits, so
/// exact as f64; `true`, `false`, `null`; an array only where a list is
/// kept, and only of strings). It gives what serde_json's reading gives,
/// slot for slot, or `None` for anything else, which serde_json then reads
/// and decides: the quick reader never refuses and never accepts on its own
/// (a test compares the two on generated payloads).
mod quick {
    use std::borrow::Cow;

    use super::{Seen, Slots, Value};

    /// Whether every byte is printable ASCII (space to `~`) and none is a
    /// backslash: one branch-free pass the compiler vectorizes.
    fn plain(bytes: &[u8]) -> bool {
        let odd = bytes.iter().fold(0u8, |odd, &b| {
            odd | u8::from(!(0x20..0x7f).contains(&b)) | u8::from(b == b'\\')
        });
        odd == 0
    }

    struct Cursor<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Cursor<'a> {
        /// The next byte after spaces (the only whitespace a plain text has).
        fn peek(&mut self) -> Option<u8> {
            let bytes = self.text.as_bytes();
            while bytes.get(self.at) == Some(&b' ') {
                self.at += 1;
            }
            bytes.get(self.at).copied()
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// A string, at its opening quote (a plain text has no escapes).
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.at;
            let len = memchr::memchr(b'"', &self.text.as_bytes()[start..])?;
            self.at = start + len + 1;
            Some(&self.text[start..start + len])
        }

        /// A non-negative integer of 1 to 15 digits, no leading zero. A
        /// fraction or an exponent after it is left to serde_json by the
        /// member loop, which takes only `,` or `}` after a value.
        fn integer(&mut self) -> Option<f64> {
            let digits = &self.text.as_bytes()[self.at..];
            let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if len == 0 || len > 15 || (len > 1 && digits[0] == b'0') {
                return None;
            }
            self.at += len;
            let n = digits[..len]
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            Some(n as f64)
        }

        fn literal(&mut self, word: &str) -> Option<Value<'a>> {
            self.text[self.at..].starts_with(word).then(|| {
                self.at += word.len();
                Value::Other
            })
        }

        /// A value that is neither a string nor a number.
        fn other(&mut self, list: bool) -> Option<Value<'a>> {
            match self.peek()? {
                b't' => self.literal("true"),
                b'f' => self.literal("false"),
                b'n' => self.literal("null"),
                b'[' if list => {
                    self.at += 1;
                    let mut items = Vec::new();
                    if self.peek()? != b']' {
                        loop {
                            items.push(Cow::Borrowed(self.string()?));
                            match self.peek()? {
                                b',' => self.at += 1,
                                b']' => break,
                                _ => return None,
                            }
                        }
                    }
                    self.at += 1;
                    Some(Value::StrList(items))
                }
                _ => None,
            }
        }
    }

    /// `T` read from `bytes` if they have the plain shape, else `None`.
    pub(super) fn object<'a, T: Slots<'a>>(bytes: &'a [u8]) -> Option<T> {
        if !plain(bytes) {
            return None;
        }
        // Printable ASCII: valid UTF-8, checked again at no cost worth
        // an `unsafe`.
        let text = std::str::from_utf8(bytes).ok()?;
        let mut cursor = Cursor { text, at: 0 };
        cursor.eat(b'{')?;
        let mut out = T::default();
        let mut seen = Seen::default();
        if cursor.peek()? != b'}' {
            loop {
                let name = cursor.string()?;
                cursor.eat(b':')?;
                let slot = T::slot(name);
                let first = seen.first(slot, Cow::Borrowed(name));
                if !first {
                    out.mark_duplicate();
                }
                let keep = slot.filter(|_| first);
                // Each value is built where it is stored: a value returned
                // through memory and copied again stalls the copy.
                match cursor.peek()? {
                    b'"' => {
                        let s = cursor.string()?;
                        if let Some(i) = keep {
                            out.put(i, Value::Str(Cow::Borrowed(s)));
                        }
                    }
                    b'0'..=b'9' => {
                        let n = cursor.integer()?;
                        if let Some(i) = keep {
                            out.put(i, Value::Num(n));
                        }
                    }
                    _ => {
                        let value = cursor.other(slot.is_some() && slot == T::LIST)?;
                        if let Some(i) = keep {
                            out.put(i, value);
                        }
                    }
                }
                match cursor.peek()? {
                    b',' => cursor.at += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        cursor.at += 1;
        (cursor.peek().is_none()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_found_past_the_small_set() {
        let mut json = String::from("{");
        for i in 0..40 {
            json.push_str(&format!("\"m{i}\":0,"));
        }
        json.push_str("\"m3\":1}");
        let claims = parse_claims(json.as_bytes());
        assert!(matches!(
            claims.err(),
            Some(VerifyError::Invalid(Reason::Malformed(
                "duplicate member in payload"
            )))
        ));
    }

    #[test]
    fn escaped_duplicate_names_are_duplicates() {
        let err = parse_header(br#"{"kid":"a","k\u0069d":"b"}"#).err();
        assert!(matches!(
            err,
            Some(VerifyError::Invalid(Reason::Malformed(
                "duplicate member in header"
            )))
        ));
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        // 100 000 levels would overflow the stack if skipping recursed.
        let json = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_claims(json.as_bytes()).is_ok());
        let json = format!("{{\"iss\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let claims = parse_claims(json.as_bytes()).ok();
        assert!(matches!(claims.and_then(|c| c.iss), Some(StrVal::Other)));
    }

    /// The quick reader against serde_json's, on payloads generated from
    /// members that tokens have and members that are subtly not plain
    /// (escapes, control characters, non-ASCII, floats, leading zeros,
    /// long integers, nesting), then mutated byte by byte: whenever the
    /// quick reader answers, serde_json answers the same, slot for slot.
    #[test]
    fn the_quick_reader_reads_as_serde_json_does() {
        // Plain members, then ones that are not (escapes, control
        // characters, non-ASCII, floats, leading zeros, long integers,
        // nesting), picked one time in 16.
        const NAMES: &[&str] = &[
            "iss",
            "sub",
            "jti",
            "scope",
            "key_id",
            "aud",
            "exp",
            "iat",
            "nbf",
            "client_id",
            "key_sequence",
            "urn:zitadel:iam:user:resourceowner:id",
            "x",
            "",
            "ISS",
            "iss ",
            "aaaaaaa",
            "aaaaaaaa",
            "key_sequenc",
        ];
        const ODD_NAMES: &[&str] = &["i\\u0073s", "iss\\u0000", "caf\u{e9}", "a\\\"b", "a\tb"];
        const VALUES: &[&str] = &[
            "\"a\"",
            "\"\"",
            "\"bench\"",
            "0",
            "7",
            "123456789012345",
            "1234567890123456",
            "true",
            "false",
            "null",
            "[]",
            "[\"a\"]",
            "[\"a\",\"b\"]",
            "[ \"a\" , \"b\" ]",
        ];
        const ODD_VALUES: &[&str] = &[
            "\"caf\u{e9}\"",
            "\"a\\\"b\"",
            "\"a\\u0062\"",
            "\"tab\there\"",
            "-1",
            "-0",
            "1.5",
            "1e3",
            "1E3",
            "2.",
            "99999999999999999999",
            "nul",
            "[[]]",
            "[1]",
            "{}",
            "{\"a\":1}",
            "01",
            "tru",
            "[\"a\",1]",
            "\"open",
        ];
        const SPACE: &[&str] = &["", "", "", " ", "  "];
        const ODD_SPACE: &[&str] = &["\n", "\t", "\r", "\u{a0}"];
        const NOISE: &[u8] = b"{}[],:\" \\0a1.-e\t\x7f";
        /// xorshift64: the same payloads on every run.
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: usize) -> usize {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % n as u64) as usize
            }
            fn pick(&mut self, plain: &[&'static str], odd: &[&'static str]) -> &'static str {
                if self.below(16) == 0 {
                    odd[self.below(odd.len())]
                } else {
                    plain[self.below(plain.len())]
                }
            }
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut quick_read, mut left_to_serde, mut refused) = (0, 0, 0);
        for _ in 0..40_000 {
            let mut json = String::from(rng.pick(SPACE, ODD_SPACE));
            json.push('{');
            let members = rng.below(7);
            for m in 0..members {
                if m > 0 {
                    json.push_str(rng.pick(SPACE, ODD_SPACE));
                    json.push(',');
                }
                json.push_str(rng.pick(SPACE, ODD_SPACE));
                json.push('"');
                json.push_str(rng.pick(NAMES, ODD_NAMES));
                json.push('"');
                json.push_str(rng.pick(SPACE, ODD_SPACE));
                json.push(':');
                json.push_str(rng.pick(SPACE, ODD_SPACE));
                json.push_str(rng.pick(VALUES, ODD_VALUES));
            }
            json.push_str(rng.pick(SPACE, ODD_SPACE));
            json.push('}');
            json.push_str(rng.pick(SPACE, ODD_SPACE));
            let mut bytes = json.into_bytes();
            for _ in 0..[0, 0, 0, 1, 1, 2][rng.below(6)] {
                let at = rng.below(bytes.len() + 1);
                match rng.below(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => bytes[at] = NOISE[rng.below(NOISE.len())],
                    _ => bytes.insert(at, NOISE[rng.below(NOISE.len())]),
                }
            }
            let serde = read_object::<RawClaims>(&bytes).ok();
            match quick::object::<RawClaims>(&bytes) {
                Some(quick) => {
                    quick_read += 1;
                    assert_eq!(
                        Some(&quick),
                        serde.as_ref(),
                        "{}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                None if serde.is_some() => left_to_serde += 1,
                None => refused += 1,
            }
        }
        // Each way taken often enough for the comparison to mean something.
        assert!(
            quick_read > 4_000 && left_to_serde > 4_000 && refused > 4_000,
            "{quick_read} read quickly, {left_to_serde} left to serde_json, {refused} refused"
        );
    }

    /// Members whose value is only skipped (`client_id`, the resource
    /// owner claim, `crit`) are checked as well-formed JSON and no more, as
    /// before the quick reader came: an outside review found them refused
    /// once they were read as values.
    #[test]
    fn skipped_members_are_only_checked_as_json() {
        for payload in [
            &br#"{"client_id":1e400}"#[..],
            br#"{"urn:zitadel:iam:user:resourceowner:id":-1e309}"#,
            br#"{"client_id":"\ud800"}"#,
            b"{\"client_id\":\"\xff\"}",
        ] {
            assert!(
                parse_claims(payload).is_ok(),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        for header in [
            &br#"{"alg":"RS256","crit":1e400}"#[..],
            br#"{"alg":"RS256","crit":"\udc00"}"#,
        ] {
            assert!(parse_header(header).is_ok_and(|h| h.crit));
        }
        // A value that is read still is refused for the same bytes.
        assert!(parse_claims(br#"{"exp":1e400}"#).is_err());
    }

    #[test]
    fn aud_with_non_string_element_is_malformed() {
        let c = parse_claims(br#"{"aud":["a",1]}"#).ok().and_then(|c| c.aud);
        assert!(matches!(c, Some(AudVal::Other)));
    }
}
