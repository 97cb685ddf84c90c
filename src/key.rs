//! Machine keys: the stored record, its public key, and key-pair generation.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::{self, ParsedPublicKey};
use chrono::{DateTime, TimeZone, Utc};
use rsa::pkcs1::der::Decode;
use rsa::pkcs8::ObjectIdentifier;
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;

use crate::error::{Error, ErrorKind};

/// Largest accepted public key document (PEM), in bytes.
pub const MAX_PUBLIC_KEY_BYTES: usize = 16 * 1024;
/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits.
pub const MAX_RSA_BITS: usize = 8192;

pub(crate) const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(crate) const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub(crate) const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The default expiration date of a key: `9999-12-31T23:59:59Z`.
pub fn default_expiration() -> DateTime<Utc> {
    max_date()
}

/// Longest accepted user id, key id or organization id, in bytes.
pub const MAX_ID_BYTES: usize = 200;

/// What is wrong with an identifier (user id, key id, organization id), or
/// `None` when it is 1–200 bytes of UTF-8 with no control character and no
/// `/`. The one home of this rule: the key service checks path and header
/// values with it, the verifier checks `kid` with it before any store read.
pub(crate) fn id_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_ID_BYTES {
        Some("is longer than 200 bytes")
    } else if value.chars().any(char::is_control) {
        Some("contains a control character")
    } else if value.contains('/') {
        Some("contains '/'")
    } else {
        None
    }
}

/// The latest date the crate represents, `9999-12-31T23:59:59Z`, in
/// seconds after the epoch: the latest expiration date and the latest
/// NumericDate a token may carry.
pub(crate) const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// [`MAX_UNIX_SECS`] as a date.
pub(crate) fn max_date() -> DateTime<Utc> {
    Utc.timestamp_opt(MAX_UNIX_SECS, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The type of a machine key. `KEY_TYPE_JSON` is the only type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// A key whose private half is handed out as a JSON key file.
    #[default]
    Json,
}

impl KeyType {
    /// The proto3 JSON name, `KEY_TYPE_JSON`.
    pub fn as_str(self) -> &'static str {
        "KEY_TYPE_JSON"
    }
}

/// A JWS signature algorithm that the crate can verify.
///
/// `none` and the HMAC algorithms are deliberately absent: a key from the
/// store is always a public key, so they can never be right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The JOSE name (`"RS256"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name, exactly (case-sensitive, as RFC 7515 requires).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether this algorithm may be used with a key of `kind`.
    pub fn fits(self, kind: KeyKind) -> bool {
        matches!(
            (self, kind),
            (
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512,
                KeyKind::Rsa { .. }
            ) | (Algorithm::ES256, KeyKind::P256)
                | (Algorithm::ES384, KeyKind::P384)
                | (Algorithm::EdDSA, KeyKind::Ed25519)
        )
    }

    fn index(self) -> usize {
        self as usize
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &signature::ED25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of public key a machine key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with a modulus of `bits` bits (2048–8192).
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// The algorithm a signer uses by default with this kind of key.
    pub fn default_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa { .. } => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// A validated public key, kept as canonical SubjectPublicKeyInfo DER.
///
/// Construct it with [`PublicKey::from_pem`] (what a user sends) or
/// [`PublicKey::from_spki_der`] (what a store reads back). Both refuse
/// anything but RSA 2048–8192 bits, EC P-256/P-384 and Ed25519, with a
/// message that says what was wrong.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: KeyKind,
    spki: Arc<[u8]>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kind", &self.kind)
            .field("spki_len", &self.spki.len())
            .finish()
    }
}

impl PublicKey {
    /// Parses a PEM public key: SubjectPublicKeyInfo (`PUBLIC KEY`) or
    /// PKCS#1 (`RSA PUBLIC KEY`).
    ///
    /// ```
    /// # use jwt_profile::{generate_rsa_key_pair, PublicKey, KeyKind};
    /// let pair = generate_rsa_key_pair().unwrap();
    /// let pem = pair.public_key.to_pem();
    /// let key = PublicKey::from_pem(pem.as_bytes()).unwrap();
    /// assert_eq!(key.kind(), KeyKind::Rsa { bits: 2048 });
    /// assert!(PublicKey::from_pem(b"not a key").is_err());
    /// ```
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, Error> {
        if pem.len() > MAX_PUBLIC_KEY_BYTES {
            return Err(ErrorKind::PublicKeyTooLarge.error(format!(
                "public key is {} bytes; at most {} bytes are accepted",
                pem.len(),
                MAX_PUBLIC_KEY_BYTES
            )));
        }
        // Without this, text that is not PEM at all gets the PEM parser's
        // message about its preamble, which names the wrong problem.
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ErrorKind::PublicKeyBadPem
                .error("public key is not a PEM document: it has no -----BEGIN line"));
        }
        let (label, der) = rsa::pkcs1::der::pem::decode_vec(pem).map_err(|e| {
            ErrorKind::PublicKeyBadPem.error(format!("public key is not a valid PEM document: {e}"))
        })?;
        match label {
            "PUBLIC KEY" => PublicKey::from_spki_der(&der),
            "RSA PUBLIC KEY" => PublicKey::from_pkcs1_der(&der),
            "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => Err(ErrorKind::PublicKeyCertificate.error("a certificate was given; send the PEM public key (PUBLIC KEY or RSA PUBLIC KEY) instead",
            )),
            l if l.contains("PRIVATE KEY") => Err(ErrorKind::PublicKeyPrivate.error(format!("a private key ({l}) was given; send only the public key"),
            )),
            other => Err(ErrorKind::PublicKeyBadPem.error(format!("unsupported PEM label {other:?}; expected PUBLIC KEY or RSA PUBLIC KEY"),
            )),
        }
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, Error> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| {
            ErrorKind::PublicKeyBadDer.error(format!(
                "public key is not a valid SubjectPublicKeyInfo: {e}"
            ))
        })?;
        let oid = spki.algorithm.oid;
        if oid == OID_RSA {
            let bits = spki.subject_public_key.as_bytes().ok_or_else(|| {
                ErrorKind::PublicKeyBadDer.error("RSA public key bit string is not byte-aligned")
            })?;
            return PublicKey::from_pkcs1_der(bits);
        }
        let kind = if oid == OID_EC {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match curve {
                Some(c) if c == OID_P256 => KeyKind::P256,
                Some(c) if c == OID_P384 => KeyKind::P384,
                Some(c) => {
                    return Err(ErrorKind::PublicKeyUnsupported
                        .error(format!("EC curve {c} is not supported; use P-256 or P-384")));
                }
                None => {
                    return Err(ErrorKind::PublicKeyUnsupported
                        .error("EC public key without a named curve; use P-256 or P-384"));
                }
            }
        } else if oid == OID_ED25519 {
            KeyKind::Ed25519
        } else {
            return Err(ErrorKind::PublicKeyUnsupported.error(format!(
                    "public key algorithm {oid} is not supported; use RSA (2048-8192 bits), EC P-256, EC P-384 or Ed25519"
                ),
            ));
        };
        let parsed =
            ParsedPublicKey::new(kind.default_algorithm().verification(), der).map_err(|_| {
                ErrorKind::PublicKeyInvalid.error("the public key is not a valid point")
            })?;
        PublicKey::from_parsed(kind, &parsed)
    }

    fn from_pkcs1_der(der: &[u8]) -> Result<PublicKey, Error> {
        let key = rsa::pkcs1::RsaPublicKey::from_der(der).map_err(|e| {
            ErrorKind::PublicKeyBadDer.error(format!("RSA public key is not valid PKCS#1 DER: {e}"))
        })?;
        let modulus = strip_zeros(key.modulus.as_bytes());
        let bits = match modulus.first() {
            Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        };
        if bits < MIN_RSA_BITS {
            return Err(ErrorKind::RsaTooSmall.error(format!(
                "RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            )));
        }
        if bits > MAX_RSA_BITS {
            return Err(ErrorKind::RsaTooLarge.error(format!(
                "RSA key has {bits} bits; at most {MAX_RSA_BITS} are accepted"
            )));
        }
        let exponent = strip_zeros(key.public_exponent.as_bytes());
        let odd = exponent.last().is_some_and(|b| b & 1 == 1);
        let at_least_3 = exponent.len() > 1 || exponent.first().is_some_and(|b| *b >= 3);
        if !odd || !at_least_3 {
            return Err(ErrorKind::RsaExponent
                .error("RSA public exponent must be odd and at least 3 (65537 is usual)"));
        }
        let parsed = aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|_| {
            ErrorKind::PublicKeyInvalid.error("the RSA public key was rejected as invalid")
        })?;
        let spki = parsed.as_der().map_err(|_| {
            ErrorKind::PublicKeyInvalid.error("the RSA public key cannot be encoded")
        })?;
        Ok(PublicKey {
            kind: KeyKind::Rsa { bits },
            spki: Arc::from(spki.as_ref()),
        })
    }

    fn from_parsed(kind: KeyKind, parsed: &ParsedPublicKey) -> Result<PublicKey, Error> {
        let spki: PublicKeyX509Der<'static> = parsed
            .as_der()
            .map_err(|_| ErrorKind::PublicKeyInvalid.error("the public key cannot be encoded"))?;
        Ok(PublicKey {
            kind,
            spki: Arc::from(spki.as_ref()),
        })
    }

    /// What kind of key this is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The canonical SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The key as a `PUBLIC KEY` PEM document.
    pub fn to_pem(&self) -> String {
        rsa::pkcs1::der::pem::encode_string("PUBLIC KEY", rsa::pkcs1::LineEnding::LF, &self.spki)
            // Encoding a few KiB of DER into PEM cannot fail.
            .unwrap_or_default()
    }

    /// Parses the key for one algorithm, ready to verify signatures.
    pub(crate) fn parse_for(&self, alg: Algorithm) -> Option<ParsedPublicKey> {
        if !alg.fits(self.kind) {
            return None;
        }
        ParsedPublicKey::new(alg.verification(), &*self.spki).ok()
    }
}

/// `bytes` without leading zero bytes (a big-endian integer's minimal form).
pub(crate) fn strip_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// Bookkeeping of a stored object, as in ZITADEL's `ObjectDetails`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Details {
    /// The sequence of the last change; only ever grows within a store.
    pub sequence: u64,
    /// When the object was created.
    pub creation_date: DateTime<Utc>,
    /// When the object last changed.
    pub change_date: DateTime<Utc>,
    /// The organization owning the object.
    pub resource_owner: String,
}

/// A public key registered for one machine user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineKey {
    /// The key id, used as the assertion's `kid`.
    pub id: String,
    /// The machine user the key belongs to.
    pub user_id: String,
    /// The organization the key (and its user) belongs to.
    pub resource_owner: String,
    /// The key type (always JSON).
    pub key_type: KeyType,
    /// The public key.
    pub public_key: PublicKey,
    /// After this instant no assertion signed with the key is accepted.
    pub expiration_date: DateTime<Utc>,
    /// Sequence and dates.
    pub details: Details,
}

/// A machine key with its public key parsed for verification, as held by
/// the cache. Each algorithm's parsed key is built once, on first use.
pub struct VerifyingKey {
    key: MachineKey,
    /// The key's user, organization and id, shared with every
    /// [`Principal`](crate::Principal) it proves, so making one allocates
    /// no string.
    names: [Arc<str>; 3],
    parsed: [std::sync::OnceLock<Option<ParsedPublicKey>>; 9],
    /// When it was made from the stored key: a cache holding it holds it
    /// since no earlier.
    loaded_at: std::time::Instant,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("key", &self.key)
            .finish()
    }
}

impl VerifyingKey {
    /// Wraps a stored key. Parsing for the key's default algorithm happens
    /// here, so a cache entry is ready to verify the common case at once.
    pub fn new(key: MachineKey) -> VerifyingKey {
        let names = [
            Arc::from(key.user_id.as_str()),
            Arc::from(key.resource_owner.as_str()),
            Arc::from(key.id.as_str()),
        ];
        let vk = VerifyingKey {
            key,
            names,
            parsed: Default::default(),
            loaded_at: std::time::Instant::now(),
        };
        let default = vk.key.public_key.kind().default_algorithm();
        let _ = vk.parsed_for(default);
        vk
    }

    /// The stored key.
    pub fn key(&self) -> &MachineKey {
        &self.key
    }

    /// The caller this key proves, for a token of `kind` valid from
    /// `issued_at` to `expires_at` with `scopes`.
    pub(crate) fn principal(
        &self,
        expires_at: chrono::DateTime<chrono::Utc>,
        issued_at: chrono::DateTime<chrono::Utc>,
        kind: crate::TokenKind,
        scopes: Arc<[String]>,
    ) -> crate::Principal {
        let [user_id, org_id, key_id] = self.names.clone();
        crate::Principal {
            user_id,
            org_id,
            key_id,
            expires_at,
            issued_at,
            kind,
            scopes,
        }
    }

    /// When it was made from the stored key.
    pub(crate) fn loaded_at(&self) -> std::time::Instant {
        self.loaded_at
    }

    fn parsed_for(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.parsed[alg.index()]
            .get_or_init(|| self.key.public_key.parse_for(alg))
            .as_ref()
    }

    /// Verifies `signature` over `message` with this key and `alg`.
    /// Returns false when the algorithm does not fit the key or the
    /// signature is wrong.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match self.parsed_for(alg) {
            Some(parsed) => parsed.verify_sig(message, signature).is_ok(),
            None => false,
        }
    }
}

/// The slot of `bytes` in a small table of `slots` entries: its length and
/// two words from its middle and end, mixed. Not a defence: the tables
/// compare the whole key on every hit (or, for the key cache's invalidation
/// stamps, make a colliding id's entry stale), so a collision costs a miss,
/// never a wrong answer.
pub(crate) fn table_slot(bytes: &[u8], slots: usize) -> usize {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        let end = (at + 8).min(bytes.len());
        w[..end - at].copy_from_slice(&bytes[at..end]);
        u64::from_le_bytes(w)
    };
    let mut h = bytes.len() as u64;
    h = (h ^ word(bytes.len() / 2)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ word(bytes.len().saturating_sub(8))).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits, scaled to `slots` (for 64 slots: `h >> 58`).
    ((u128::from(h) * slots as u128) >> 64) as usize
}

/// A freshly generated RSA-2048 key pair.
pub struct GeneratedKeyPair {
    /// The public half, to be stored.
    pub public_key: PublicKey,
    /// The private half as a PKCS#1 PEM (`RSA PRIVATE KEY`) document.
    pub private_key_pem: String,
}

impl fmt::Debug for GeneratedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKeyPair")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// Generates an RSA-2048 key pair with aws-lc-rs.
pub fn generate_rsa_key_pair() -> Result<GeneratedKeyPair, Error> {
    let internal = |what: &str| {
        ErrorKind::KeyGenerationFailed.error(format!("RSA key generation failed: {what}"))
    };
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| internal("generate"))?;
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| internal("export"))?;
    // The PKCS#8 document wraps the PKCS#1 RSAPrivateKey that the key file
    // carries; unwrap it rather than re-parsing the key.
    let info =
        rsa::pkcs8::PrivateKeyInfo::from_der(pkcs8.as_ref()).map_err(|_| internal("pkcs8"))?;
    let private_key_pem = rsa::pkcs1::der::pem::encode_string(
        "RSA PRIVATE KEY",
        rsa::pkcs1::LineEnding::LF,
        info.private_key,
    )
    .map_err(|_| internal("pem"))?;
    let public_key =
        PublicKey::from_pkcs1_der(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref())?;
    Ok(GeneratedKeyPair {
        public_key,
        private_key_pem,
    })
}
