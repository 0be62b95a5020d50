//! A job process whose log a test reads line by line while it runs.

use super::KillOnDrop;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running process of the job, killed when dropped.
pub struct Proc {
    /// The process.
    pub child: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
    log: String,
}

impl Proc {
    pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetflow"))
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn,fleetflow=info")
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child: KillOnDrop(child),
            lines,
            log: String::new(),
        }
    }

    /// Reads the log until a line containing `marker`, returning that line.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push_str(&l);
                    self.log.push('\n');
                    if l.contains(marker) {
                        return l;
                    }
                }
                Err(e) => panic!("no {marker:?} ({e}); log so far:\n{}", self.log),
            }
        }
    }

    pub fn api(&mut self) -> String {
        let line = self.wait_for("listening on http://", Duration::from_secs(60));
        line.split("http://").nth(1).unwrap().trim().to_string()
    }

    /// Waits for the process to exit, returning its status and the rest of its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push_str(&l);
                    self.log.push('\n');
                }
                return (status, self.log.clone());
            }
            while let Ok(l) = self.lines.try_recv() {
                self.log.push_str(&l);
                self.log.push('\n');
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Interrupts the job (SIGINT), asserts that it exits 0 within a minute and returns
    /// its whole log.
    pub fn interrupt(&mut self) -> String {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let (status, log) = self.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "exit {status:?}: {log}");
        log
    }
}
