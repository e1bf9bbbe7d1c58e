//! Cache operations open `cache` spans with the strategy, the outcome and a hashed key —
//! never the user-supplied id itself.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::db::{CreateEntry, Db, GetEntry, entry};
use tower::ServiceExt;
use tower_caching::key::KeyBuilder;
use tower_caching::{Cache, CacheLayer};
use tower_layer::Layer;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a subscriber for this thread that writes into the returned buffer, up to
/// `level`, with span closes (and their fields) when `spans`.
fn capture(level: tracing::Level, spans: bool) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(level)
        .with_span_events(if spans { FmtSpan::CLOSE } else { FmtSpan::NONE })
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn spans_carry_strategy_outcome_and_a_hashed_key() {
    let (captured, _guard) = capture(tracing::Level::DEBUG, true);

    let secret_id = "cpf-123.456.789-00";
    let db = Db::default();
    db.insert(entry(secret_id, "Ana"));
    let entries: Cache<Option<support::db::Entry>> = Cache::in_memory();
    let reader = CacheLayer::cache_aside(entries.clone()).layer(db.clone());
    let get = || GetEntry {
        keys: KeyBuilder::new(),
        id: secret_id.into(),
    };
    reader.clone().oneshot(get()).await.unwrap();
    reader.oneshot(get()).await.unwrap();
    let written: Cache<support::db::Entry> = Cache::in_memory();
    CacheLayer::write_through(written)
        .layer(db)
        .oneshot(CreateEntry {
            keys: KeyBuilder::new(),
            entry: entry(secret_id, "Bia"),
        })
        .await
        .unwrap();

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(output.contains("strategy=\"cache_aside\""), "{output}");
    assert!(output.contains("outcome=\"miss\""), "{output}");
    assert!(output.contains("outcome=\"hit\""), "{output}");
    assert!(output.contains("strategy=\"write_through\""), "{output}");
    assert!(output.contains("key=#"), "{output}");
    assert!(
        !output.contains("123.456"),
        "a user-supplied id leaked:\n{output}"
    );
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "current_thread")]
async fn the_http_layer_opens_cache_spans_too() {
    use tower_caching::http::{CachedResponse, HttpCacheLayer};
    let (captured, _guard) = capture(tracing::Level::DEBUG, true);

    let handler = tower::service_fn(|_: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new("entry".to_string()))
    });
    let service = HttpCacheLayer::new(Cache::<CachedResponse>::in_memory()).layer(handler);
    let request = || {
        http::Request::get("/entries/cpf-123.456.789-00")
            .body(String::new())
            .unwrap()
    };
    service.clone().oneshot(request()).await.unwrap();
    service.oneshot(request()).await.unwrap();

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        output.contains("cache{strategy=\"cache_aside\""),
        "{output}"
    );
    assert!(output.contains("outcome=\"miss\""), "{output}");
    assert!(output.contains("outcome=\"hit\""), "{output}");
    assert!(!output.contains("123.456"), "a path leaked:\n{output}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_store_is_logged_once_per_period_not_once_per_request() {
    use support::faulty::Faulty;
    use tower_caching::store::MemoryStore;
    let (captured, _guard) = capture(tracing::Level::WARN, false);

    let store = Faulty::new(MemoryStore::new());
    store
        .faults
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let cache: Cache<String, _> = Cache::new(store);
    let service = CacheLayer::cache_aside(cache)
        .key(|id: &String| tower_caching::Key::new(format!("e:{id}")).ok())
        .layer(tower::service_fn(|id: String| async move {
            Ok::<_, std::convert::Infallible>(id)
        }));
    for i in 0..200 {
        // Every request still gets its answer, from the loader.
        assert_eq!(
            service.clone().oneshot(i.to_string()).await.unwrap(),
            i.to_string()
        );
    }
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines = output.matches("cache lookup failed").count();
    assert_eq!(lines, 1, "{output}");
    assert!(output.contains("suppressed=0"), "{output}");
}

/// A warm-up logs a progress line every `progress_every`, and one when it ends. (Here, where
/// every test captures its log: tracing caches which call sites are of interest, and a test
/// running beside one without a subscriber could see this one's lines dropped.)
#[tokio::test(flavor = "current_thread")]
async fn a_warm_up_logs_its_progress_and_its_end() {
    let (captured, _guard) = capture(tracing::Level::INFO, false);
    let cache: Cache<String> = Cache::in_memory();
    let keys = (0..20).map(|i| tower_caching::Key::new(format!("row:{i}")).unwrap());
    let report = cache
        .warm(keys, None, |key: tower_caching::Key| async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(key.as_str().to_owned())
        })
        .concurrency(2)
        .progress_every(std::time::Duration::from_millis(50))
        .await;
    assert_eq!(report.loaded, 20);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let progress = log
        .lines()
        .filter(|l| l.contains("warming the cache"))
        .count();
    assert!(progress >= 2, "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("cache warmed") && last.contains("done=20") && last.contains("total=20"),
        "{last}"
    );
}
