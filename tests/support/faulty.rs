//! A store wrapper that injects faults into chosen operations: delays, stalls and failures,
//! so that tests can put a race exactly where they want it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_caching::key::{Key, Pattern, Tag};
use tower_caching::store::{Store, StoreError, StoreValue};

/// Faults to inject; shared by the store's clones.
#[derive(Default, Debug)]
pub struct Faults {
    /// Delays of the next `set`s, one per call, in order.
    pub set_delays: Mutex<Vec<Duration>>,
    /// Delays of the next `delete`s (and `delete_many`s), one per call.
    pub delete_delays: Mutex<Vec<Duration>>,
    /// Every operation fails.
    pub failing: AtomicBool,
    /// Every get waits this long first (milliseconds).
    pub get_delay_ms: AtomicU32,
}

/// `inner`, with [`Faults`].
#[derive(Clone, Debug)]
pub struct Faulty<S> {
    pub inner: S,
    pub faults: Arc<Faults>,
}

impl<S> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            faults: Arc::default(),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.faults.failing.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable)
        } else {
            Ok(())
        }
    }
}

fn next(delays: &Mutex<Vec<Duration>>) -> Option<Duration> {
    let mut delays = delays.lock().unwrap();
    (!delays.is_empty()).then(|| delays.remove(0))
}

impl<S: Store> Store for Faulty<S> {
    type GetFuture =
        Pin<Box<dyn Future<Output = Result<Option<StoreValue>, StoreError>> + Send + 'static>>;

    fn get(&self, key: &Key) -> Self::GetFuture {
        let check = self.check();
        let delay = self.faults.get_delay_ms.load(Ordering::SeqCst);
        let get = self.inner.get(key);
        Box::pin(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay.into())).await;
            }
            check?;
            get.await
        })
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<StoreValue>>, StoreError> {
        self.check()?;
        self.inner.get_many(keys).await
    }

    async fn set(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        if let Some(delay) = next(&self.faults.set_delays) {
            tokio::time::sleep(delay).await;
        }
        self.check()?;
        self.inner.set(key, value, ttl).await
    }

    async fn set_many(
        &self,
        entries: Vec<(Key, StoreValue, Option<Duration>)>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.set_many(entries).await
    }

    async fn delete(&self, key: &Key) -> Result<bool, StoreError> {
        if let Some(delay) = next(&self.faults.delete_delays) {
            tokio::time::sleep(delay).await;
        }
        self.check()?;
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<u64, StoreError> {
        if let Some(delay) = next(&self.faults.delete_delays) {
            tokio::time::sleep(delay).await;
        }
        self.check()?;
        self.inner.delete_many(keys).await
    }

    async fn delete_pattern(&self, pattern: &Pattern) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.delete_pattern(pattern).await
    }

    async fn exists(&self, key: &Key) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.exists(key).await
    }

    async fn set_tagged(
        &self,
        key: &Key,
        value: StoreValue,
        ttl: Option<Duration>,
        tags: &[Tag],
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.set_tagged(key, value, ttl, tags).await
    }

    async fn invalidate_tag(&self, tag: &Tag) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.invalidate_tag(tag).await
    }

    fn keeps_decoded(&self) -> bool {
        self.inner.keeps_decoded()
    }
}

/// Two threads that spin until dropped: a loaded 2-core machine, for the length of a test.
pub struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    pub fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
