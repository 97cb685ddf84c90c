//! [`MasterKey`]: seals the signing keys' private halves at rest
//! (AES-256-GCM, aws-lc-rs).

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;

/// Length of a master key, in bytes.
pub const MASTER_KEY_BYTES: usize = 32;

/// The 32-byte key that encrypts the token-signing keys' private halves at
/// rest (AES-256-GCM, a random 96-bit nonce per sealing, the signing key's
/// id as associated data, so a sealed key cannot be moved to another id).
///
/// Lose it and the stored signing keys cannot be used: the issuer refuses
/// to start rather than replace them.
///
/// ```
/// use jwt_profile::token::MasterKey;
/// let key = MasterKey::generate().unwrap();
/// let same = MasterKey::from_bytes(key.to_bytes().as_slice()).unwrap();
/// assert!(MasterKey::from_bytes(b"too short").is_err());
/// # let _ = same;
/// ```
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; MASTER_KEY_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

/// Why a master key could not be read, made or used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasterKeyError {
    /// The bytes (or the file's content) are not a master key; the text says
    /// why.
    Invalid(String),
    /// The file could not be read or written.
    Io(String),
    /// A sealed signing key does not open with this master key: it is not
    /// the key the signing keys were sealed with (or the data is damaged).
    WrongKey,
}

impl fmt::Display for MasterKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterKeyError::Invalid(why) => write!(f, "not a master key: {why}"),
            MasterKeyError::Io(why) => f.write_str(why),
            MasterKeyError::WrongKey => f.write_str(
                "the stored signing keys do not open with this master key (wrong key or damaged data)",
            ),
        }
    }
}

impl std::error::Error for MasterKeyError {}

impl MasterKey {
    /// A master key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, MasterKeyError> {
        let bytes: [u8; MASTER_KEY_BYTES] = bytes.try_into().map_err(|_| {
            MasterKeyError::Invalid(format!(
                "{} bytes; a master key is exactly {MASTER_KEY_BYTES}",
                bytes.len()
            ))
        })?;
        Ok(MasterKey { bytes })
    }

    /// A new random master key.
    pub fn generate() -> Result<MasterKey, MasterKeyError> {
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| MasterKeyError::Io("the system random number generator failed".into()))?;
        Ok(MasterKey { bytes })
    }

    /// The key's 32 bytes (to store it somewhere safe).
    pub fn to_bytes(&self) -> [u8; MASTER_KEY_BYTES] {
        self.bytes
    }

    /// Reads a master key file: exactly 32 raw bytes, or their standard
    /// base64 (44 characters; surrounding white space ignored), as secret
    /// stores often hand files out.
    pub fn read_file(path: impl AsRef<Path>) -> Result<MasterKey, MasterKeyError> {
        use std::io::Read;
        let path = path.as_ref();
        let io =
            |e: std::io::Error| MasterKeyError::Io(format!("cannot read {}: {e}", path.display()));
        // At most a little more than the longest valid content: a file that
        // never ends (a device, a pipe) is refused, not read forever.
        let mut content = Vec::with_capacity(64);
        std::fs::File::open(path)
            .map_err(io)?
            .take(256)
            .read_to_end(&mut content)
            .map_err(io)?;
        if content.len() == 256 {
            return Err(MasterKeyError::Invalid(format!(
                "{} is longer than a master key (32 raw bytes or their base64)",
                path.display()
            )));
        }
        if content.len() == MASTER_KEY_BYTES {
            return MasterKey::from_bytes(&content);
        }
        let text = std::str::from_utf8(&content).map(str::trim).map_err(|_| {
            MasterKeyError::Invalid(format!(
                "{} holds {} bytes; expected 32 raw bytes or their base64",
                path.display(),
                content.len()
            ))
        })?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| {
                MasterKeyError::Invalid(format!(
                    "{} holds {} bytes; expected 32 raw bytes or their base64",
                    path.display(),
                    content.len()
                ))
            })?;
        MasterKey::from_bytes(&decoded).map_err(|_| {
            MasterKeyError::Invalid(format!(
                "{} holds {} bytes of base64 text; expected 32 raw bytes or their base64",
                path.display(),
                decoded.len()
            ))
        })
    }

    /// Writes a new random master key (32 raw bytes) to `path`, which must
    /// not exist yet, readable by its owner only (mode 0600 on Unix).
    pub fn create_file(path: impl AsRef<Path>) -> Result<MasterKey, MasterKeyError> {
        use std::io::Write;
        let path = path.as_ref();
        let key = MasterKey::generate()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io =
            |e: std::io::Error| MasterKeyError::Io(format!("cannot write {}: {e}", path.display()));
        let mut file = options.open(path).map_err(io)?;
        file.write_all(&key.bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }

    fn aead(&self) -> Result<RandomizedNonceKey, MasterKeyError> {
        RandomizedNonceKey::new(&AES_256_GCM, &self.bytes)
            .map_err(|_| MasterKeyError::Invalid("AES-256-GCM rejected the key".into()))
    }

    /// Seals `plain` for the signing key `id`: nonce ‖ ciphertext ‖ tag.
    pub(crate) fn seal(&self, id: &str, plain: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        let mut in_out = plain.to_vec();
        let nonce = self
            .aead()?
            .seal_in_place_append_tag(Aad::from(id.as_bytes()), &mut in_out)
            .map_err(|_| MasterKeyError::Io("sealing failed".into()))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what [`seal`](Self::seal) made for `id`.
    pub(crate) fn open(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        if sealed.len() < NONCE_LEN {
            return Err(MasterKeyError::WrongKey);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| MasterKeyError::WrongKey)?;
        let mut in_out = rest.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut in_out)
            .map_err(|_| MasterKeyError::WrongKey)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key_and_id() {
        let key = MasterKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let sealed = key.seal("k1", b"secret").unwrap_or_else(|e| panic!("{e}"));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(key.open("k1", &sealed), Ok(b"secret".to_vec()));
        assert_eq!(key.open("k2", &sealed), Err(MasterKeyError::WrongKey));
        let other = MasterKey::generate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.open("k1", &sealed), Err(MasterKeyError::WrongKey));
        assert_eq!(key.open("k1", &sealed[..5]), Err(MasterKeyError::WrongKey));
        // Two sealings of one text differ (random nonce).
        assert_ne!(sealed, key.seal("k1", b"secret").unwrap_or_default());
    }

    #[test]
    fn files_hold_raw_or_base64_bytes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("master-key");
        let key = MasterKey::create_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(MasterKey::create_file(&path).is_err(), "never overwrites");
        assert_eq!(
            MasterKey::read_file(&path).map(|k| k.to_bytes()),
            Ok(key.to_bytes())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let b64 = dir.path().join("b64");
        let text = base64::engine::general_purpose::STANDARD.encode(key.to_bytes());
        std::fs::write(&b64, format!("{text}\n")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            MasterKey::read_file(&b64).map(|k| k.to_bytes()),
            Ok(key.to_bytes())
        );
        let long = dir.path().join("long");
        std::fs::write(&long, vec![b'A'; 10_000]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            MasterKey::read_file(&long),
            Err(MasterKeyError::Invalid(_))
        ));
        #[cfg(unix)]
        assert!(matches!(
            MasterKey::read_file("/dev/zero"),
            Err(MasterKeyError::Invalid(_))
        ));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "short").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            MasterKey::read_file(&bad),
            Err(MasterKeyError::Invalid(_))
        ));
    }
}
