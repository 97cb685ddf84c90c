//! The cost of validation, side by side with its floor, in one run.
//!
//! `cargo bench --bench verify`
//!
//! For each algorithm the floor is aws-lc verifying the same signing input
//! with an already-parsed public key; `*_fresh` is our `Verifier` on a
//! fresh assertion (the repeat cache off) whose key is in the key cache.
//! `jsonwebtoken_reference` is `jsonwebtoken::decode` (the path peer crates
//! take) on the same RS256 token; `rs256_repeat` is a repeated assertion
//! served by the cache of checked assertions. Signing and key generation are
//! measured the same way. After criterion's output, one line per ratio,
//! each measured in interleaved rounds (101 rounds of ~2 ms batches, A then
//! B, then B then A): `ratio NAME MEDIAN (p25 P25, p75 P75)`.
//! `cargo bench --bench verify -- --ratios-only` skips criterion;
//! `-- --floor-only` prints the RS256 floor alone (`floor rs256 US`), which
//! `scripts/load.sh` measures on the server's core in every round;
//! `-- --loop fresh|floor|vk|access` runs one side alone for 10 s (or
//! `LOOP_ITERS` verifications), for a profiler (`perf record --call-graph
//! dwarf`).

use std::future::Future;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use criterion::{BatchSize, Criterion};
use jwt_profile::CreateKey;
use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::{AssertionSigner, KeyService, Principal, Validation, Verifier};

const AUD: &str = "https://api.example.com";

fn pem(label: &str, der: &[u8]) -> String {
    rsa::pkcs1::der::pem::encode_string(label, rsa::pkcs1::LineEnding::LF, der).expect("pem")
}

fn signing_input_and_signature(token: &str) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine;
    let dot = token.rfind('.').expect("dot");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&token[dot + 1..])
        .expect("sig");
    (token.as_bytes()[..dot].to_vec(), sig)
}

struct Case {
    name: &'static str,
    token: String,
    floor_key: ParsedPublicKey,
}

fn setup(rt: &tokio::runtime::Runtime) -> (Verifier, Verifier, Vec<Case>, AssertionSigner) {
    let store = CachedStore::new(MemoryStore::new());
    let keys = KeyService::new(store.clone());
    let me = Principal::new("bench", "org", "-");
    let now = chrono::Utc::now().timestamp() as u64;
    let mut cases = Vec::new();

    // RS256: a server-generated key, as machines get them.
    let created = rt
        .block_on(keys.create(&me, None, "bench", CreateKey::default()))
        .expect("create");
    let rs = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let spki = created.key.public_key.spki_der().to_vec();
    cases.push(Case {
        name: "rs256",
        token: rs.sign_at(AUD, now, now + 3600).expect("sign"),
        floor_key: ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &spki)
            .expect("parse"),
    });

    let own = |name: &'static str,
               public: Vec<u8>,
               private: Vec<u8>,
               alg: &'static dyn signature::VerificationAlgorithm| {
        let request = CreateKey {
            public_key: Some(pem("PUBLIC KEY", &public).into_bytes()),
            ..Default::default()
        };
        let created = rt
            .block_on(keys.create(&me, None, "bench", request))
            .expect("create");
        let signer = AssertionSigner::from_pem(
            "bench",
            &created.key.id,
            pem("PRIVATE KEY", &private).as_bytes(),
        )
        .expect("signer");
        Case {
            name,
            token: signer.sign_at(AUD, now, now + 3600).expect("sign"),
            floor_key: ParsedPublicKey::new(alg, &public).expect("parse"),
        }
    };
    let p256 = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("p256");
    cases.push(own(
        "es256",
        p256.public_key().as_der().expect("der").as_ref().to_vec(),
        p256.to_pkcs8v1().expect("pkcs8").as_ref().to_vec(),
        &signature::ECDSA_P256_SHA256_FIXED,
    ));
    let ed = Ed25519KeyPair::generate().expect("ed");
    cases.push(own(
        "eddsa",
        ed.public_key().as_der().expect("der").as_ref().to_vec(),
        ed.to_pkcs8().expect("pkcs8").as_ref().to_vec(),
        &signature::ED25519,
    ));

    let with_repeats = Verifier::new(store.clone(), Validation::new([AUD]));
    let fresh_only = with_repeats.clone().without_assertion_cache();
    // Warm the key cache (keys parsed once, on first use).
    for case in &cases {
        rt.block_on(fresh_only.verify(&case.token)).expect("valid");
    }
    (fresh_only, with_repeats, cases, rs)
}

fn bench_verify(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let (fresh_only, with_repeats, cases, rs_signer) = setup(rt);
    let mut group = c.benchmark_group("verify");
    for case in &cases {
        let (input, sig) = signing_input_and_signature(&case.token);
        group.bench_function(format!("{}_floor", case.name), |b| {
            b.iter(|| {
                case.floor_key
                    .verify_sig(std::hint::black_box(&input), &sig)
                    .expect("valid")
            })
        });
        group.bench_function(format!("{}_fresh", case.name), |b| {
            b.iter(|| run(rt, fresh_only.verify(std::hint::black_box(&case.token))).expect("valid"))
        });
    }
    let rs = &cases[0];
    rt.block_on(with_repeats.verify(&rs.token)).expect("valid");
    group.bench_function("rs256_repeat", |b| {
        b.iter(|| run(rt, with_repeats.verify(std::hint::black_box(&rs.token))).expect("valid"))
    });

    // The reference peer path: jsonwebtoken::decode with the aws-lc backend.
    let (decoding, validation) = jsonwebtoken_reference(rs);
    group.bench_function("jsonwebtoken_reference", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<PeerClaims>(
                std::hint::black_box(&rs.token),
                &decoding,
                &validation,
            )
            .expect("valid")
        })
    });
    group.finish();

    // Machine-side signing: our signer (key parsed once) against a raw
    // aws-lc RS256 signature over a signing input of the same size.
    let mut group = c.benchmark_group("sign");
    let now = chrono::Utc::now().timestamp() as u64;
    group.bench_function("rs256_signer", |b| {
        b.iter(|| rs_signer.sign_at(AUD, now, now + 3600).expect("sign"))
    });
    let raw = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let rng = SystemRandom::new();
    let (input, _) = signing_input_and_signature(&rs.token);
    let mut out = vec![0u8; raw.public_modulus_len()];
    group.bench_function("rs256_raw", |b| {
        b.iter(|| {
            raw.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                std::hint::black_box(&input),
                &mut out,
            )
            .expect("sign")
        })
    });
    group.finish();

    // Key generation: aws-lc (what the key service uses) against the rsa crate.
    let mut group = c.benchmark_group("keygen");
    group.sample_size(10);
    group.bench_function("rsa2048_aws_lc", |b| {
        b.iter_batched(
            || (),
            |()| jwt_profile::generate_rsa_key_pair().expect("key"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("rsa2048_rsa_crate", |b| {
        b.iter_batched(
            || (),
            |()| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Runs a verification. On a key-cache hit the future is ready at its first
/// poll, so it is polled directly: the figure is the verifier's cost, not an
/// executor's (the floor pays none either). Should it ever wait, the runtime
/// drives it.
fn run<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => rt.block_on(fut),
    }
}

/// Rounds per ratio: at least 30 (the house rule); 101 gives a median that
/// moves by about 1% between runs on these shared machines (40 moved by
/// about 3%), for about 0.4 s per ratio.
const ROUNDS: usize = 101;

/// One ratio from interleaved rounds: each round times a batch of `a`, then
/// a batch of `b` (the order alternating between rounds), back to back, so
/// both sides see the same machine; the result is the median of the
/// per-round ratios with its 25th and 75th percentiles. Batches are sized
/// to take about 2 ms each.
fn interleaved(rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    use std::time::{Duration, Instant};
    let batch_for = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(2) || n == 0 {
            f();
            n += 1;
        }
        n
    };
    // Warm both, and size each batch to about 2 ms.
    let (na, nb) = (batch_for(&mut a), batch_for(&mut b));
    let time = |f: &mut dyn FnMut(), n: u32| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_secs_f64() / f64::from(n)
    };
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|round| {
            let (ta, tb) = if round % 2 == 0 {
                let ta = time(&mut a, na);
                (ta, time(&mut b, nb))
            } else {
                let tb = time(&mut b, nb);
                (time(&mut a, na), tb)
            };
            ta / tb
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn print_ratio(name: &str, goal: &str, (median, p25, p75): (f64, f64, f64)) {
    println!("ratio {name} {median:.3} (p25 {p25:.3}, p75 {p75:.3})   goal {goal}");
}

/// The ratio lines, each from interleaved rounds (criterion's figures above
/// are each from their own time window, which a shared machine can shift by
/// 2x between minutes).
fn print_ratios(rt: &tokio::runtime::Runtime) {
    let (fresh_only, with_repeats, cases, rs_signer) = setup(rt);
    println!();
    for case in &cases {
        let (input, sig) = signing_input_and_signature(&case.token);
        let r = interleaved(
            ROUNDS,
            || {
                run(rt, fresh_only.verify(std::hint::black_box(&case.token))).expect("valid");
            },
            || {
                case.floor_key
                    .verify_sig(std::hint::black_box(&input), &sig)
                    .expect("valid")
            },
        );
        print_ratio(
            &format!("{}_fresh/{}_floor", case.name, case.name),
            "<= 1.05",
            r,
        );
    }
    let rs = &cases[0];
    let (decoding, validation) = jsonwebtoken_reference(rs);
    let r = interleaved(
        ROUNDS,
        || {
            run(rt, fresh_only.verify(std::hint::black_box(&rs.token))).expect("valid");
        },
        || {
            jsonwebtoken::decode::<PeerClaims>(
                std::hint::black_box(&rs.token),
                &decoding,
                &validation,
            )
            .expect("valid");
        },
    );
    print_ratio("rs256_fresh/jsonwebtoken_decode", "<= 0.90", r);
    rt.block_on(with_repeats.verify(&rs.token)).expect("valid");
    let (input, sig) = signing_input_and_signature(&rs.token);
    let r = interleaved(
        ROUNDS,
        || {
            run(rt, with_repeats.verify(std::hint::black_box(&rs.token))).expect("valid");
        },
        || {
            rs.floor_key
                .verify_sig(std::hint::black_box(&input), &sig)
                .expect("valid")
        },
    );
    print_ratio("rs256_repeat/rs256_floor", "<= 0.12", r);
    let start = std::time::Instant::now();
    let n = 100_000;
    for _ in 0..n {
        run(rt, with_repeats.verify(std::hint::black_box(&rs.token))).expect("valid");
    }
    println!(
        "time rs256_repeat {:.2} us per verification (goal < 2 us)",
        start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let now = chrono::Utc::now().timestamp() as u64;
    let raw = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let rng = SystemRandom::new();
    let mut out = vec![0u8; raw.public_modulus_len()];
    let r = interleaved(
        ROUNDS,
        || {
            rs_signer.sign_at(AUD, now, now + 3600).expect("sign");
        },
        || {
            raw.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                std::hint::black_box(&input),
                &mut out,
            )
            .expect("sign")
        },
    );
    print_ratio("rs256_signer/rs256_raw", "<= 1.10", r);
}

/// The claims as a peer service decodes them with jsonwebtoken: a typed
/// struct, as its documentation shows. (Decoding into a
/// `serde_json::Value`, as this bench once did, builds a map per call that
/// real users do not pay, and flattered our side of the ratio.)
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct PeerClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
}

/// The RS256 floor alone, for `scripts/load.sh` to measure on the server's
/// core between its runs: `floor rs256 MEDIAN_US` (median over 50 batches
/// of ~2 ms).
fn print_floor(rt: &tokio::runtime::Runtime) {
    use std::time::{Duration, Instant};
    let (_, _, cases, _) = setup(rt);
    let rs = &cases[0];
    let (input, sig) = signing_input_and_signature(&rs.token);
    let verify = || {
        rs.floor_key
            .verify_sig(std::hint::black_box(&input), &sig)
            .expect("valid")
    };
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(2) {
        verify();
        n += 1;
    }
    let mut times: Vec<f64> = (0..50)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                verify();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("floor rs256 {:.2}", times[times.len() / 2]);
}

/// `jsonwebtoken::decode`'s key and settings for the RS256 case: the same
/// checks (audience, issuer, required claims) with the aws-lc backend.
fn jsonwebtoken_reference(rs: &Case) -> (jsonwebtoken::DecodingKey, jsonwebtoken::Validation) {
    let spki = rs.floor_key.as_der().expect("der");
    let pkcs1 = {
        use rsa::pkcs1::der::Decode;
        let info =
            rsa::pkcs8::spki::SubjectPublicKeyInfoRef::from_der(spki.as_ref()).expect("spki");
        info.subject_public_key.raw_bytes().to_vec()
    };
    let decoding = jsonwebtoken::DecodingKey::from_rsa_der(&pkcs1);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[AUD]);
    validation.set_issuer(&["bench"]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<PeerClaims>(&rs.token, &decoding, &validation)
        .expect("jsonwebtoken accepts");
    (decoding, validation)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::args().any(|a| a == "--floor-only") {
        print_floor(&rt);
        return;
    }
    if let Some(which) = std::env::args().skip_while(|a| a != "--loop").nth(1) {
        profile_loop(&rt, &which);
        return;
    }
    let ratios_only = std::env::args().any(|a| a == "--ratios-only");
    if !ratios_only {
        let mut c = Criterion::default().configure_from_args();
        bench_verify(&mut c, &rt);
        c.final_summary();
    }
    print_ratios(&rt);
    print_token_figures(&rt);
    #[cfg(feature = "metrics")]
    print_metrics_cost(&rt);
}

/// `-- --loop fresh|floor|vk|access`: one side alone for 10 s (or
/// `LOOP_ITERS` verifications, rounded up to hundreds), for a profiler
/// (`perf record --call-graph dwarf target/release/deps/verify-* --loop
/// fresh`): a fresh RS256 assertion, the floor, the stored key's own check
/// (`VerifyingKey::verify`), an access token.
fn profile_loop(rt: &tokio::runtime::Runtime, which: &str) {
    let (fresh_only, _, cases, _) = setup(rt);
    let rs = &cases[0];
    let (input, sig) = signing_input_and_signature(&rs.token);
    let (_, _, access, access_token, _) = access_setup(rt);
    // The stored key behind a token of its own, as the key cache holds it.
    let (vk, vk_input, vk_sig) = {
        use jwt_profile::store::KeyLookup;
        let store = CachedStore::new(MemoryStore::new());
        let me = Principal::new("bench", "org", "-");
        let created = rt
            .block_on(KeyService::new(store.clone()).create(
                &me,
                None,
                "bench",
                CreateKey::default(),
            ))
            .expect("create");
        let signer =
            AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
        let (input, sig) = signing_input_and_signature(&signer.sign(AUD).expect("sign"));
        let vk = rt
            .block_on(store.lookup(signer.key_id()))
            .expect("lookup")
            .expect("key");
        (vk, input, sig)
    };
    // `LOOP_ITERS=N`: exactly N verifications instead of 10 s (for counts
    // per verification under valgrind).
    let iters: Option<u64> = std::env::var("LOOP_ITERS")
        .ok()
        .and_then(|n| n.parse().ok());
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while iters.map_or(start.elapsed() < std::time::Duration::from_secs(10), |i| {
        n < i
    }) {
        for _ in 0..100 {
            match which {
                "floor" => rs
                    .floor_key
                    .verify_sig(std::hint::black_box(&input), &sig)
                    .expect("valid"),
                "vk" => {
                    assert!(vk.verify(
                        jwt_profile::Algorithm::RS256,
                        std::hint::black_box(&vk_input),
                        &vk_sig
                    ));
                }
                "access" => {
                    run(rt, access.verify(std::hint::black_box(&access_token))).expect("valid");
                }
                _ => {
                    run(rt, fresh_only.verify(std::hint::black_box(&rs.token))).expect("valid");
                }
            }
        }
        n += 100;
    }
    println!(
        "loop {which} {:.2} us",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

/// With the `metrics` feature: the fresh RS256 path with a Prometheus
/// recorder installed (thread-locally, for side A only) against the same
/// path with none, interleaved.
#[cfg(feature = "metrics")]
fn print_metrics_cost(rt: &tokio::runtime::Runtime) {
    let (fresh_only, _, cases, _) = setup(rt);
    let rs = &cases[0];
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let r = interleaved(
        ROUNDS,
        || {
            metrics::with_local_recorder(&recorder, || {
                run(rt, fresh_only.verify(std::hint::black_box(&rs.token))).expect("valid");
            })
        },
        || {
            run(rt, fresh_only.verify(std::hint::black_box(&rs.token))).expect("valid");
        },
    );
    print_ratio("rs256_fresh_with_recorder/rs256_fresh", "<= 1.03", r);
    assert!(
        recorder
            .handle()
            .render()
            .contains("jwt_profile_verifications_total")
    );
}

/// Access tokens: verifying one (signing key and machine key cached, the
/// cache of checked tokens off) against the RS256 floor on the same token,
/// interleaved; and what issuing one costs (an RS256 assertion check plus an
/// RSA-2048 signature), per core.
/// An issuer, a verifier accepting its access tokens (cache of checked
/// tokens off), one access token, the assertion exchange request behind it,
/// and the floor key: the signing key parsed once from the published JWK.
fn access_setup(
    rt: &tokio::runtime::Runtime,
) -> (
    jwt_profile::token::TokenIssuer,
    jwt_profile::token::TokenRequest,
    Verifier,
    String,
    ParsedPublicKey,
) {
    use jwt_profile::token::{IssuerSettings, MasterKey, TokenIssuer, TokenRequest};
    use std::sync::Arc;
    const ISSUER: &str = "https://auth.example.com";
    let backend = Arc::new(MemoryStore::new());
    let store = CachedStore::new(backend.clone());
    let base = Verifier::new(store.clone(), Validation::new([AUD]));
    let issuer = rt
        .block_on(TokenIssuer::open(
            IssuerSettings::new(ISSUER),
            backend,
            MasterKey::generate().expect("master"),
            &base,
        ))
        .expect("issuer");
    let verifier = base
        .with_access_tokens(issuer.access_tokens())
        .without_assertion_cache();
    let me = Principal::new("bench", "org", "-");
    let created = rt
        .block_on(KeyService::new(store).create(&me, None, "bench", CreateKey::default()))
        .expect("create");
    let signer = AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
    let now = chrono::Utc::now().timestamp() as u64;
    let request = TokenRequest::new(signer.sign_at(ISSUER, now, now + 3600).expect("sign"));
    let token = rt
        .block_on(issuer.exchange(&request))
        .expect("token")
        .access_token;
    rt.block_on(verifier.verify(&token)).expect("valid");
    // The floor: aws-lc verifying the same signing input with the signing
    // key, parsed once (from the published JWK).
    let jwk = issuer.jwks().keys.remove(0);
    let floor_key = {
        use base64::Engine;
        use rsa::pkcs1::der::Encode;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (n, e) = (
            b64.decode(&jwk.n).expect("n"),
            b64.decode(&jwk.e).expect("e"),
        );
        let der = rsa::pkcs1::RsaPublicKey {
            modulus: rsa::pkcs1::UintRef::new(&n).expect("n"),
            public_exponent: rsa::pkcs1::UintRef::new(&e).expect("e"),
        }
        .to_der()
        .expect("der");
        ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der).expect("parse")
    };
    (issuer, request, verifier, token, floor_key)
}

fn print_token_figures(rt: &tokio::runtime::Runtime) {
    let (issuer, request, verifier, token, floor_key) = access_setup(rt);
    let (input, sig) = signing_input_and_signature(&token);
    let r = interleaved(
        ROUNDS,
        || {
            run(rt, verifier.verify(std::hint::black_box(&token))).expect("valid");
        },
        || {
            floor_key
                .verify_sig(std::hint::black_box(&input), &sig)
                .expect("valid")
        },
    );
    print_ratio("access_token_fresh/rs256_floor", "<= 1.10", r);
    let n = 200;
    let start = std::time::Instant::now();
    for _ in 0..n {
        rt.block_on(issuer.exchange(std::hint::black_box(&request)))
            .expect("token");
    }
    let per = start.elapsed().as_secs_f64() / f64::from(n);
    println!(
        "time token_issue {:.0} us per access token ({:.0} per second on one core)",
        per * 1e6,
        1.0 / per
    );
}
