//! RedisStore against real redis-server processes: connection failures, timeouts,
//! credentials, database selection.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tower_caching::key::Key;
use tower_caching::store::{RedisConfig, RedisStore, Store, StoreError, StoreValue};

fn dead_address() -> String {
    // Bound, then released: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn dead_address_is_a_typed_connect_error_within_the_timeout() {
    let config = RedisConfig::new(dead_address()).connect_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = RedisStore::connect(config).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
    assert_eq!(error.kind(), "connect");
    // Far above the timeout, for a loaded machine; without it the connect would hang.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn black_holed_address_is_a_connect_error_within_the_timeout() {
    // A listener that never accepts: the TCP handshake completes into the backlog, but the
    // server never answers the HELLO/PING, like a stalled proxy.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = RedisConfig::new(listener.local_addr().unwrap().to_string())
        .connect_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = RedisStore::connect(config).await.unwrap_err();
    assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn lazy_store_on_a_dead_address_fails_each_command_within_the_command_timeout() {
    let config = RedisConfig::new(dead_address())
        .connect_timeout(Duration::from_millis(100))
        .command_timeout(Duration::from_millis(50));
    let store = RedisStore::connect_lazy(config).unwrap();
    let key = Key::new("k").unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.get(&key).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Timeout { .. }
                    | StoreError::Backend { .. }
                    // The key's last read timed out: not sent again meanwhile.
                    | StoreError::Rejected { .. }
            ),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn paused_server_times_out_commands_and_recovers() {
    let server = RedisServer::spawn();
    let store = RedisStore::connect(
        RedisConfig::new(server.url()).command_timeout(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let key = Key::new("k").unwrap();
    store
        .set(&key, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();

    server.pause(true);
    let started = Instant::now();
    let error = store.get(&key).await.unwrap_err();
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    // A paused server never answers: only the timeout ends the wait.
    assert!(started.elapsed() < Duration::from_secs(1));
    server.pause(false);

    // The connection may have been torn down by the timeout: give it a moment to come back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.get(&key).await {
            Ok(value) => {
                assert_eq!(value.unwrap().bytes().as_ref(), b"v");
                break;
            }
            Err(error) if Instant::now() > deadline => panic!("no recovery: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let mut server = RedisServer::spawn();
    let store = RedisStore::connect(
        RedisConfig::new(server.url()).command_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let key = Key::new("k").unwrap();
    store
        .set(&key, StoreValue::from_static(b"before"), None)
        .await
        .unwrap();

    server.kill();
    assert!(store.get(&key).await.is_err());
    server.restart();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .set(&key, StoreValue::from_static(b"after"), None)
            .await
        {
            Ok(()) => break,
            Err(error) if Instant::now() > deadline => panic!("no reconnection: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().bytes().as_ref(),
        b"after"
    );
}

#[tokio::test]
async fn password_auth() {
    let server = RedisServer::spawn_with(&["--requirepass", "s3cret pass"]);
    let wrong = RedisStore::connect(RedisConfig::new(server.addr()).password("nope")).await;
    assert!(
        matches!(wrong, Err(StoreError::Connect { .. })),
        "{wrong:?}"
    );
    let none = RedisStore::connect(RedisConfig::new(server.addr())).await;
    // Without AUTH the connection opens, and the first command is refused.
    if let Ok(store) = none {
        assert!(store.get(&Key::new("k").unwrap()).await.is_err());
    }

    let config = RedisConfig::new(server.addr()).password("s3cret pass");
    assert!(!format!("{config:?}").contains("s3cret"));
    let store = RedisStore::connect(config).await.unwrap();
    let key = Key::new("k").unwrap();
    store
        .set(&key, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(store.exists(&key).await.unwrap());
}

#[tokio::test]
async fn acl_user_auth() {
    let server = RedisServer::spawn_with(&["--user", "cache", "on", ">cachepw", "~app:*", "+@all"]);
    let store = RedisStore::connect(
        RedisConfig::new(server.addr())
            .username("cache")
            .password("cachepw"),
    )
    .await
    .unwrap();
    let allowed = Key::new("app:1").unwrap();
    store
        .set(&allowed, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(store.exists(&allowed).await.unwrap());
    // The ACL limits this user to `app:*`.
    let denied = Key::new("other:1").unwrap();
    let error = store
        .set(&denied, StoreValue::from_static(b"v"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
}

#[tokio::test]
async fn selects_the_configured_database() {
    let url = support::shared_redis();
    let db5 = RedisStore::connect(RedisConfig::new(url).db(5))
        .await
        .unwrap();
    let db6 = RedisStore::connect(RedisConfig::new(url).db(6))
        .await
        .unwrap();
    let key = Key::new(support::unique_prefix("db")).unwrap();
    db5.set(&key, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(db5.exists(&key).await.unwrap());
    assert!(!db6.exists(&key).await.unwrap());
}

#[tokio::test]
async fn from_env_reads_the_original_variables() {
    let vars = [
        ("REDIS_ADDR", "10.1.2.3:6380"),
        ("REDIS_PASSWORD", "pw"),
        ("REDIS_DB", "4"),
        ("REDIS_POOL_SIZE", "100"),
        ("REDIS_MIN_IDLE_CONNS", "10"),
        ("REDIS_COMMAND_TIMEOUT", "25ms"),
    ];
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    };
    let config = RedisConfig::from_lookup(lookup).unwrap();
    assert_eq!(config.url(), "redis://10.1.2.3:6380");
    let debug = format!("{config:?}");
    assert!(debug.contains("db: Some(4)"), "{debug}");
    assert!(debug.contains("25ms"), "{debug}");
    assert!(!debug.contains("\"pw\""), "{debug}");

    let url_wins = RedisConfig::from_lookup(|name| match name {
        "REDIS_URL" => Some("redis://:pw@host:1/2".into()),
        "REDIS_ADDR" => Some("ignored:1".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(url_wins.url(), "redis://:pw@host:1/2");
    assert!(!format!("{url_wins:?}").contains("pw@"));

    for (name, bad) in [
        ("REDIS_DB", "zero"),
        ("REDIS_POOL_SIZE", "-1"),
        ("REDIS_COMMAND_TIMEOUT", "fast"),
    ] {
        let error = RedisConfig::from_lookup(|n| (n == name).then(|| bad.to_string())).unwrap_err();
        assert!(error.to_string().contains(name), "{error}");
    }
}

#[tokio::test]
async fn concurrent_callers_under_timeouts_get_their_own_values() {
    let server = RedisServer::spawn();
    // 4,000 commands at once on one thread: on a loaded machine the last replies take more
    // than the default timeout to be read. What is checked is whose reply each one gets.
    let store = RedisStore::connect(
        RedisConfig::new(server.url()).command_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let keys: Vec<Key> = (0..200)
        .map(|i| Key::new(format!("k{i}")).unwrap())
        .collect();
    for key in &keys {
        store
            .set(
                key,
                StoreValue::from(key.as_str().as_bytes().to_vec()),
                None,
            )
            .await
            .unwrap();
    }
    // Half of the callers give up almost at once, abandoning their commands in flight on
    // the shared connection; nobody may receive a reply meant for another.
    let mut tasks = Vec::new();
    for round in 0..20 {
        for (i, key) in keys.iter().enumerate() {
            let store = store.clone();
            let key = key.clone();
            let impatient = (i + round) % 2 == 0;
            tasks.push(tokio::spawn(async move {
                let get = store.get(&key);
                let value = if impatient {
                    match tokio::time::timeout(Duration::from_micros(50), get).await {
                        Ok(value) => value,
                        Err(_) => return 0,
                    }
                } else {
                    get.await
                };
                let value = value.expect("get").expect("value");
                assert_eq!(value.bytes().as_ref(), key.as_str().as_bytes());
                1
            }));
        }
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert!(answered >= 2000, "only {answered} answered");
}

/// `rediss://` against a redis-server with TLS, its certificate signed by a CA made here
/// with the `openssl` command.
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = std::env::temp_dir().join(support::unique_prefix("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl command is needed for this test (apt-get install openssl)");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let tls_port_arg = tls_port.to_string();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let _server = RedisServer::spawn_with(&[
        "--tls-port",
        &tls_port_arg,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca_pem = std::fs::read(dir.join("ca.crt")).unwrap();

    let store = RedisStore::connect(RedisConfig::new(url.clone()).tls_root_certificate(ca_pem))
        .await
        .unwrap();
    let key = Key::new("secure").unwrap();
    store
        .set(&key, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().bytes().as_ref(),
        b"v"
    );

    // Without the private CA, the server's certificate is not trusted.
    let untrusted = RedisStore::connect(RedisConfig::new(url)).await;
    assert!(
        matches!(untrusted, Err(StoreError::Connect { .. })),
        "{untrusted:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tag_bookkeeping_expires_with_its_last_entry() {
    use tower_caching::key::Tag;
    let server = RedisServer::spawn();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let mut raw = support::raw_connection(&server.url()).await;
    let tag = Tag::new("owner:ana").unwrap();
    let index = "tower-caching:tag:owner%3Aana";
    let file = async |name: &str, ttl_ms: Option<u64>| {
        let key = Key::new(name).unwrap();
        let ttl = ttl_ms.map(Duration::from_millis);
        let value = StoreValue::from_static(b"v");
        let tags = std::slice::from_ref(&tag);
        store.set_tagged(&key, value, ttl, tags).await.unwrap();
    };
    // The index's PTTL: -1 without expiry, -2 once it is gone.
    let mut index_ttl = async || -> i64 {
        redis::cmd("PTTL")
            .arg(index)
            .query_async(&mut raw)
            .await
            .unwrap()
    };

    file("short", Some(300)).await;
    file("long", Some(1500)).await;
    let pttl = index_ttl().await;
    assert!(
        (1500..=2600).contains(&pttl),
        "index TTL {pttl} ms: not the last entry's"
    );

    // Filing another key prunes members that expired.
    tokio::time::sleep(Duration::from_millis(400)).await;
    file("other", Some(100)).await;
    let mut members_of = support::raw_connection(&server.url()).await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(0)
        .arg(-1)
        .query_async(&mut members_of)
        .await
        .unwrap();
    assert_eq!(members, vec!["other".to_string(), "long".to_string()]);

    // Once every entry has expired (plus a second), the index is gone with them.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(index_ttl().await, -2, "the tag index outlived its entries");

    // An entry without a TTL keeps its index, until the tag is invalidated.
    file("long", None).await;
    assert_eq!(index_ttl().await, -1);
    assert_eq!(store.invalidate_tag(&tag).await.unwrap(), 1);
    assert_eq!(index_ttl().await, -2);
}

#[tokio::test]
async fn a_store_on_the_applications_own_connection_shares_it() {
    use tower_caching::Cache;
    let server = RedisServer::spawn();
    let client = redis::Client::open(server.url()).unwrap();
    let mut own = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let cache: Cache<String, RedisStore> = Cache::new(RedisStore::with_connection(
        own.clone(),
        Duration::from_millis(500),
    ));
    let key = Key::new("byo").unwrap();
    cache.set(&key, &"v".to_string(), None).await.unwrap();
    // The application's own commands see what the cache wrote, on the same connection.
    let exists: bool = redis::cmd("EXISTS")
        .arg("byo")
        .query_async(&mut own)
        .await
        .unwrap();
    assert!(exists);
    let from_client =
        RedisStore::from_client(client, Duration::from_secs(2), Duration::from_millis(500))
            .await
            .unwrap();
    let other: Cache<String, RedisStore> = Cache::new(from_client);
    assert_eq!(other.get(&key).await.unwrap().as_deref(), Some("v"));
    // A client for an address where nothing listens is a typed connect error, in time.
    let dead = redis::Client::open(format!("redis://{}", dead_address())).unwrap();
    let started = Instant::now();
    let error =
        RedisStore::from_client(dead, Duration::from_millis(300), Duration::from_millis(50))
            .await
            .unwrap_err();
    assert!(matches!(error, StoreError::Connect { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A store made from the application's `redis::Client` waits for Redis as long as its own
/// command timeout says, not redis-rs's default 500 ms response timeout.
#[tokio::test]
async fn a_store_from_a_client_keeps_its_own_command_timeout() {
    let server = RedisServer::spawn();
    let client = redis::Client::open(server.url()).unwrap();
    let store = RedisStore::from_client(client, Duration::from_secs(5), Duration::from_secs(10))
        .await
        .unwrap();
    let key = Key::new("slow").unwrap();
    store
        .set(&key, StoreValue::from_static(b"v"), None)
        .await
        .unwrap();
    // Every client's commands wait 1.2 s.
    let mut raw = support::raw_connection(&server.url()).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .query_async(&mut raw)
        .await
        .unwrap();
    let started = Instant::now();
    let value = store.get(&key).await.expect("cut short of its timeout");
    assert_eq!(value.unwrap().bytes().as_ref(), b"v");
    assert!(started.elapsed() >= Duration::from_millis(600));
}

/// A tag's invalidation reads, deletes and unfiles up to 1,000 keys in one script: one round
/// trip for a small tag, one per thousand keys for a big one (it took four, then three per
/// thousand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_invalidated_in_one_round_trip_per_thousand_keys() {
    use tower_caching::key::Tag;
    let server = RedisServer::spawn();
    let store =
        RedisStore::connect(RedisConfig::new(server.url()).command_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
    let monitor = support::monitor::Monitor::start(&server);
    let value = || StoreValue::new(bytes::Bytes::from_static(b"x"));
    for (size, round_trips) in [(0, 1), (10, 1), (1000, 1), (2500, 3)] {
        let tag = Tag::new(format!("size-{size}")).unwrap();
        let filed: Vec<Key> = (0..size)
            .map(|i| Key::new(format!("tagged:{size}:{i}")).unwrap())
            .collect();
        for key in &filed {
            store
                .set_tagged(key, value(), None, std::slice::from_ref(&tag))
                .await
                .unwrap();
        }
        let (deleted, commands) = monitor.during(store.invalidate_tag(&tag)).await;
        assert_eq!(deleted.unwrap(), size as u64);
        assert_eq!(
            commands.len(),
            round_trips,
            "a tag of {size} keys: {:?}",
            commands
                .iter()
                .map(|c| &c[..c.len().min(40)])
                .collect::<Vec<_>>()
        );
        for key in filed.iter().step_by(97) {
            assert!(!store.exists(key).await.unwrap(), "{key} survived its tag");
        }
        let mut raw = support::raw_connection(&server.url()).await;
        let left: u64 = redis::cmd("EXISTS")
            .arg(format!("tower-caching:tag:size-{size}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(left, 0, "the index of a tag of {size} keys was left");
    }
}

/// A pattern delete unlinks what each `SCAN` step found in the same script: one round trip
/// per step (it took one more: the first step's keys were unlinked with the second step, and
/// the last step's alone), so a keyspace one step covers costs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_delete_takes_one_round_trip_per_scan_step() {
    let server = RedisServer::spawn();
    let store =
        RedisStore::connect(RedisConfig::new(server.url()).command_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
    let mut raw = support::raw_connection(&server.url()).await;
    let monitor = support::monitor::Monitor::start(&server);
    let keys = tower_caching::key::KeyBuilder::new();
    let value = || StoreValue::new(bytes::Bytes::from_static(b"x"));
    // Untouched by the deletes: another kind's keys.
    for i in 0..50 {
        store
            .set(&keys.build("other", &i.to_string()), value(), None)
            .await
            .unwrap();
    }
    for (kind, size) in [("none", 0), ("few", 10), ("many", 6000)] {
        let mut pipe = redis::pipe();
        for i in 0..size {
            pipe.cmd("SET")
                .arg(keys.build(kind, &i.to_string()).as_str())
                .arg("x")
                .ignore();
        }
        if size > 0 {
            let _: () = pipe.query_async(&mut raw).await.unwrap();
        }
        // How many SCAN steps a plain client needs over this keyspace, with the same count.
        let mut steps = 0;
        let mut cursor = 0u64;
        loop {
            let (next, _): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(keys.pattern(kind).as_str())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut raw)
                .await
                .unwrap();
            steps += 1;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let (deleted, commands) = monitor
            .during(store.delete_pattern(&keys.pattern(kind)))
            .await;
        assert_eq!(deleted.unwrap(), size, "{kind}");
        assert!(
            !commands.is_empty() && commands.len() <= steps,
            "{kind}: {} round trips for {steps} SCAN steps",
            commands.len()
        );
        if steps == 1 {
            assert_eq!(commands.len(), 1, "{kind}");
        }
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(keys.pattern(kind).as_str())
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(left.is_empty(), "{kind}: {} keys left", left.len());
    }
    let others: Vec<String> = redis::cmd("KEYS")
        .arg(keys.pattern("other").as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        others.len(),
        50,
        "a pattern delete reached another kind's keys"
    );
}
