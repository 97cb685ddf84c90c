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
pub(crate) enum StrVal<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// A JSON value expected to be a number.
#[derive(Clone, Copy)]
pub(crate) enum NumVal {
    Num(f64),
    Other,
}

/// `aud`: a string or an array of strings.
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
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let header = de
        .deserialize_map(ObjectVisitor::<RawHeader>::default())
        .and_then(|h| de.end().map(|()| h))
        .map_err(|_| malformed("header is not a JSON object"))?;
    if header.duplicate {
        return Err(malformed("duplicate member in header"));
    }
    Ok(header)
}

pub(crate) fn parse_claims(bytes: &[u8]) -> Result<RawClaims<'_>, VerifyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let claims = de
        .deserialize_map(ObjectVisitor::<RawClaims>::default())
        .and_then(|c| de.end().map(|()| c))
        .map_err(|_| malformed("payload is not a JSON object"))?;
    if claims.duplicate {
        return Err(malformed("duplicate member in payload"));
    }
    // `jti` is read for replay protection; only its type is checked here.
    if let Some(StrVal::Other) = claims.jti {
        return Err(malformed("jti is not a string"));
    }
    Ok(claims)
}

/// Tracks the names of unknown members seen in one object (known members
/// are tracked by their slot's bit).
#[derive(Default)]
struct Seen<'a> {
    /// The first names, in a list: objects in real tokens have few unknown
    /// members, and most have none (no allocation then).
    few: Vec<Cow<'a, str>>,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Seen<'a> {
    const FEW: usize = 16;

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
    /// The slot of member `name`, if it has one (at most 32 slots).
    fn slot(name: &str) -> Option<u8>;
    /// Reads the value of the member whose slot is `slot`.
    fn read<A: MapAccess<'de>>(&mut self, slot: u8, map: &mut A) -> Result<(), A::Error>;
    fn mark_duplicate(&mut self);
}

impl<'de> Slots<'de> for RawHeader<'de> {
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
    fn read<A: MapAccess<'de>>(&mut self, slot: u8, map: &mut A) -> Result<(), A::Error> {
        match slot {
            0 => self.alg = Some(read_str(map)?),
            1 => self.kid = Some(read_str(map)?),
            2 => self.typ = Some(read_str(map)?),
            _ => {
                map.next_value::<IgnoredAny>()?;
                self.crit = true;
            }
        }
        Ok(())
    }
    fn mark_duplicate(&mut self) {
        self.duplicate = true;
    }
}

impl<'de> Slots<'de> for RawClaims<'de> {
    fn slot(name: &str) -> Option<u8> {
        Some(match name {
            "iss" => 0,
            "sub" => 1,
            "jti" => 2,
            "scope" => 3,
            "key_id" => 4,
            "aud" => 5,
            "exp" => 6,
            "iat" => 7,
            "nbf" => 8,
            // Claims of our own access tokens, not read (tracked, so a
            // duplicate is still found, without a name list).
            "client_id" => 9,
            crate::token::RESOURCE_OWNER_CLAIM => 10,
            crate::token::KEY_SEQUENCE_CLAIM => 11,
            _ => return None,
        })
    }
    fn read<A: MapAccess<'de>>(&mut self, slot: u8, map: &mut A) -> Result<(), A::Error> {
        match slot {
            0 => self.iss = Some(read_str(map)?),
            1 => self.sub = Some(read_str(map)?),
            2 => self.jti = Some(read_str(map)?),
            3 => self.scope = Some(read_str(map)?),
            4 => self.key_id = Some(read_str(map)?),
            5 => self.aud = Some(read_aud(map)?),
            6 => self.exp = Some(read_num(map)?),
            7 => self.iat = Some(read_num(map)?),
            8 => self.nbf = Some(read_num(map)?),
            11 => self.key_sequence = Some(read_str(map)?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
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
        // Known members by their slot's bit; the rest by name.
        let mut known = 0u32;
        let mut unknown = Seen::default();
        while let Some(NameSeed(name)) = map.next_key::<NameSeed>()? {
            let slot = T::slot(&name);
            let first = match slot {
                Some(i) => {
                    let first = known & (1 << i) == 0;
                    known |= 1 << i;
                    first
                }
                None => unknown.insert(name),
            };
            match slot {
                _ if !first => {
                    out.mark_duplicate();
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) => out.read(i, &mut map)?,
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

/// Reads a member's value as a string slot.
fn read_str<'de, A: MapAccess<'de>>(map: &mut A) -> Result<StrVal<'de>, A::Error> {
    Ok(match map.next_value_seed(ValueSeed { lists: false })? {
        Value::Str(s) => StrVal::Str(s),
        _ => StrVal::Other,
    })
}

/// Reads a member's value as a number slot.
fn read_num<'de, A: MapAccess<'de>>(map: &mut A) -> Result<NumVal, A::Error> {
    Ok(match map.next_value_seed(ValueSeed { lists: false })? {
        Value::Num(n) => NumVal::Num(n),
        _ => NumVal::Other,
    })
}

/// Reads `aud`: a string, or an array whose elements are all strings.
fn read_aud<'de, A: MapAccess<'de>>(map: &mut A) -> Result<AudVal<'de>, A::Error> {
    Ok(match map.next_value_seed(ValueSeed { lists: true })? {
        Value::Str(s) => AudVal::One(s),
        Value::StrList(list) => AudVal::Many(list),
        _ => AudVal::Other,
    })
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

    #[test]
    fn aud_with_non_string_element_is_malformed() {
        let c = parse_claims(br#"{"aud":["a",1]}"#).ok().and_then(|c| c.aud);
        assert!(matches!(c, Some(AudVal::Other)));
    }
}
