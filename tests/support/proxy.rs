//! A fault-injecting TCP relay between a client and a real server on loopback: passes bytes
//! through, delays them (a delay line), holds them (a black hole: connections stay open,
//! nothing arrives until it ends), resets every connection, or refuses new ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the relay does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    BlackHole = 1,
    Reset = 2,
    Refuse = 3,
}

/// The relay; dropping it stops it.
pub struct Proxy {
    port: u16,
    fault: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    resets: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    /// Relays a free loopback port to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let latency_ms = Arc::new(AtomicU64::new(0));
        let (resets, _) = watch::channel(0u64);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (f, l, r) = (fault.clone(), latency_ms.clone(), resets.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        if f.load(Ordering::SeqCst) == Fault::Refuse as u8 {
                            drop(client);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(&target).await else { continue };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::spawn(pipe(cr, sw, f.clone(), l.clone(), r.subscribe()));
                        tokio::spawn(pipe(sr, cw, f.clone(), l.clone(), r.subscribe()));
                    }
                }
            }
        });
        Proxy {
            port,
            fault,
            latency_ms,
            resets,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        if fault == Fault::Reset {
            self.resets.send_modify(|n| *n += 1);
        }
    }

    pub fn latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Relays one direction. Latency is a delay line: each chunk leaves `latency` after it
/// arrived, so a pipeline of commands is delayed, not serialised.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    mut resets: watch::Receiver<u64>,
) {
    let (line, mut arrivals) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let mut writer_resets = resets.clone();
    let writer_fault = fault.clone();
    let writer = tokio::spawn(async move {
        loop {
            let (leaves, chunk) = tokio::select! {
                _ = writer_resets.changed() => return,
                chunk = arrivals.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => return,
                },
            };
            tokio::select! {
                _ = writer_resets.changed() => return,
                _ = tokio::time::sleep_until(leaves) => {}
            }
            // A black hole holds the bytes (TCP neither loses nor reorders them): they
            // arrive when it ends, unless the connection is reset first.
            while writer_fault.load(Ordering::SeqCst) == Fault::BlackHole as u8 {
                tokio::select! {
                    _ = writer_resets.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            // A reset while this task slept (its wake-up may have raced it) drops the
            // bytes, as it would on a real connection.
            if writer_fault.load(Ordering::SeqCst) == Fault::Reset as u8
                || writer_resets.has_changed().unwrap_or(true)
            {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = resets.changed() => break,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        if fault.load(Ordering::SeqCst) == Fault::Reset as u8 {
            break;
        }
        let leaves =
            tokio::time::Instant::now() + Duration::from_millis(latency_ms.load(Ordering::SeqCst));
        if line.send((leaves, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(line);
    // Bytes in the line still arrive (late), as they would over a slow network, unless
    // the connection is reset.
    let _ = writer.await;
}
