//! The commands clients send a redis-server, as `redis-cli monitor` sees them: for tests
//! that count round trips. Commands a script runs are left out (they cost no round trip).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::RedisServer;

/// A `redis-cli monitor` process on a server, killed on drop.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Monitor {
    /// Starts monitoring `server`, once the monitor is listening.
    pub fn start(server: &RedisServer) -> Self {
        let mut child = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port().to_string(),
                "monitor",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli monitor starts");
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|line| line == "OK") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "monitor never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Monitor {
            child,
            lines,
            url: server.url(),
        }
    }

    /// Waits until the monitor has seen `marker` (sent with `ECHO`); where it is.
    async fn mark(&self, marker: &str) -> usize {
        let mut raw = super::raw_connection(&self.url).await;
        let _: String = redis::cmd("ECHO")
            .arg(marker)
            .query_async(&mut raw)
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(at) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .position(|line| line.contains(marker))
            {
                return at;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "marker never seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `work`; its output, and the commands clients sent while it ran (lowercase names
    /// first, as the monitor prints them).
    pub async fn during<T>(&self, work: impl Future<Output = T>) -> (T, Vec<String>) {
        let id = fastrand::u64(..);
        let (begin, end) = (format!("mark-{id:x}-begin"), format!("mark-{id:x}-end"));
        let from = self.mark(&begin).await;
        let output = work.await;
        let to = self.mark(&end).await;
        let commands = self.lines.lock().unwrap()[from + 1..to]
            .iter()
            .filter(|line| !line.contains(" lua] ") && !line.contains("\"ECHO\""))
            .filter(|line| !line.contains("\"CLIENT\"") && !line.contains("\"client\""))
            .filter_map(|line| line.split_once("] ").map(|(_, command)| command.to_owned()))
            .collect();
        (output, commands)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
