//! The machine's side: the ZITADEL-format key file, and signing assertions.
//!
//! ```
//! use jwt_profile::{AssertionSigner, KeyFile};
//! use jwt_profile::generate_rsa_key_pair;
//!
//! let pair = generate_rsa_key_pair().unwrap();
//! let file = KeyFile::new("123", "ci-bot", pair.private_key_pem, jwt_profile::default_expiration());
//! let json = file.to_json();
//! // ... the machine stores `json`, later:
//! let signer = AssertionSigner::from_key_file(&KeyFile::from_json(&json).unwrap()).unwrap();
//! let assertion = signer.sign("https://api.example.com").unwrap();
//! assert_eq!(assertion.split('.').count(), 3);
//! ```

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use rsa::pkcs1::der::Decode;
use rsa::pkcs8::ObjectIdentifier;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::key::{Algorithm, KeyKind};

/// The `type` of a machine key file.
pub const KEY_FILE_TYPE: &str = "serviceaccount";

/// A machine key file, exactly as ZITADEL hands it out:
/// `{"type":"serviceaccount","keyId":"…","key":"-----BEGIN RSA PRIVATE KEY-----…","expirationDate":"…","userId":"…"}`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyFile {
    /// Always `serviceaccount`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// The key id (`kid`).
    pub key_id: String,
    /// The private key, PKCS#1 PEM.
    pub key: String,
    /// When the key expires.
    #[serde(with = "rfc3339")]
    pub expiration_date: DateTime<Utc>,
    /// The machine user.
    pub user_id: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .field("expiration_date", &self.expiration_date)
            .finish_non_exhaustive()
    }
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

impl KeyFile {
    /// A key file for `user_id`'s key `key_id`.
    pub fn new(
        key_id: impl Into<String>,
        user_id: impl Into<String>,
        private_key_pem: impl Into<String>,
        expiration_date: DateTime<Utc>,
    ) -> KeyFile {
        KeyFile {
            file_type: KEY_FILE_TYPE.to_string(),
            key_id: key_id.into(),
            key: private_key_pem.into(),
            expiration_date,
            user_id: user_id.into(),
        }
    }

    /// Parses a key file.
    pub fn from_json(json: &[u8]) -> Result<KeyFile, Error> {
        serde_json::from_slice(json)
            .map_err(|e| ErrorKind::KeyFileMalformed.error(format!("malformed key file: {e}")))
    }

    /// Reads and parses a key file from disk.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyFile, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ErrorKind::KeyFileUnreadable
                .error(format!("cannot read key file {}: {e}", path.display()))
        })?;
        KeyFile::from_json(&bytes)
    }

    /// The key file as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The expiration date as written in the file.
    pub fn expiration_rfc3339(&self) -> String {
        self.expiration_date
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs JWT-profile assertions with a machine's private key.
///
/// The private key is parsed once, when the signer is built.
pub struct AssertionSigner {
    key_id: String,
    user_id: String,
    kind: KeyKind,
    alg: Algorithm,
    key: SigningKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn bad_key(message: impl Into<String>) -> Error {
    ErrorKind::PrivateKeyInvalid.error(message.into())
}

use crate::key::{OID_EC, OID_ED25519, OID_P256, OID_P384, OID_RSA};

/// The default lifetime of an assertion made by [`AssertionSigner::sign`]: one hour.
pub const DEFAULT_ASSERTION_LIFETIME_SECS: u64 = 3600;

impl AssertionSigner {
    /// A signer for the key in a key file (RS256).
    pub fn from_key_file(file: &KeyFile) -> Result<AssertionSigner, Error> {
        AssertionSigner::from_pem(&file.user_id, &file.key_id, file.key.as_bytes())
    }

    /// A signer from a PEM private key: PKCS#1 `RSA PRIVATE KEY`, PKCS#8
    /// `PRIVATE KEY` (RSA, EC P-256/P-384, Ed25519) or SEC1 `EC PRIVATE KEY`.
    /// The algorithm is the key kind's default (RS256, ES256, ES384, EdDSA).
    pub fn from_pem(
        user_id: impl Into<String>,
        key_id: impl Into<String>,
        pem: &[u8],
    ) -> Result<AssertionSigner, Error> {
        let (label, der) = rsa::pkcs1::der::pem::decode_vec(pem)
            .map_err(|e| bad_key(format!("private key is not valid PEM: {e}")))?;
        let (kind, key) = match label {
            "RSA PRIVATE KEY" => rsa_from(RsaKeyPair::from_der(&der))?,
            "PRIVATE KEY" => {
                let info = rsa::pkcs8::PrivateKeyInfo::from_der(&der)
                    .map_err(|e| bad_key(format!("private key is not valid PKCS#8: {e}")))?;
                let oid = info.algorithm.oid;
                if oid == OID_RSA {
                    rsa_from(RsaKeyPair::from_pkcs8(&der))?
                } else if oid == OID_ED25519 {
                    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                        .map_err(|e| bad_key(format!("Ed25519 key rejected: {e}")))?;
                    (KeyKind::Ed25519, SigningKey::Ed25519(pair))
                } else if oid == OID_EC {
                    let curve = info
                        .algorithm
                        .parameters
                        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                    let (kind, alg) = match curve {
                        Some(c) if c == OID_P256 => {
                            (KeyKind::P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                        }
                        Some(c) if c == OID_P384 => {
                            (KeyKind::P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING)
                        }
                        _ => return Err(bad_key("EC private key is not on P-256 or P-384")),
                    };
                    let pair = EcdsaKeyPair::from_pkcs8(alg, &der)
                        .map_err(|e| bad_key(format!("EC key rejected: {e}")))?;
                    (kind, SigningKey::Ecdsa(pair))
                } else {
                    return Err(bad_key(format!("unsupported private key algorithm {oid}")));
                }
            }
            "EC PRIVATE KEY" => {
                if let Ok(pair) = EcdsaKeyPair::from_private_key_der(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                ) {
                    (KeyKind::P256, SigningKey::Ecdsa(pair))
                } else {
                    let pair = EcdsaKeyPair::from_private_key_der(
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                        &der,
                    )
                    .map_err(|_| bad_key("EC private key is not a valid P-256 or P-384 key"))?;
                    (KeyKind::P384, SigningKey::Ecdsa(pair))
                }
            }
            other => return Err(bad_key(format!("unsupported PEM label {other:?}"))),
        };
        Ok(AssertionSigner {
            key_id: key_id.into(),
            user_id: user_id.into(),
            kind,
            alg: kind.default_algorithm(),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// Uses another algorithm; it must fit the key (e.g. PS256 for RSA).
    pub fn with_algorithm(mut self, alg: Algorithm) -> Result<AssertionSigner, Error> {
        if !alg.fits(self.kind) {
            return Err(bad_key(format!(
                "algorithm {alg} does not fit a {:?} key",
                self.kind
            )));
        }
        self.alg = alg;
        Ok(self)
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The machine user.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The algorithm used.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs an assertion for `audience`, issued now and valid for one hour,
    /// with a random `jti` (so it passes replay protection once).
    pub fn sign(&self, audience: &str) -> Result<String, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.sign_at(audience, now, now + DEFAULT_ASSERTION_LIFETIME_SECS)
    }

    /// Signs an assertion for `audience` with the given `iat` and `exp`
    /// (seconds since the Unix epoch) and a random `jti` (96 bits,
    /// base64url).
    pub fn sign_at(&self, audience: &str, iat: u64, exp: u64) -> Result<String, Error> {
        let mut jti = [0u8; 12];
        self.rng
            .fill(&mut jti)
            .map_err(|_| bad_key("the system random number generator failed"))?;
        let claims = serde_json::json!({
            "iss": self.user_id,
            "sub": self.user_id,
            "aud": audience,
            "iat": iat,
            "exp": exp,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims under the standard header
    /// `{"alg":…,"kid":…}`.
    pub fn sign_claims(&self, claims: &serde_json::Value) -> Result<String, Error> {
        let header = serde_json::json!({"alg": self.alg.as_str(), "kid": self.key_id});
        // Values built by serde_json always serialize.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        self.sign_parts(&header, &payload)
    }

    /// Low level: signs the given header and payload bytes exactly as they
    /// are (base64url-encoding each), with the signer's algorithm. Useful for
    /// testing verifiers against unusual tokens.
    pub fn sign_parts(&self, header: &[u8], payload: &[u8]) -> Result<String, Error> {
        let mut token = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 400);
        URL_SAFE_NO_PAD.encode_string(header, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let sig = self.sign_bytes(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
        Ok(token)
    }

    /// Signs `message` with the signer's algorithm and returns the raw JWS
    /// signature.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let failed = || ErrorKind::SigningFailed.error("signing failed");
        match &self.key {
            SigningKey::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &self.rng, message, &mut sig)
                    .map_err(|_| failed())?;
                Ok(sig)
            }
            SigningKey::Ecdsa(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed()),
            SigningKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

fn rsa_from(
    pair: Result<RsaKeyPair, aws_lc_rs::error::KeyRejected>,
) -> Result<(KeyKind, SigningKey), Error> {
    let pair = pair.map_err(|e| bad_key(format!("RSA private key rejected: {e}")))?;
    let bits = pair.public_modulus_len() * 8;
    Ok((KeyKind::Rsa { bits }, SigningKey::Rsa(pair)))
}
