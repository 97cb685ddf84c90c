//! What operators see: the verification span and its fields, the audit
//! events, the metrics of a scripted run (a real recorder), `/metrics` of
//! the running example server — and never a secret in any of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jwt_profile::store::{CachedStore, MemoryStore};
use jwt_profile::token::{IssuerSettings, MasterKey, TokenIssuer, TokenRequest};
use jwt_profile::{AssertionSigner, CreateKey, KeyService, Principal, Validation, Verifier};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

const AUD: &str = "https://api.example.com";
const ISSUER: &str = "https://auth.example.com";

/// One span or event as a subscriber saw it.
#[derive(Clone, Debug)]
struct Record {
    span: bool,
    name: String,
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Record>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// Spans are stored by id while open and recorded when they close, with
/// every field recorded on them.
struct Spans(Mutex<BTreeMap<u64, Record>>);

struct CaptureLayer(Capture, Arc<Spans>);

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let m = attrs.metadata();
        self.1.0.lock().expect("lock").insert(
            id.into_u64(),
            Record {
                span: true,
                name: m.name().to_string(),
                target: m.target().to_string(),
                level: *m.level(),
                fields,
            },
        );
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        if let Some(r) = self.1.0.lock().expect("lock").get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut r.fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let m = event.metadata();
        self.0.0.lock().expect("lock").push(Record {
            span: false,
            name: m.name().to_string(),
            target: m.target().to_string(),
            level: *m.level(),
            fields,
        });
    }
    fn on_close(&self, id: tracing::span::Id, _: Context<'_, S>) {
        if let Some(r) = self.1.0.lock().expect("lock").remove(&id.into_u64()) {
            self.0.0.lock().expect("lock").push(r);
        }
    }
}

/// What a scripted run produced and used.
struct Run {
    assertion: String,
    access_token: String,
    key_file_json: String,
    private_key_pem: String,
}

/// Create a key, log in, be refused, exchange for an access token, use it,
/// remove the key, be refused again — on a current-thread runtime, so a
/// thread-local subscriber or recorder sees all of it.
fn scripted_run() -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let backend = Arc::new(MemoryStore::new());
        let store = CachedStore::new(backend.clone());
        let verifier = Verifier::new(store.clone(), Validation::new([AUD]));
        let issuer = TokenIssuer::open(
            IssuerSettings::new(ISSUER),
            backend,
            MasterKey::generate().expect("master"),
            &verifier,
        )
        .await
        .expect("issuer");
        let verifier = verifier.with_access_tokens(issuer.access_tokens());
        let keys = KeyService::new(store);
        let me = Principal::new("bot", "acme", "-");
        let created = keys
            .create(&me, None, "bot", CreateKey::default())
            .await
            .expect("create");
        let file = created.key_file.expect("key file");
        let signer = AssertionSigner::from_key_file(&file).expect("signer");
        let assertion = signer.sign(AUD).expect("sign");
        verifier.verify(&assertion).await.expect("login");
        let mut forged = assertion.clone();
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        assert!(verifier.verify(&forged).await.is_err());
        let access_token = issuer
            .exchange(&TokenRequest::new(signer.sign(ISSUER).expect("sign")).with_scope("openid"))
            .await
            .expect("exchange")
            .access_token;
        verifier.verify(&access_token).await.expect("access token");
        keys.remove(&me, None, "bot", signer.key_id())
            .await
            .expect("remove");
        assert!(verifier.verify(&access_token).await.is_err(), "revoked");
        Run {
            assertion,
            access_token,
            key_file_json: String::from_utf8(file.to_json()).expect("utf8"),
            private_key_pem: file.key.clone(),
        }
    })
}

thread_local! {
    /// Where this thread's spans and events go, while a test captures.
    static SINK: std::cell::RefCell<Option<CaptureLayer>> = const { std::cell::RefCell::new(None) };
}

/// One global subscriber for the whole test binary, routing to the
/// capturing thread's sink. (A scoped `with_default` subscriber races with
/// other tests' threads over tracing's cached per-callsite interest: a
/// callsite first hit on a thread with no subscriber can be cached as
/// "never" while a capturing test runs.)
struct Route;

impl<S> tracing_subscriber::Layer<S> for Route
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        a: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: Context<'_, S>,
    ) {
        SINK.with(|s| {
            if let Some(l) = &*s.borrow() {
                l.on_new_span(a, id, cx);
            }
        });
    }
    fn on_record(&self, id: &tracing::span::Id, v: &tracing::span::Record<'_>, cx: Context<'_, S>) {
        SINK.with(|s| {
            if let Some(l) = &*s.borrow() {
                l.on_record(id, v, cx);
            }
        });
    }
    fn on_event(&self, e: &tracing::Event<'_>, cx: Context<'_, S>) {
        SINK.with(|s| {
            if let Some(l) = &*s.borrow() {
                l.on_event(e, cx);
            }
        });
    }
    fn on_close(&self, id: tracing::span::Id, cx: Context<'_, S>) {
        SINK.with(|s| {
            if let Some(l) = &*s.borrow() {
                tracing_subscriber::Layer::<S>::on_close(l, id, cx);
            }
        });
    }
}

/// Runs `f` on this thread and returns every span and event it produced.
fn capture<T>(f: impl FnOnce() -> T) -> (Vec<Record>, T) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Route));
    });
    let capture = Capture::default();
    let spans = Arc::new(Spans(Mutex::new(BTreeMap::new())));
    SINK.with(|s| *s.borrow_mut() = Some(CaptureLayer(capture.clone(), spans)));
    let out = f();
    SINK.with(|s| *s.borrow_mut() = None);
    let records = capture.0.lock().expect("lock").clone();
    (records, out)
}

fn captured_run() -> (Run, Vec<Record>) {
    let (records, run) = capture(scripted_run);
    (run, records)
}

#[test]
fn every_verification_has_a_span_with_its_outcome_and_refusals_log_at_debug() {
    let (_, records) = captured_run();
    let spans: Vec<&Record> = records
        .iter()
        .filter(|r| r.span && r.name == "jwt_profile.verify")
        .collect();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().all(|s| s.level == tracing::Level::DEBUG));
    let field = |s: &Record, f: &str| s.fields.get(f).cloned().unwrap_or_default();
    // In order: an accepted assertion, a refused one, the token endpoint's
    // check of the assertion it exchanges, an accepted access token, and
    // a refused one (its machine key removed).
    assert_eq!(field(spans[0], "enduser.id"), "bot");
    assert_eq!(field(spans[0], "jwt_profile.org_id"), "acme");
    assert_eq!(field(spans[0], "jwt_profile.kind"), "assertion");
    assert!(!field(spans[0], "jwt_profile.key_id").is_empty());
    assert!(!spans[0].fields.contains_key("error.type"));
    assert_eq!(field(spans[1], "error.type"), "TOKEN-bad-signature");
    // A refusal names whose token it was, as far as the token says.
    assert_eq!(field(spans[1], "enduser.id"), "bot");
    assert_eq!(
        field(spans[1], "jwt_profile.key_id"),
        field(spans[0], "jwt_profile.key_id")
    );
    assert_eq!(field(spans[4], "enduser.id"), "bot");
    assert_eq!(field(spans[1], "jwt_profile.kind"), "assertion");
    assert_eq!(field(spans[2], "jwt_profile.kind"), "assertion");
    assert_eq!(field(spans[2], "enduser.id"), "bot");
    assert_eq!(field(spans[3], "jwt_profile.kind"), "access_token");
    assert_eq!(field(spans[3], "enduser.id"), "bot");
    assert_eq!(field(spans[4], "jwt_profile.kind"), "access_token");
    assert_eq!(field(spans[4], "error.type"), "TOKEN-unknown-key");
    let refusals: Vec<&Record> = records
        .iter()
        .filter(|r| {
            !r.span
                && r.fields
                    .get("message")
                    .is_some_and(|m| m.contains("refused"))
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    assert!(refusals.iter().all(|r| r.level == tracing::Level::DEBUG));
}

#[test]
fn key_operations_and_token_issuance_leave_an_audit_trail() {
    let (_, records) = captured_run();
    let audit: Vec<&Record> = records
        .iter()
        .filter(|r| !r.span && r.target == "jwt_profile::audit" && r.level == tracing::Level::INFO)
        .collect();
    let action = |r: &Record| r.fields.get("action").cloned().unwrap_or_default();
    let actions: Vec<String> = audit.iter().map(|r| action(r)).collect();
    assert_eq!(actions, ["create", "issue_token", "remove"], "{audit:#?}");
    for r in [audit[0], audit[2]] {
        for f in [
            "caller.user_id",
            "caller.org_id",
            "user_id",
            "key_id",
            "org_id",
            "outcome",
        ] {
            assert!(
                r.fields.get(f).is_some_and(|v| !v.is_empty()),
                "{f} in {r:?}"
            );
        }
        assert_eq!(r.fields["outcome"], "ok");
        assert_eq!(r.fields["user_id"], "bot");
        assert_eq!(r.fields["org_id"], "acme");
    }
    assert_eq!(audit[1].fields["enduser.id"], "bot");
    assert_eq!(audit[1].fields["scope"], "openid");
}

#[test]
fn nothing_secret_is_ever_logged() {
    let (run, records) = captured_run();
    assert!(!records.is_empty());
    let signature = |t: &str| t.rsplit('.').next().unwrap_or_default().to_string();
    let pem_body: String = run
        .private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(3)
        .collect();
    let secrets = [
        run.assertion.clone(),
        signature(&run.assertion),
        run.access_token.clone(),
        signature(&run.access_token),
        run.key_file_json.clone(),
        pem_body,
        "PRIVATE KEY".to_string(),
    ];
    for r in &records {
        for (name, value) in &r.fields {
            for secret in &secrets {
                assert!(
                    !value.contains(secret.as_str()),
                    "{} {:?} field {name} holds a secret",
                    r.name,
                    r.target
                );
            }
        }
    }
}

#[cfg(feature = "metrics")]
#[test]
fn the_metrics_of_a_scripted_run_are_counted_with_bounded_labels() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, scripted_run);
    let text = handle.render();
    let samples = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    };
    let verifications = "jwt_profile_verifications_total";
    // Two accepted assertions: the login and the token endpoint's check.
    assert_eq!(
        value(
            verifications,
            &[("kind", "assertion"), ("outcome", "accepted")]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            verifications,
            &[
                ("kind", "assertion"),
                ("outcome", "refused"),
                ("error_type", "TOKEN-bad-signature")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            verifications,
            &[("kind", "access_token"), ("outcome", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        value(
            verifications,
            &[
                ("kind", "access_token"),
                ("outcome", "refused"),
                ("error_type", "TOKEN-unknown-key")
            ]
        ),
        1.0
    );
    assert_eq!(value("jwt_profile_tokens_issued_total", &[]), 1.0);
    let ops = "jwt_profile_key_operations_total";
    assert_eq!(value(ops, &[("action", "create"), ("outcome", "ok")]), 1.0);
    assert_eq!(value(ops, &[("action", "remove"), ("outcome", "ok")]), 1.0);
    let cache = "jwt_profile_key_cache_total";
    assert!(value(cache, &[("result", "hit")]) >= 1.0, "{text}");
    assert!(value(cache, &[("result", "miss")]) >= 1.0, "{text}");
    assert_eq!(value("jwt_profile_key_cache_capacity", &[]), 100_000.0);
    let durations = "jwt_profile_verification_duration_seconds_count";
    assert_eq!(value(durations, &[("kind", "assertion")]), 3.0, "{text}");
    assert_eq!(value(durations, &[("kind", "access_token")]), 2.0, "{text}");
    // Bounded labels only: no user, key id or token in any label value.
    for (_, labels, _) in &samples {
        for (k, v) in labels {
            assert!(
                [
                    "kind",
                    "outcome",
                    "error_type",
                    "result",
                    "action",
                    "quantile",
                    "le"
                ]
                .contains(&k.as_str()),
                "unexpected label {k}={v}"
            );
            assert!(!v.contains("bot"), "{k}={v}");
        }
    }
}

/// Prometheus text format: `name{k="v",…} value` per sample line; comments
/// and blank lines skipped. Panics on a line it cannot read.
pub fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label: {line}"));
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        out.push((name, labels, value));
    }
    out
}

/// A store that cannot be asked: the span says `STORE-unavailable`, the
/// metric says `unavailable`, and nothing is logged above DEBUG.
#[test]
fn an_unavailable_store_shows_as_unavailable() {
    let outage = crate::common::Outage::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (store, token) = rt.block_on(async {
        let store = CachedStore::new(outage.clone());
        let signer = crate::common::machine(&KeyService::new(store.clone()), "bot").await;
        (store, signer.sign(AUD).expect("sign"))
    });
    outage.set_down(true);
    let verifier = Verifier::new(store, Validation::new([AUD])).without_assertion_cache();
    let verify = || {
        rt.block_on(async {
            let result = verifier.verify(&token).await;
            assert!(
                matches!(result, Err(jwt_profile::VerifyError::Unavailable(_))),
                "{result:?}"
            );
        })
    };
    // Traces.
    let (records, ()) = capture(verify);
    let span = records
        .iter()
        .find(|r| r.span && r.name == "jwt_profile.verify")
        .expect("a span");
    assert_eq!(
        span.fields.get("error.type").map(String::as_str),
        Some("STORE-unavailable")
    );
    assert!(
        records
            .iter()
            .all(|r| r.span || r.level >= tracing::Level::DEBUG)
    );
    // Metrics.
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, verify);
        let text = handle.render();
        assert!(
            text.contains(r#"jwt_profile_verifications_total{kind="assertion",outcome="unavailable",error_type="STORE-unavailable"} 1"#),
            "{text}"
        );
    }
}

/// Through the layer, which first checks a token in place from the caches
/// and starts over with the full check when something is not cached: one
/// verification, one span, with its outcome — cold key, warm key, and a
/// refusal whose key is not cached.
#[test]
fn one_span_per_verification_through_the_layer_whichever_way_it_went() {
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};
    let (records, ()) = capture(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = CachedStore::new(MemoryStore::new());
            let keys = KeyService::new(store.clone());
            let me = Principal::new("bot", "acme", "-");
            let created = keys
                .create(&me, None, "bot", CreateKey::default())
                .await
                .expect("create");
            let bot =
                AssertionSigner::from_key_file(&created.key_file.expect("file")).expect("signer");
            let svc = jwt_profile::JwtProfileLayer::new(Verifier::new(
                store.clone(),
                Validation::new([AUD]),
            ))
            .layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(()))
            }));
            let call = |token: String| {
                let svc = svc.clone();
                async move {
                    let req = http::Request::builder()
                        .header("authorization", format!("Bearer {token}"))
                        .body(())
                        .expect("request");
                    svc.oneshot(req)
                        .await
                        .expect("infallible")
                        .status()
                        .as_u16()
                }
            };
            store.invalidate(bot.key_id()).await;
            assert_eq!(call(bot.sign(AUD).expect("sign")).await, 200, "cold");
            assert_eq!(call(bot.sign(AUD).expect("sign")).await, 200, "warm");
            keys.remove(&me, None, "bot", bot.key_id())
                .await
                .expect("remove");
            store.invalidate(bot.key_id()).await;
            assert_eq!(call(bot.sign(AUD).expect("sign")).await, 401, "removed");
        })
    });
    let spans: Vec<&Record> = records
        .iter()
        .filter(|r| r.span && r.name == "jwt_profile.verify")
        .collect();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let field = |s: &Record, f: &str| s.fields.get(f).cloned().unwrap_or_default();
    for s in &spans {
        assert_eq!(field(s, "jwt_profile.kind"), "assertion", "{s:#?}");
        assert_eq!(field(s, "enduser.id"), "bot", "{s:#?}");
    }
    assert_eq!(field(spans[0], "error.type"), "");
    assert_eq!(field(spans[1], "error.type"), "");
    assert_eq!(field(spans[2], "error.type"), "TOKEN-unknown-key");
}
