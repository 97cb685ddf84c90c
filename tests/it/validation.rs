//! SPEC §3 items 1–6: each rule with an accepting and a rejecting case,
//! checked on the `Verifier` itself (no HTTP) with a clock the test moves.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_profile::Algorithm;
use jwt_profile::CreateKey;
use jwt_profile::policy::DefaultPolicy;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{
    AssertionSigner, KeyService, ManualClock, Principal, Reason, Validation, Verifier, VerifyError,
};
use serde_json::{Value, json};

const AUD: &str = "https://api.example.com";
const NOW: i64 = 1_800_000_000;

fn pem(label: &str, der: &[u8]) -> String {
    rsa::pkcs1::der::pem::encode_string(label, rsa::pkcs1::LineEnding::LF, der).expect("pem")
}

struct Fx {
    verifier: Verifier,
    clock: ManualClock,
    keys: KeyService,
    store: CachedStore,
    rsa: AssertionSigner,
    other: AssertionSigner,
}

async fn fixture() -> Fx {
    fixture_with(Validation::new([AUD, "https://second.example.com"])).await
}

async fn fixture_with(validation: Validation) -> Fx {
    let clock = ManualClock::at_unix(NOW);
    let store = CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone())
        .with_clock(clock.clone())
        .with_policy(DefaultPolicy::new().with_admin("default", "admin"));
    let verifier = Verifier::new(store.clone(), validation).with_clock(clock.clone());
    let rsa = generated(&keys, "bot", None).await;
    let other = generated(&keys, "other", None).await;
    Fx {
        verifier,
        clock,
        keys,
        store,
        rsa,
        other,
    }
}

async fn generated(keys: &KeyService, user: &str, expiration: Option<i64>) -> AssertionSigner {
    let admin = Principal::new("admin", "default", "-");
    let request = CreateKey {
        expiration_date: expiration.map(|t| chrono::DateTime::from_timestamp(t, 0).expect("t")),
        ..Default::default()
    };
    let created = keys
        .create(&admin, None, user, request)
        .await
        .expect("create");
    AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer")
}

/// Registers the user's own public key and returns a signer for it.
async fn own(
    keys: &KeyService,
    user: &str,
    public_spki: &[u8],
    private_pkcs8: &[u8],
) -> AssertionSigner {
    let admin = Principal::new("admin", "default", "-");
    let request = CreateKey {
        public_key: Some(pem("PUBLIC KEY", public_spki).into_bytes()),
        ..Default::default()
    };
    let created = keys
        .create(&admin, None, user, request)
        .await
        .expect("create");
    AssertionSigner::from_pem(
        user,
        &created.key.id,
        pem("PRIVATE KEY", private_pkcs8).as_bytes(),
    )
    .expect("signer")
}

fn claims(user: &str) -> Value {
    json!({"iss": user, "sub": user, "aud": AUD, "iat": NOW, "exp": NOW + 300})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn header(signer: &AssertionSigner) -> Value {
    json!({"alg": signer.algorithm().as_str(), "kid": signer.key_id()})
}

fn token(signer: &AssertionSigner, header: &Value, claims: &Value) -> String {
    signer
        .sign_parts(header.to_string().as_bytes(), claims.to_string().as_bytes())
        .expect("sign")
}

impl Fx {
    async fn accepts(&self, token: &str) -> Principal {
        match self.verifier.verify(token).await {
            Ok(p) => p,
            Err(e) => panic!("expected acceptance, got {e}"),
        }
    }

    async fn refuses(&self, token: &str, reason: Reason) {
        assert_eq!(
            self.verifier.verify(token).await.err(),
            Some(VerifyError::Invalid(reason)),
            "{}",
            &token[..token.len().min(120)]
        );
    }

    async fn claims_ok(&self, c: Value) {
        self.accepts(&token(&self.rsa, &header(&self.rsa), &c))
            .await;
    }

    async fn claims_refused(&self, c: Value, reason: Reason) {
        self.refuses(&token(&self.rsa, &header(&self.rsa), &c), reason)
            .await;
    }
}

#[tokio::test]
async fn a_good_assertion_yields_the_principal() {
    let fx = fixture().await;
    let p = fx
        .accepts(&token(&fx.rsa, &header(&fx.rsa), &claims("bot")))
        .await;
    assert_eq!(&*p.user_id, "bot");
    assert_eq!(&*p.org_id, "default");
    assert_eq!(&*p.key_id, fx.rsa.key_id());
    assert_eq!(p.expires_at.timestamp(), NOW + 300);
    assert_eq!(p.issued_at.timestamp(), NOW);
}

// 1. Size

#[tokio::test]
async fn rule1_size_limit_applies_before_decoding() {
    let fx = fixture().await;
    let padded = with(claims("bot"), json!({"pad": "x".repeat(7000)}));
    let t = token(&fx.rsa, &header(&fx.rsa), &padded);
    assert!(t.len() > 8 * 1024);
    fx.refuses(&t, Reason::TooLarge).await;
    // Garbage that is merely too long is refused for its size, not its form.
    fx.refuses(&".".repeat(1 << 20), Reason::TooLarge).await;
    let roomy = fixture_with(Validation::new([AUD]).max_token_bytes(16 * 1024)).await;
    let t = token(&roomy.rsa, &header(&roomy.rsa), &padded);
    roomy.accepts(&t).await;
    let small = with(claims("bot"), json!({"pad": "x".repeat(5000)}));
    fx.accepts(&token(&fx.rsa, &header(&fx.rsa), &small)).await;
}

// 2. Form

#[tokio::test]
async fn rule2_form_three_canonical_segments_of_json_objects() {
    let fx = fixture().await;
    let good = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&good).await;
    let m = |s| Reason::Malformed(s);
    let parts: Vec<&str> = good.split('.').collect();
    fx.refuses(
        &format!("{}.{}", parts[0], parts[1]),
        m("token must be three base64url segments"),
    )
    .await;
    fx.refuses(
        &format!("{good}."),
        m("token must be three base64url segments"),
    )
    .await;
    fx.refuses(
        &format!("{good}.{}", parts[2]),
        m("token must be three base64url segments"),
    )
    .await;
    // More than three segments is reported first, whatever else is wrong
    // (an empty segment, a bad header, a short signature).
    for more in [
        format!("{}..{}.{}", parts[0], parts[2], parts[2]),
        format!("{}=.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}.{}.{}.", parts[0], parts[1], &parts[2][..8]),
    ] {
        fx.refuses(&more, m("token must be three base64url segments"))
            .await;
    }
    fx.refuses(
        &format!("{}..{}", parts[0], parts[2]),
        m("empty token segment"),
    )
    .await;
    fx.refuses(
        &format!("{}.{}.", parts[0], parts[1]),
        m("empty token segment"),
    )
    .await;
    fx.refuses(
        &format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        m("header is not canonical base64url"),
    )
    .await;
    fx.refuses(
        &format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        m("signature is not canonical base64url"),
    )
    .await;
    fx.refuses(
        &good.replacen(parts[1], &format!("{}+", parts[1]), 1),
        m("payload is not canonical base64url"),
    )
    .await;
    // A second spelling of the same bytes: stray bits in the last character.
    let sig = parts[2];
    let last = sig.chars().last().expect("char");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).expect("in alphabet");
    let stray = alphabet.chars().nth(idx ^ 1).expect("char");
    let respelled = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        &sig[..sig.len() - 1],
        stray
    );
    fx.refuses(&respelled, m("signature is not canonical base64url"))
        .await;

    let raw = |h: &str, p: &str| fx.rsa.sign_parts(h.as_bytes(), p.as_bytes()).expect("sign");
    let kid = fx.rsa.key_id();
    let c = claims("bot").to_string();
    fx.refuses(&raw("[1]", &c), m("header is not a JSON object"))
        .await;
    fx.refuses(
        &raw(&format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}} x"), &c),
        m("header is not a JSON object"),
    )
    .await;
    fx.refuses(
        &raw(
            &format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\",\"kid\":\"{kid}\"}}"),
            &c,
        ),
        m("duplicate member in header"),
    )
    .await;
    let h = header(&fx.rsa).to_string();
    fx.refuses(&raw(&h, "\"claims\""), m("payload is not a JSON object"))
        .await;
    let dup = format!(
        "{{\"iss\":\"bot\",\"sub\":\"bot\",\"aud\":\"{AUD}\",\"iat\":{NOW},\"exp\":{},\"exp\":{}}}",
        NOW + 300,
        NOW + 300
    );
    fx.refuses(&raw(&h, &dup), m("duplicate member in payload"))
        .await;
    // Deep nesting: serde_json skips unknown members without recursion, so
    // it is neither a crash nor a refusal by itself; the rest decides.
    let nested = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let deep = with(claims("bot"), json!({"x": "NESTED"}))
        .to_string()
        .replace("\"NESTED\"", &nested);
    fx.accepts(&raw(&h, &deep)).await;
    let deep_aud = with(claims("bot"), json!({"aud": "NESTED"}))
        .to_string()
        .replace("\"NESTED\"", &nested);
    fx.refuses(
        &raw(&h, &deep_aud),
        m("aud must be a string or an array of strings"),
    )
    .await;
    let deep_unclosed = format!("{{\"x\":{}", "[".repeat(3000));
    fx.refuses(&raw(&h, &deep_unclosed), m("payload is not a JSON object"))
        .await;
}

// 3. Header

#[tokio::test]
async fn rule3_kid_is_required_and_a_string() {
    let fx = fixture().await;
    let c = claims("bot");
    fx.refuses(
        &token(&fx.rsa, &json!({"alg": "RS256"}), &c),
        Reason::Malformed("kid is missing"),
    )
    .await;
    fx.refuses(
        &token(&fx.rsa, &json!({"alg": "RS256", "kid": 5}), &c),
        Reason::Malformed("kid is not a string"),
    )
    .await;
    fx.refuses(
        &token(&fx.rsa, &json!({"alg": "RS256", "kid": ""}), &c),
        Reason::Malformed("kid is empty"),
    )
    .await;
    fx.accepts(&token(
        &fx.rsa,
        &json!({"alg": "RS256", "kid": fx.rsa.key_id(), "typ": "JWT"}),
        &c,
    ))
    .await;
}

#[tokio::test]
async fn rule3_alg_none_hmac_unknown_and_disallowed_are_refused() {
    let fx = fixture().await;
    let c = claims("bot");
    let kid = fx.rsa.key_id();
    let unsigned = |alg: Value| {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string()),
            URL_SAFE_NO_PAD.encode("sig")
        )
    };
    fx.refuses(
        &unsigned(json!("none")),
        Reason::Algorithm("alg none is never accepted"),
    )
    .await;
    fx.refuses(
        &unsigned(json!("NONE")),
        Reason::Algorithm("alg none is never accepted"),
    )
    .await;
    fx.refuses(
        &unsigned(json!("HS256")),
        Reason::Algorithm("HMAC algorithms are never accepted"),
    )
    .await;
    fx.refuses(
        &unsigned(json!("RS1")),
        Reason::Algorithm("alg not supported"),
    )
    .await;
    fx.refuses(
        &unsigned(json!("rs256")),
        Reason::Algorithm("alg not supported"),
    )
    .await;
    fx.refuses(
        &unsigned(json!(256)),
        Reason::Malformed("alg is not a string"),
    )
    .await;
    let no_alg = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"kid": kid}).to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string()),
        URL_SAFE_NO_PAD.encode("sig")
    );
    fx.refuses(&no_alg, Reason::Malformed("alg is missing"))
        .await;

    // HS256 keyed with the public key (the classic confusion attack).
    let spki = jwt_profile::store::KeyStore::get(&fx.store, kid)
        .await
        .expect("get")
        .expect("key")
        .public_key;
    for secret in [spki.to_pem().into_bytes(), spki.spki_der().to_vec()] {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": kid}).to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
            signing_input.as_bytes(),
        );
        let forged = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        fx.refuses(
            &forged,
            Reason::Algorithm("HMAC algorithms are never accepted"),
        )
        .await;
    }

    // An allowed list without RS256 refuses RS256 even with a good signature.
    let strict = fixture_with(Validation::new([AUD]).algorithms([Algorithm::ES256])).await;
    strict
        .refuses(
            &token(&strict.rsa, &header(&strict.rsa), &c),
            Reason::Algorithm("alg not allowed"),
        )
        .await;
    let rs_only = fixture_with(Validation::new([AUD]).algorithms([Algorithm::RS256])).await;
    rs_only
        .accepts(&token(&rs_only.rsa, &header(&rs_only.rsa), &c))
        .await;
}

#[tokio::test]
async fn rule3_alg_must_fit_the_stored_key_type() {
    let fx = fixture().await;
    let c = claims("bot");
    // Every RSA algorithm works with an RSA key...
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let s = generated(&fx.keys, "bot", None)
            .await
            .with_algorithm(alg)
            .expect("alg");
        fx.accepts(&token(&s, &header(&s), &c)).await;
    }
    // ...and an EC or EdDSA alg named for an RSA key is refused.
    for alg in ["ES256", "ES384", "EdDSA"] {
        fx.refuses(
            &token(&fx.rsa, &json!({"alg": alg, "kid": fx.rsa.key_id()}), &c),
            Reason::AlgorithmMismatch,
        )
        .await;
    }

    let p256 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("p256");
    let p384 = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).expect("p384");
    let ed = Ed25519KeyPair::generate().expect("ed");
    let es256 = own(
        &fx.keys,
        "ec1",
        p256.public_key().as_der().expect("d").as_ref(),
        p256.to_pkcs8v1().expect("p").as_ref(),
    )
    .await;
    let es384 = own(
        &fx.keys,
        "ec2",
        p384.public_key().as_der().expect("d").as_ref(),
        p384.to_pkcs8v1().expect("p").as_ref(),
    )
    .await;
    let eddsa = own(
        &fx.keys,
        "ed",
        ed.public_key().as_der().expect("d").as_ref(),
        ed.to_pkcs8().expect("p").as_ref(),
    )
    .await;
    for (s, user, wrong) in [
        (&es256, "ec1", "ES384"),
        (&es384, "ec2", "ES256"),
        (&eddsa, "ed", "RS256"),
    ] {
        fx.accepts(&token(s, &header(s), &claims(user))).await;
        fx.refuses(
            &token(s, &json!({"alg": wrong, "kid": s.key_id()}), &claims(user)),
            Reason::AlgorithmMismatch,
        )
        .await;
    }
}

#[tokio::test]
async fn rule3_crit_is_refused_and_key_headers_are_ignored() {
    let fx = fixture().await;
    let c = claims("bot");
    let kid = fx.rsa.key_id();
    fx.refuses(
        &token(
            &fx.rsa,
            &json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}),
            &c,
        ),
        Reason::Crit,
    )
    .await;
    // jku/x5u point nowhere reachable: were they fetched, the test would
    // fail or hang; the key comes from the store and the token is accepted.
    fx.accepts(&token(&fx.rsa, &json!({"alg": "RS256", "kid": kid, "jku": "http://192.0.2.1/jwks", "x5u": "http://192.0.2.1/x"}), &c)).await;
    // An attacker's own key in `jwk`/`x5c` does not help: the signature is
    // checked with the stored key.
    let attacker =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let attacker_pem = pem("RSA PRIVATE KEY", &{
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&attacker).expect("der");
        use rsa::pkcs1::der::Decode;
        rsa::pkcs8::PrivateKeyInfo::from_der(pkcs8.as_ref())
            .expect("info")
            .private_key
            .to_vec()
    });
    let forger = AssertionSigner::from_pem("bot", kid, attacker_pem.as_bytes()).expect("forger");
    let jwk = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
    fx.refuses(
        &token(
            &forger,
            &json!({"alg": "RS256", "kid": kid, "jwk": jwk, "x5c": ["MIIB"]}),
            &c,
        ),
        Reason::Signature,
    )
    .await;
}

// 4. Key

#[tokio::test]
async fn rule4_key_must_exist_and_belong_to_the_issuer() {
    let fx = fixture().await;
    fx.refuses(
        &token(
            &fx.rsa,
            &json!({"alg": "RS256", "kid": "404"}),
            &claims("bot"),
        ),
        Reason::UnknownKey,
    )
    .await;
    // other's kid, claiming to be bot, signed with other's own key: the kid
    // is not bot's, so it is unknown — never a match.
    fx.refuses(
        &token(&fx.other, &header(&fx.other), &claims("bot")),
        Reason::UnknownKey,
    )
    .await;
    fx.accepts(&token(&fx.other, &header(&fx.other), &claims("other")))
        .await;
}

#[tokio::test]
async fn rule4_key_expiration_is_strict_with_no_leeway() {
    let fx = fixture().await;
    let expiring = generated(&fx.keys, "short", Some(NOW + 100)).await;
    let c = with(claims("short"), json!({"exp": NOW + 1000}));
    fx.accepts(&token(&expiring, &header(&expiring), &c)).await;
    fx.clock
        .set(chrono::DateTime::from_timestamp(NOW + 99, 0).expect("t"));
    fx.accepts(&token(
        &expiring,
        &header(&expiring),
        &with(c.clone(), json!({"iat": NOW + 99})),
    ))
    .await;
    // At the expiration instant, and one second after (within the claims'
    // leeway), the key no longer works.
    for t in [NOW + 100, NOW + 101] {
        fx.clock
            .set(chrono::DateTime::from_timestamp(t, 0).expect("t"));
        fx.refuses(
            &token(
                &expiring,
                &header(&expiring),
                &with(c.clone(), json!({"iat": t})),
            ),
            Reason::KeyExpired,
        )
        .await;
    }
}

// 5. Signature

#[tokio::test]
async fn rule5_signature_is_verified_with_the_stored_key() {
    let fx = fixture().await;
    let good = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&good).await;
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_claims =
        URL_SAFE_NO_PAD.encode(with(claims("bot"), json!({"exp": NOW + 301})).to_string());
    fx.refuses(
        &format!("{}.{}.{}", parts[0], tampered_claims, parts[2]),
        Reason::Signature,
    )
    .await;
    let other_sig = token(&fx.other, &header(&fx.rsa), &claims("bot"));
    fx.refuses(&other_sig, Reason::Signature).await;
    let short_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode([1u8; 16])
    );
    fx.refuses(&short_sig, Reason::Signature).await;
}

// 6. Claims

#[tokio::test]
async fn rule6_iss_and_sub_present_nonempty_strings_and_equal() {
    let fx = fixture().await;
    let m = |s| Reason::Malformed(s);
    fx.claims_refused(
        with(claims("bot"), json!({"iss": null})),
        m("iss is missing"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"sub": null})),
        m("sub is missing"),
    )
    .await;
    fx.claims_refused(with(claims("bot"), json!({"iss": ""})), m("iss is empty"))
        .await;
    fx.claims_refused(
        with(claims("bot"), json!({"sub": 7})),
        m("sub is not a string"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iss": ["bot"]})),
        m("iss is not a string"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"sub": "other"})),
        Reason::IssuerSubject,
    )
    .await;
    fx.claims_ok(claims("bot")).await;
}

#[tokio::test]
async fn rule6_audience_exact_match_string_or_array() {
    let fx = fixture().await;
    fx.claims_ok(with(
        claims("bot"),
        json!({"aud": [ "x", "https://second.example.com"]}),
    ))
    .await;
    fx.claims_ok(with(claims("bot"), json!({"aud": [AUD]})))
        .await;
    for wrong in [
        json!("https://api.example.co"),
        json!("HTTPS://API.EXAMPLE.COM"),
        json!(format!("{AUD}/")),
        json!([]),
        json!(["x"]),
    ] {
        fx.claims_refused(with(claims("bot"), json!({"aud": wrong})), Reason::Audience)
            .await;
    }
    let m = Reason::Malformed("aud must be a string or an array of strings");
    fx.claims_refused(with(claims("bot"), json!({"aud": [AUD, 1]})), m)
        .await;
    fx.claims_refused(with(claims("bot"), json!({"aud": {"a": AUD}})), m)
        .await;
    fx.claims_refused(with(claims("bot"), json!({"aud": 1})), m)
        .await;
    fx.claims_refused(
        with(claims("bot"), json!({"aud": null})),
        Reason::Malformed("aud is missing"),
    )
    .await;
}

#[tokio::test]
async fn rule6_dates_are_json_numbers_in_range() {
    let fx = fixture().await;
    let bad_exp = Reason::Malformed("exp is not a valid NumericDate");
    for v in [
        json!("1800000300"),
        json!(true),
        json!(-1),
        json!(253_402_300_800u64),
        json!(1e300),
        json!([NOW]),
        json!({}),
    ] {
        fx.claims_refused(with(claims("bot"), json!({"exp": v.clone()})), bad_exp)
            .await;
    }
    fx.claims_refused(
        with(claims("bot"), json!({"exp": null})),
        Reason::Malformed("exp is missing"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iat": null})),
        Reason::Malformed("iat is missing"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iat": "now"})),
        Reason::Malformed("iat is not a valid NumericDate"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"nbf": false})),
        Reason::Malformed("nbf is not a valid NumericDate"),
    )
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"jti": 5})),
        Reason::Malformed("jti is not a string"),
    )
    .await;
    // Fractions are numbers too.
    fx.claims_ok(with(
        claims("bot"),
        json!({"exp": (NOW + 300) as f64 + 0.5, "iat": NOW as f64 - 0.25}),
    ))
    .await;
    // 1e300 spelled as an integer-valued float in range is fine.
    fx.claims_ok(with(claims("bot"), json!({"exp": 1.8000003e9})))
        .await;
}

#[tokio::test]
async fn rule6_exp_with_leeway() {
    let fx = fixture().await;
    // Leeway 60 s: accepted while now < exp + 60.
    fx.claims_ok(with(
        claims("bot"),
        json!({"iat": NOW - 100, "exp": NOW - 59}),
    ))
    .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iat": NOW - 100, "exp": NOW - 60})),
        Reason::Expired,
    )
    .await;
    let tight = fixture_with(Validation::new([AUD]).leeway(Duration::ZERO)).await;
    tight
        .claims_refused(with(claims("bot"), json!({"exp": NOW})), Reason::Expired)
        .await;
    tight
        .claims_ok(with(claims("bot"), json!({"exp": NOW + 1})))
        .await;
}

#[tokio::test]
async fn rule6_iat_not_in_the_future_and_not_too_old() {
    let fx = fixture().await;
    fx.claims_ok(with(claims("bot"), json!({"iat": NOW + 60})))
        .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iat": NOW + 61})),
        Reason::IssuedInFuture,
    )
    .await;
    // max age 1 h + leeway.
    fx.claims_ok(with(claims("bot"), json!({"iat": NOW - 3660})))
        .await;
    fx.claims_refused(
        with(claims("bot"), json!({"iat": NOW - 3661})),
        Reason::TooOld,
    )
    .await;
    let young = fixture_with(Validation::new([AUD]).max_age(Duration::from_secs(60))).await;
    young
        .claims_refused(
            with(claims("bot"), json!({"iat": NOW - 121})),
            Reason::TooOld,
        )
        .await;
    young
        .claims_ok(with(claims("bot"), json!({"iat": NOW - 120})))
        .await;
}

#[tokio::test]
async fn rule6_nbf_optional_with_leeway() {
    let fx = fixture().await;
    fx.claims_ok(with(claims("bot"), json!({"nbf": NOW + 60})))
        .await;
    fx.claims_refused(
        with(claims("bot"), json!({"nbf": NOW + 61})),
        Reason::NotYetValid,
    )
    .await;
    fx.claims_ok(claims("bot")).await;
}

#[tokio::test]
async fn empty_audience_list_accepts_nothing() {
    let fx = fixture_with(Validation::new(Vec::<String>::new())).await;
    fx.claims_refused(claims("bot"), Reason::Audience).await;
}

// The cache of checked assertions (on by default).

#[tokio::test]
async fn a_repeated_assertion_still_has_its_times_checked() {
    let fx = fixture().await;
    let t = token(
        &fx.rsa,
        &header(&fx.rsa),
        &with(claims("bot"), json!({"exp": NOW + 120})),
    );
    fx.accepts(&t).await;
    fx.accepts(&t).await;
    fx.clock.advance_secs(120 + 59);
    fx.accepts(&t).await;
    fx.clock.advance_secs(1);
    fx.refuses(&t, Reason::Expired).await;
    // iat max age on a long-lived assertion, and nbf, on repeats.
    let fx = fixture().await;
    let long = token(
        &fx.rsa,
        &header(&fx.rsa),
        &with(claims("bot"), json!({"exp": NOW + 86_400, "nbf": NOW + 30})),
    );
    fx.accepts(&long).await;
    fx.clock.advance_secs(3660);
    fx.accepts(&long).await;
    fx.clock.advance_secs(1);
    fx.refuses(&long, Reason::TooOld).await;
    fx.clock
        .set(chrono::DateTime::from_timestamp(NOW - 31, 0).expect("t"));
    fx.refuses(&long, Reason::NotYetValid).await;
}

#[tokio::test]
async fn a_repeated_assertion_of_a_removed_key_is_refused_at_once() {
    let fx = fixture().await;
    let t = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&t).await;
    fx.accepts(&t).await;
    let admin = Principal::new("admin", "default", "-");
    fx.keys
        .remove(&admin, None, "bot", fx.rsa.key_id())
        .await
        .expect("remove");
    fx.refuses(&t, Reason::UnknownKey).await;
}

#[tokio::test]
async fn a_repeated_assertion_of_an_expired_key_is_refused() {
    let fx = fixture().await;
    let short = generated(&fx.keys, "short", Some(NOW + 10)).await;
    let t = token(&short, &header(&short), &claims("short"));
    fx.accepts(&t).await;
    fx.clock.advance_secs(10);
    fx.refuses(&t, Reason::KeyExpired).await;
}

#[tokio::test]
async fn dropping_a_key_from_the_cache_rechecks_repeated_assertions() {
    let fx = fixture().await;
    let t = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&t).await;
    // Invalidation (as a PostgreSQL change notice does) sends the next
    // repeat through the full check, which finds the key still there.
    fx.store.invalidate(fx.rsa.key_id()).await;
    fx.accepts(&t).await;
}

#[tokio::test]
async fn the_assertion_cache_can_be_turned_off() {
    let fx = fixture().await;
    let verifier = fx.verifier.clone().without_assertion_cache();
    let t = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    assert!(verifier.verify(&t).await.is_ok());
    assert!(verifier.verify(&t).await.is_ok());
    let admin = Principal::new("admin", "default", "-");
    fx.keys
        .remove(&admin, None, "bot", fx.rsa.key_id())
        .await
        .expect("remove");
    assert_eq!(
        verifier.verify(&t).await.err(),
        Some(VerifyError::Invalid(Reason::UnknownKey))
    );
    // A near-copy of an accepted token is its own token: checked in full.
    let fx = fixture().await;
    let t = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&t).await;
    let mut tampered = t.clone();
    tampered.pop();
    tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert!(fx.verifier.verify(&tampered).await.is_err());
}

/// A '.' inserted anywhere in a token, or replacing any character of its
/// signature, is refused as "three segments" (the signature segment is not
/// scanned for it: its decoding refuses it); never accepted, never another
/// reason. From an outside review.
#[tokio::test]
async fn a_dot_anywhere_more_is_three_segments() {
    let fx = fixture().await;
    let good = token(&fx.rsa, &header(&fx.rsa), &claims("bot"));
    fx.accepts(&good).await;
    let second = good.rfind('.').expect("dot");
    let m = Reason::Malformed("token must be three base64url segments");
    for i in second + 1..=good.len() {
        let inserted = format!("{}.{}", &good[..i], &good[i..]);
        fx.refuses(&inserted, m).await;
        if i < good.len() {
            let replaced = format!("{}.{}", &good[..i], &good[i + 1..]);
            fx.refuses(&replaced, m).await;
        }
    }
    // Whole-token positions too: any third dot, anywhere.
    for i in 0..=good.len() {
        let inserted = format!("{}.{}", &good[..i], &good[i..]);
        fx.refuses(&inserted, m).await;
    }
}
