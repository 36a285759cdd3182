//! Reaching the daemon, and starting one in the background when none answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use minerva_proto::addr::{self, DaemonAddr};
use tonic::transport::Channel;

use crate::{CliError, CliResult, Global};

/// Connects, starting a daemon first if none answers and autostart is allowed.
pub async fn connect(global: &Global, may_autostart: bool) -> CliResult<Channel> {
    match addr::connect(&global.addr).await {
        Ok(ch) => Ok(ch),
        Err(first) => {
            let DaemonAddr::Socket(socket) = &global.addr else {
                return Err(CliError(format!(
                    "no daemon answers at {}: {first}",
                    global.addr
                )));
            };
            if !(may_autostart && global.autostart) {
                return Err(CliError(format!(
                    "no daemon answers at {}; start one with `minervad --socket {}` (or let `minerva run` start it)",
                    global.addr,
                    socket.display()
                )));
            }
            start_daemon(socket)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match addr::connect(&global.addr).await {
                    Ok(ch) => return Ok(ch),
                    Err(e) if Instant::now() > deadline => {
                        return Err(CliError(format!(
                            "started minervad but it does not answer at {} after 30 s: {e}; see {}",
                            socket.display(),
                            log_path().display()
                        )))
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

fn log_path() -> PathBuf {
    addr::minerva_home().join("minervad.log")
}

/// `minervad` beside this executable, else on PATH.
fn daemon_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("minervad")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("minervad"))
}

fn start_daemon(socket: &Path) -> CliResult<()> {
    let log = log_path();
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let err = out.try_clone()?;
    let bin = daemon_binary();
    let mut cmd = Command::new(&bin);
    cmd.arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // A session of its own: the daemon outlives this command and ignores its Ctrl-C.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| CliError(format!("cannot start {}: {e}", bin.display())))?;
    eprintln!(
        "minerva: no daemon was running; started minervad (pid {}) on {} — log: {}",
        child.id(),
        socket.display(),
        log.display()
    );
    Ok(())
}
