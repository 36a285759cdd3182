//! What the benchmark ran on, and how much memory and CPU the daemon used while it ran.

use std::sync::OnceLock;
use std::time::Duration;

use minerva_proto::v1::{BenchGpu, BenchMachine, BenchResources};

/// NVML, loaded once per process from the driver's libnvidia-ml; the reason when it can't be.
fn nvml() -> Result<&'static nvml_wrapper::Nvml, &'static str> {
    static NVML: OnceLock<Result<nvml_wrapper::Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| nvml_wrapper::Nvml::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| e.as_str())
}

/// The GPU as results report it: "present: ..." with the devices NVML sees, or "absent: ..."
/// with the reason; GPU figures are never reported as zeros.
pub(crate) fn gpu_status() -> String {
    let nvml = match nvml() {
        Ok(n) => n,
        Err(e) => return format!("absent: no NVIDIA driver library (NVML: {e})"),
    };
    let count = nvml.device_count().unwrap_or(0);
    if count == 0 {
        return "absent: NVML found no NVIDIA device".into();
    }
    let names: Vec<String> = (0..count)
        .map(|i| {
            nvml.device_by_index(i)
                .and_then(|d| d.name())
                .unwrap_or_else(|e| format!("device {i} ({e})"))
        })
        .collect();
    format!(
        "present: {} (driver {}); sampled through NVML",
        names.join(", "),
        nvml.sys_driver_version().unwrap_or_else(|e| e.to_string())
    )
}

/// Running figures for one GPU.
#[derive(Default)]
struct GpuTrack {
    name: String,
    memory_total: u64,
    used: Vec<u64>,
    util: Vec<f64>,
    watts: Vec<f64>,
}

impl GpuTrack {
    fn sample(&mut self, d: &nvml_wrapper::Device<'_>) {
        if let Ok(m) = d.memory_info() {
            self.memory_total = m.total;
            self.used.push(m.used);
        }
        if let Ok(u) = d.utilization_rates() {
            self.util.push(f64::from(u.gpu));
        }
        if let Ok(mw) = d.power_usage() {
            self.watts.push(f64::from(mw) / 1000.0);
        }
    }

    fn finish(self, index: u32) -> BenchGpu {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let peak = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        BenchGpu {
            index,
            name: self.name,
            memory_total_bytes: self.memory_total,
            memory_used_peak_bytes: self.used.iter().copied().max().unwrap_or(0),
            memory_used_mean_bytes: self.used.iter().sum::<u64>() / self.used.len().max(1) as u64,
            utilization_percent_mean: mean(&self.util),
            utilization_percent_peak: peak(&self.util),
            power_watts_mean: (!self.watts.is_empty()).then(|| mean(&self.watts)),
            power_watts_peak: (!self.watts.is_empty()).then(|| peak(&self.watts)),
            samples: self.used.len().max(self.util.len()) as u32,
        }
    }
}

pub(crate) fn machine(backend: &str, backend_build: &str) -> BenchMachine {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_all();
    sys.refresh_memory();
    let cpu_model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let mut features: Vec<&str> = Vec::new();
    for (on, name) in [
        (cfg!(target_feature = "avx"), "avx"),
        (cfg!(target_feature = "avx2"), "avx2"),
        (cfg!(target_feature = "fma"), "fma"),
        (cfg!(target_feature = "f16c"), "f16c"),
        (cfg!(target_feature = "avx512f"), "avx512f"),
        (cfg!(target_feature = "neon"), "neon"),
    ] {
        if on {
            features.push(name);
        }
    }
    let rustflags = env!("MINERVA_RUSTFLAGS");
    let native = rustflags.contains("target-cpu=native");
    BenchMachine {
        cpu_model,
        cpu_cores: sysinfo::System::physical_core_count().unwrap_or(0) as u32,
        cpu_threads: sys.cpus().len() as u32,
        memory_bytes: sys.total_memory(),
        os: format!(
            "{} {}",
            sysinfo::System::long_os_version().unwrap_or_default(),
            sysinfo::System::kernel_version().unwrap_or_default()
        ),
        gpu: gpu_status(),
        system: format!("minerva {} ({backend})", env!("CARGO_PKG_VERSION")),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("MINERVA_GIT_COMMIT").into(),
        build: format!(
            "{backend_build}; {}; GGML_NATIVE={}; rustflags [{}]; rust cpu features: {}",
            env!("MINERVA_LLAMA_CMAKE"),
            if native { "ON" } else { "OFF" },
            rustflags.trim(),
            features.join(" ")
        ),
    }
}

/// Samples this process's RSS and CPU every 250 ms until stopped.
pub(crate) struct ResourceSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<BenchResources>,
}

impl ResourceSampler {
    pub(crate) fn start() -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let pid = sysinfo::Pid::from_u32(std::process::id());
            let mut sys = sysinfo::System::new();
            let kind = sysinfo::ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu();
            let mut rss: Vec<u64> = Vec::new();
            let mut cpu: Vec<f64> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut first = true;
            let devices: Vec<nvml_wrapper::Device<'static>> = nvml()
                .map(|n| {
                    (0..n.device_count().unwrap_or(0))
                        .filter_map(|i| n.device_by_index(i).ok())
                        .collect()
                })
                .unwrap_or_default();
            let mut gpus: Vec<GpuTrack> = devices
                .iter()
                .map(|d| GpuTrack {
                    name: d.name().unwrap_or_default(),
                    ..Default::default()
                })
                .collect();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    true,
                    kind,
                );
                if let Some(p) = sys.process(pid) {
                    rss.push(p.memory());
                    // The first CPU reading has no interval behind it.
                    if !first {
                        cpu.push(f64::from(p.cpu_usage()));
                    }
                    first = false;
                }
                for (track, d) in gpus.iter_mut().zip(&devices) {
                    track.sample(d);
                }
            }
            let mean = |v: &[f64]| {
                if v.is_empty() {
                    0.0
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            BenchResources {
                rss_peak_bytes: rss.iter().copied().max().unwrap_or(0),
                rss_mean_bytes: if rss.is_empty() {
                    0
                } else {
                    rss.iter().sum::<u64>() / rss.len() as u64
                },
                cpu_percent_mean: mean(&cpu),
                cpu_percent_peak: cpu.iter().copied().fold(0.0, f64::max),
                samples: rss.len() as u32,
                gpu: gpu_status(),
                gpus: gpus
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| t.finish(i as u32))
                    .collect(),
            }
        });
        Self { stop, task }
    }

    pub(crate) async fn finish(self) -> BenchResources {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
