//! RSS and CPU of a child process and its descendants, sampled from /proc while it runs, as
//! the daemon samples its own (peak and mean RSS, mean and peak CPU over the samples). The
//! llama.cpp peer runs each test in a child of its own process, so the whole tree counts.
//! Linux only: elsewhere nothing is sampled and the result says "not sampled".

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use minerva_proto::v1 as pb;

/// How often the peer is sampled.
pub(crate) const PEER_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What a sampler saw: one RSS total per sample, and one CPU figure (percent of one core) per
/// interval between samples.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples {
    pub(crate) rss: Vec<u64>,
    pub(crate) cpu: Vec<f64>,
}

impl Samples {
    /// Fills the RSS and CPU fields of `r` (the GPU fields are left as they are).
    pub(crate) fn fill(&self, r: &mut pb::BenchResources) {
        r.rss_peak_bytes = self.rss.iter().copied().max().unwrap_or(0);
        r.rss_mean_bytes = if self.rss.is_empty() {
            0
        } else {
            self.rss.iter().sum::<u64>() / self.rss.len() as u64
        };
        r.cpu_percent_mean = if self.cpu.is_empty() {
            0.0
        } else {
            self.cpu.iter().sum::<f64>() / self.cpu.len() as f64
        };
        r.cpu_percent_peak = self.cpu.iter().copied().fold(0.0, f64::max);
        r.samples = self.rss.len() as u32;
    }
}

/// Samples a process tree on a thread of its own until [`TreeSampler::finish`].
pub(crate) struct TreeSampler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Samples>,
}

impl TreeSampler {
    /// Starts sampling `pid` and its descendants every `every`; `None` where /proc is absent
    /// (not Linux).
    pub(crate) fn start(pid: u32, every: Duration) -> Option<Self> {
        if !cfg!(target_os = "linux") || !std::path::Path::new("/proc/self/status").exists() {
            return None;
        }
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut s = Samples::default();
            let tick = ticks_per_second();
            let mut last: Option<(Instant, u64)> = None;
            loop {
                let (rss, ticks) = tree_usage(pid);
                // Nothing left of the tree (it has exited and been reaped): no sample.
                if let Some(rss) = rss {
                    let now = Instant::now();
                    s.rss.push(rss);
                    if let (Some((t0, c0)), Some(tick)) = (last, tick) {
                        let wall = now.duration_since(t0).as_secs_f64();
                        if wall > 0.0 {
                            let cpu = ticks.saturating_sub(c0) as f64 / tick / wall * 100.0;
                            s.cpu.push(cpu);
                        }
                    }
                    last = Some((now, ticks));
                }
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
            s
        });
        Some(Self { stop, thread })
    }

    /// Stops sampling and returns what was seen.
    pub(crate) fn finish(self) -> Samples {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

fn ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

/// The fields of /proc/PID/stat after the command (which may hold spaces and parentheses).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// `pid` and every live descendant of it.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // After the command: state, then the parent's pid.
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The tree's total RSS (`None` when the root is gone) and CPU clock ticks so far: user and
/// system time of every live process, plus the root's children that have exited and been
/// waited for (the root's cutime and cstime).
fn tree_usage(root: u32) -> (Option<u64>, u64) {
    let (mut rss, mut ticks, mut any) = (0u64, 0u64, false);
    for p in tree(root) {
        if let Some(kb) = vm_rss_kb(p) {
            rss += kb * 1024;
            any = true;
        }
        if let Some(f) = stat_fields(p) {
            // utime, stime, cutime, cstime are fields 14-17 of stat; `f` starts at field 3.
            let n = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            ticks += n(14) + n(15);
            if p == root {
                ticks += n(16) + n(17);
            }
        }
    }
    (any.then_some(rss), ticks)
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_allocates_200_mb_is_seen_at_its_peak() {
        // The allocation is in a grandchild, as the peer's tests run in a child of the peer.
        let code = "import subprocess, sys; subprocess.run([sys.executable, '-c', \
                    'import time; b = bytes(1) * (200 << 20); time.sleep(1)'])";
        let mut child = std::process::Command::new("python3")
            .args(["-c", code])
            .spawn()
            .expect("python3");
        let sampler = TreeSampler::start(child.id(), PEER_SAMPLE_EVERY).unwrap();
        assert!(child.wait().unwrap().success());
        let s = sampler.finish();
        let mut r = pb::BenchResources::default();
        s.fill(&mut r);
        assert!(r.samples >= 5, "{s:?}");
        assert!(r.rss_peak_bytes >= 150 << 20, "{s:?}");
        assert!(r.rss_mean_bytes > 0 && r.rss_mean_bytes <= r.rss_peak_bytes);
        assert!(r.cpu_percent_peak > 0.0, "{s:?}");
    }
}
