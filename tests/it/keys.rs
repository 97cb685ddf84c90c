//! Public-key parsing (SPEC §2 `publicKey`) and the machine-side signer.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use jwt_profile::{AssertionSigner, KeyFile};
use jwt_profile::{KeyKind, PublicKey, generate_rsa_key_pair};
use rsa::pkcs1::der::Encode;

fn pem(label: &str, der: &[u8]) -> String {
    rsa::pkcs1::der::pem::encode_string(label, rsa::pkcs1::LineEnding::LF, der).expect("pem")
}

/// A PKCS#1 RSA public key with a modulus of exactly `bits` bits (odd, all
/// ones) and exponent `e`. Not a product of two primes, which public-key
/// checks cannot see; enough to test the size and exponent rules.
fn rsa_public(bits: usize, e: &[u8]) -> String {
    let mut n = vec![0xffu8; bits.div_ceil(8)];
    let extra = n.len() * 8 - bits;
    n[0] >>= extra;
    let key = rsa::pkcs1::RsaPublicKey {
        modulus: rsa::pkcs1::UintRef::new(&n).expect("n"),
        public_exponent: rsa::pkcs1::UintRef::new(e).expect("e"),
    };
    pem("RSA PUBLIC KEY", &key.to_der().expect("der"))
}

fn refused_as(pem: &str, id: &str) {
    match PublicKey::from_pem(pem.as_bytes()) {
        Ok(k) => panic!("accepted {k:?}, expected {id}"),
        Err(e) => {
            assert_eq!(e.id(), id, "{e}");
            assert_eq!(e.code().http_status(), 400);
        }
    }
}

#[test]
fn rsa_sizes_from_2048_to_8192_bits() {
    for bits in [2048, 3072, 4096, 8192] {
        let key = PublicKey::from_pem(rsa_public(bits, &[1, 0, 1]).as_bytes()).expect("accepted");
        assert_eq!(key.kind(), KeyKind::Rsa { bits });
        // Canonical SPKI round-trip, as stores keep it.
        let again = PublicKey::from_spki_der(key.spki_der()).expect("spki");
        assert_eq!(again, key);
        assert_eq!(
            PublicKey::from_pem(key.to_pem().as_bytes()).expect("pem"),
            key
        );
    }
    refused_as(
        &rsa_public(2047, &[1, 0, 1]),
        "KEY-public-key-rsa-too-small",
    );
    refused_as(
        include_str!("data/rsa1024.pub.pem"),
        "KEY-public-key-rsa-too-small",
    );
    refused_as(
        &rsa_public(8193, &[1, 0, 1]),
        "KEY-public-key-rsa-too-large",
    );
}

#[test]
fn rsa_exponent_must_be_odd_and_at_least_3() {
    assert!(PublicKey::from_pem(rsa_public(2048, &[3]).as_bytes()).is_ok());
    assert!(PublicKey::from_pem(rsa_public(2048, &[0x01, 0x00, 0x00, 0x01]).as_bytes()).is_ok());
    refused_as(&rsa_public(2048, &[1]), "KEY-public-key-rsa-exponent");
    refused_as(&rsa_public(2048, &[2]), "KEY-public-key-rsa-exponent");
    refused_as(&rsa_public(2048, &[1, 0, 0]), "KEY-public-key-rsa-exponent");
}

#[test]
fn curves_and_key_types() {
    let p256 = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .expect("p256");
    let spki = p256.public_key().as_der().expect("der");
    assert_eq!(
        PublicKey::from_pem(pem("PUBLIC KEY", spki.as_ref()).as_bytes())
            .expect("p256")
            .kind(),
        KeyKind::P256
    );
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().expect("ed");
    let spki = ed.public_key().as_der().expect("der");
    assert_eq!(
        PublicKey::from_pem(pem("PUBLIC KEY", spki.as_ref()).as_bytes())
            .expect("ed")
            .kind(),
        KeyKind::Ed25519
    );
    for (file, id) in [
        (
            include_str!("data/p521.pub.pem"),
            "KEY-public-key-unsupported",
        ),
        (
            include_str!("data/secp256k1.pub.pem"),
            "KEY-public-key-unsupported",
        ),
        (
            include_str!("data/ed448.pub.pem"),
            "KEY-public-key-unsupported",
        ),
        (
            include_str!("data/x25519.pub.pem"),
            "KEY-public-key-unsupported",
        ),
        (include_str!("data/cert.pem"), "KEY-public-key-certificate"),
    ] {
        refused_as(file, id);
    }
}

#[test]
fn malformed_documents_say_what_is_wrong() {
    refused_as("", "KEY-public-key-bad-pem");
    let not_pem = PublicKey::from_pem(b"not a key").expect_err("plain text");
    assert_eq!(
        not_pem.message(),
        "public key is not a PEM document: it has no -----BEGIN line"
    );
    refused_as(
        "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        "KEY-public-key-bad-pem",
    );
    refused_as(
        &pem("PUBLIC KEY", b"\x30\x03\x02\x01\x00"),
        "KEY-public-key-bad-der",
    );
    refused_as(&pem("RSA PUBLIC KEY", b"garbage"), "KEY-public-key-bad-der");
    refused_as(&pem("EC PRIVATE KEY", b"x"), "KEY-public-key-private");
    refused_as(&pem("OPENSSH PRIVATE KEY", b"x"), "KEY-public-key-private");
    refused_as(&pem("SSH2 PUBLIC KEY", b"x"), "KEY-public-key-bad-pem");
    refused_as(&"A".repeat(16 * 1024 + 1), "KEY-public-key-too-large");
    // A P-256 SPKI whose point is not on the curve.
    let p256 = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .expect("p256");
    let mut spki = p256.public_key().as_der().expect("der").as_ref().to_vec();
    let last = spki.len() - 1;
    spki[last] ^= 1;
    refused_as(&pem("PUBLIC KEY", &spki), "KEY-public-key-invalid");
}

#[test]
fn generated_key_file_round_trips_and_signs() {
    let pair = generate_rsa_key_pair().expect("generate");
    assert_eq!(pair.public_key.kind(), KeyKind::Rsa { bits: 2048 });
    assert!(
        pair.private_key_pem
            .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
    );
    let file = KeyFile::new(
        "7",
        "bot",
        pair.private_key_pem,
        jwt_profile::default_expiration(),
    );
    let json: serde_json::Value = serde_json::from_slice(&file.to_json()).expect("json");
    assert_eq!(
        json.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["expirationDate", "key", "keyId", "type", "userId"]
    );
    assert_eq!(json["expirationDate"], "9999-12-31T23:59:59Z");
    let signer =
        AssertionSigner::from_key_file(&KeyFile::from_json(&file.to_json()).expect("parse"))
            .expect("signer");
    let token = signer.sign("aud").expect("sign");
    assert_eq!(token.split('.').count(), 3);
    // ZITADEL-style files with extra fields still load; bad ones say why.
    let mut extra = json.clone();
    extra["clientId"] = "123@project".into();
    assert!(KeyFile::from_json(extra.to_string().as_bytes()).is_ok());
    let err = KeyFile::from_json(b"{\"type\":\"serviceaccount\"}").expect_err("incomplete");
    assert_eq!(err.id(), "KEYFILE-malformed");
    assert!(err.message().contains("keyId"), "{err}");
    let bad = KeyFile::new("7", "bot", "not a key", jwt_profile::default_expiration());
    assert_eq!(
        AssertionSigner::from_key_file(&bad).expect_err("bad").id(),
        "KEYFILE-bad-private-key"
    );
    assert!(
        signer
            .with_algorithm(jwt_profile::Algorithm::ES256)
            .is_err()
    );
}
